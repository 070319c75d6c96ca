"""`trtllm_nemotron::mamba_state_update`: one fused Mamba-2 decode step (conv shift + conv + SiLU + SSM update).

reference.py is the specification; kernel.py the Triton-lang kernel; launch.py the launch rule shared by
the torch launcher and the TensorRT AOT plugin; op.py the torch custom op; trt.py the TensorRT plugin.
Nothing here imports triton or tensorrt.
"""
