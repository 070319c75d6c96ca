"""Register every TensorRT plugin of this package (`import plugins.trt`), for engine builders and any
engine deserializer. Needs tensorrt; without it the import raises PluginError saying what to install.

Plugins: trtllm_nemotron::mamba_state_update, trtllm_nemotron::latent_moe_routing,
trtllm_nemotron::moe_expert_permutation, trtllm_nemotron::latent_moe_experts,
trtllm_nemotron::latent_moe_experts_nvfp4 (all with AOT implementations from Triton-compiled PTX).
"""

from __future__ import annotations

from plugins._trt_common import trt_import

trt_import()  # clear error first if tensorrt is missing

from plugins.latent_moe_experts import trt as _experts  # noqa: E402,F401
from plugins.latent_moe_routing import trt as _routing  # noqa: E402,F401
from plugins.mamba_state_update import trt as _mamba  # noqa: E402,F401

PLUGINS = (_mamba.PLUGIN, _routing.ROUTING, _routing.PERMUTATION, _experts.EXPERTS, _experts.EXPERTS_NVFP4)
