# trtllm-nemotron: the pipeline as make targets. Targets call the CLI; logic lives in the library.
.PHONY: help venv install test test-gpu test-trt test-all lint bench bench-plugins bench-quant bench-serve bench-prefix gpu-check \
        build-engine train-tiny serve client package clean

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
CLI     := $(VENV)/bin/trtllm-nemotron
ENGINE  ?= build/engine
REPO    ?= build/model_repository
MODEL   ?=
TARGET  ?= b200
RECIPE  ?= nvfp4-super
MTP     ?= 3
PYTEST_ARGS ?=
BUILD_ARGS  ?=
OPENAI_PORT ?= 9000

help:              ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The venv is (re)installed when pyproject.toml or the constraints change. On a GPU host whose system
# python already has a CUDA torch, the venv sees it (--system-site-packages) and torch is not pinned.
$(VENV)/.installed: pyproject.toml constraints.txt
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then \
	    echo "GPU torch found in $(PYTHON): venv inherits it"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then \
	  grep -v '^torch' constraints.txt > $(VENV)/constraints.txt; else cp constraints.txt $(VENV)/constraints.txt; fi
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test]'
	@touch $@

venv install: $(VENV)/.installed  ## create .venv and install the project with its test extras

test: $(VENV)/.installed  ## CPU test suite (no GPU needed; includes the `slow` tritonserver tests)
	$(PY) -m pytest -q -m "not gpu and not trt" $(PYTEST_ARGS)

test-gpu: $(VENV)/.installed  ## Triton-lang kernels on a CUDA GPU vs their references
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

test-trt: $(VENV)/.installed  ## TensorRT plugins and engines (needs tensorrt and a GPU)
	$(PY) -m pytest -q -m trt $(PYTEST_ARGS)

test-all: $(VENV)/.installed  ## every tier: gpu, trt, then the CPU suite (on a GPU host with TensorRT)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)
	$(PY) -m pytest -q -m trt $(PYTEST_ARGS)
	$(PY) -m pytest -q -m "not gpu and not trt" $(PYTEST_ARGS)

LINT_PATHS := trtllm_nemotron plugins builder triton_repo clients tests benchmarks
lint: $(VENV)/.installed  ## ruff check + ruff format --check + mypy (settings in pyproject.toml)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy

build-engine: $(VENV)/.installed  ## HF checkpoint -> engine dir with onnx/ (default: embedded model, b200, nvfp4-super, MTP 3)
	$(CLI) build $(if $(MODEL),--model $(MODEL)) --target $(TARGET) --recipe $(RECIPE) --mtp $(MTP) --onnx $(BUILD_ARGS) --out $(ENGINE)

package: $(VENV)/.installed  ## engine dir -> Triton model repository
	@[ -f $(ENGINE)/build.json ] || $(MAKE) build-engine
	$(CLI) package $(ENGINE) --out $(REPO)

serve: package  ## start a real tritonserver on the model repository (loopback) + the OpenAI API on :9000
	$(CLI) serve $(REPO) --openai-port $(OPENAI_PORT)

client: $(VENV)/.installed  ## one streaming gRPC request against a running server
	$(CLI) generate --url localhost:8001 --protocol grpc --stream "def fibonacci(n):"

train-tiny: $(VENV)/.installed  ## retrain the embedded default model (CPU, fixed seed)
	$(CLI) train-tiny

bench: bench-runtime  ## runtime decode speed vs HF transformers and llama.cpp

bench-runtime: $(VENV)/.installed
	$(PY) -m benchmarks.bench_runtime

bench-plugins: $(VENV)/.installed  ## plugin kernels vs torch references (GPU when present)
	$(PY) -m benchmarks.bench_plugins

gpu-check: $(VENV)/.installed  ## GPU host: gpu/trt tests, plugin bench, TensorRT engine, validate -> one report (< 8 min)
	$(PY) -m benchmarks.gpu_check --out build/gpu-check/report.md

bench-quant: $(VENV)/.installed  ## quantization throughput and peak RSS on synthetic checkpoints
	$(PY) -m benchmarks.bench_quant

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[bench]'
	@touch $@

bench-serve: $(VENV)/.installed-bench  ## every serving path (CLI, scheduler, Triton gRPC/HTTP) vs the engine's own speed; AIPerf via the OpenAI front
	$(PY) -m benchmarks.bench_serve
	$(PY) -m benchmarks.bench_aiperf

bench-prefix: $(VENV)/.installed  ## prefix cache on vs off through Triton on an agent-like trace
	$(PY) -m benchmarks.bench_prefix

clean:
	rm -rf build .pytest_cache
