"""Register every TensorRT plugin of this package (`import plugins.trt`), for engine builders and any
engine deserializer. Needs tensorrt; without it the import raises PluginError saying what to install.

Plugins: trtllm_nemotron::mamba_state_update, trtllm_nemotron::latent_moe_routing,
trtllm_nemotron::moe_expert_permutation (all with AOT implementations from Triton-compiled PTX).
"""

from __future__ import annotations

from plugins._trt_common import trt_import

trt_import()  # clear error first if tensorrt is missing

from plugins.latent_moe_routing import trt as _routing  # noqa: E402,F401
from plugins.mamba_state_update import trt as _mamba  # noqa: E402,F401

PLUGINS = (_mamba.PLUGIN, _routing.ROUTING, _routing.PERMUTATION)
