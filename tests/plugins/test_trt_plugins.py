"""TensorRT plugin registration (needs tensorrt; skipped elsewhere). The AOT launch logic itself is
tested without TensorRT in test_aot.py."""

from __future__ import annotations

import pytest


@pytest.mark.trt
def test_plugins_register_with_tensorrt():
    import tensorrt as trt

    import plugins.trt as ptrt

    registry = trt.get_plugin_registry()
    for full in ptrt.PLUGINS:
        ns, name = full.split("::")
        assert registry.get_creator(name, "1", ns) is not None, full
