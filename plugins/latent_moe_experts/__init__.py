"""`trtllm_nemotron::latent_moe_experts[_nvfp4]`: Nemotron-H's routed experts (non-gated ReLU², latent space).

reference.py is the specification; kernel.py the Triton-lang kernel; launch.py the launch rule shared by
the torch launcher and the TensorRT AOT plugins; op.py the torch custom ops; trt.py the TensorRT plugins.
Nothing here imports triton or tensorrt.
"""

from __future__ import annotations

from typing import Any


def latent_moe_experts(*args: Any, **kwargs: Any) -> Any:
    """The routed experts; see `plugins.latent_moe_experts.op.latent_moe_experts` for the contract."""
    from plugins.latent_moe_experts.op import latent_moe_experts as _impl

    return _impl(*args, **kwargs)
