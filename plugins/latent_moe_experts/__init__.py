"""`trtllm_nemotron::latent_moe_experts[_nvfp4]`: Nemotron-H's routed experts (non-gated ReLU², latent space).

reference.py is the specification; kernel.py the Triton-lang kernel; launch.py the launch rule shared by
the torch launcher and the TensorRT AOT plugins; op.py the torch custom ops; trt.py the TensorRT plugins.
Nothing here imports triton or tensorrt.
"""
