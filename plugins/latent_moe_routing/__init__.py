"""`trtllm_nemotron::latent_moe_routing`: DeepSeek-V3 "noaux_tc" router (sigmoid, biased group-limited top-k).

reference.py is the specification; kernel.py the Triton-lang kernels; launch.py the launch rules shared
by the torch launcher and the TensorRT AOT plugins; op.py the torch custom op; trt.py the TensorRT plugins.
Nothing here imports triton or tensorrt.
"""
