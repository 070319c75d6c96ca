"""HF checkpoint -> engine directory for B200 / H200 / H100 / CPU.

Modules (imports stay light: torch, triton and tensorrt_llm are imported inside the functions that need them):
    targets        the build targets (SM, memory, native precisions, TensorRT-LLM defaults)
    plan           the memory planner (`plan_memory`, `plan_for_build`)
    trtllm_config  the TensorRT-LLM LLM-API YAML and its known-key check (`data/trtllm_llm_args.json`)
    pipeline       the staged, atomic, resumable build (`build_engine`)
    manifest       build.json: schema, hashes, `verify_engine_dir`, `read_manifest`
    cache          reuse of quantized checkpoints and compiled plugin kernels across builds
    defaults       the default model / target / recipe / MTP / output dir
"""
