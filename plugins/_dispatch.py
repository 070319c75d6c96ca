"""Backend choice for every plugin op: Triton-lang kernel, Triton interpreter, or torch reference.

One environment variable decides for the whole process, read at every call (so tests can flip it):

    TRTLLM_NEMOTRON_KERNELS   unset / ""   kernel on CUDA tensors, reference on CPU tensors (default)
                              "reference"  torch references everywhere
                              "interpret"  Triton kernels under Triton's interpreter (CPU, any machine)

Why the interpreter needs care: `@triton.jit` decides *at decoration time* whether it builds a
`JITFunction` (compiled) or an `InterpretedFunction`, by reading `TRITON_INTERPRET`. A kernel module that
was already imported for compilation (AOT, CUDA) therefore cannot be interpreted later. So in interpret
mode we load a *second instance* of the op's `kernel.py` under a private module name with
`TRITON_INTERPRET=1` set while its decorators run (and while it launches), and leave the normal instance
(used by `plugins.aot` and CUDA) alone. Both come from the same source file.

This module imports neither triton nor torch at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

from trtllm_nemotron.errors import PluginError

ENV_VAR = "TRTLLM_NEMOTRON_KERNELS"
MODES = ("default", "reference", "interpret")

log = logging.getLogger(__name__)
_lock = threading.Lock()
_logged: set[tuple[str, str]] = set()


def mode() -> str:
    """The process-wide mode from `TRTLLM_NEMOTRON_KERNELS` ("default", "reference" or "interpret")."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    value = raw or "default"
    if value not in MODES:
        raise PluginError(
            f"{ENV_VAR}={raw!r} is not a known kernel mode; expected one of "
            f"'reference', 'interpret' or unset (default: kernel on CUDA, reference on CPU)"
        )
    return value


def backend_for(op: str, device_type: str) -> str:
    """Which implementation runs `op` on tensors of `device_type`: "kernel", "interpret" or "reference"."""
    m = mode()
    if m == "reference":
        choice, why = "reference", f"{ENV_VAR}=reference"
    elif m == "interpret":
        choice, why = "interpret", f"{ENV_VAR}=interpret"
    elif device_type == "cuda":
        choice, why = "kernel", "CUDA tensors"
    else:
        choice, why = "reference", f"{device_type} tensors (set {ENV_VAR}=interpret to run the kernel)"
    key = (op, choice)
    if key not in _logged:  # log each choice once: choice + reason
        _logged.add(key)
        log.info("plugin %s: %s backend (%s)", op, choice, why)
    return choice


def _require_triton() -> None:
    if importlib.util.find_spec("triton") is None:
        raise PluginError(
            "the Triton-lang kernels need the `triton` package, which is not installed; "
            "install it with `pip install -e '.[kernels]'` or set TRTLLM_NEMOTRON_KERNELS=reference"
        )


@contextlib.contextmanager
def interpreting() -> Iterator[None]:
    """Set TRITON_INTERPRET=1 for the duration (decoration and launch), restoring the old value."""
    with _lock:
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old


def kernel_module(name: str, *, interpret: bool) -> ModuleType:
    """The kernel module `name` (e.g. "plugins.mamba_state_update.kernel"), compiled or interpreted."""
    _require_triton()
    if not interpret:
        if os.environ.get("TRITON_INTERPRET", "") not in ("", "0") and name not in sys.modules:
            log.warning("TRITON_INTERPRET is set: %s will be interpreted even on CUDA", name)
        return importlib.import_module(name)
    alias = name + "__interpreted"
    mod = sys.modules.get(alias)
    if mod is not None:
        return mod
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise PluginError(f"kernel module {name} not found; the plugins package is incomplete")
    ispec = importlib.util.spec_from_file_location(alias, spec.origin)
    assert ispec is not None and ispec.loader is not None
    mod = importlib.util.module_from_spec(ispec)
    with interpreting():
        import triton  # noqa: F401  (import triton itself outside the alias so its state is shared)

        sys.modules[alias] = mod
        try:
            ispec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(alias, None)
            raise
    return mod
