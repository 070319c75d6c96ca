"""The serving protocol: TensorRT-LLM's `llmapi` tensor names, shared by our `nemotron` model and `tensorrt_llm`.

Source: TensorRT-LLM `triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt` and `1/helpers.py`
(spec `deployment.md` §7.2). Both models are Python-backend, `max_batch_size: 0` (dims are the full shape),
decoupled (N responses per request, then the final flag). Semantics we match exactly, so one client serves both:
- `text_input` STRING [-1]: the prompt (first element). Every other input is optional.
- `streaming` BOOL [1]: one response per step; otherwise a single response when finished.
- `text_output` is the *cumulative* generated text (TensorRT-LLM sends `CompletionOutput.text`, not the delta);
  a client takes the delta as `new[len(previous):]`. The prompt is not echoed: `SamplingParams.exclude_input_from_output`
  defaults to true in TensorRT-LLM (`tensorrt_llm/sampling_params.py`) and the model sends `CompletionOutput.text`;
  with `sampling_param_exclude_input_from_output` false the prompt is prepended.
- `finish_reason` / `stop_reason` come only when `return_finish_reason` / `return_stop_reason` are true.
- timing (`*_time_ns`) and speculative-decoding outputs (`acceptance_rate`, `total_accepted_draft_tokens`,
  `total_draft_tokens`) come only when `sampling_param_return_perf_metrics` is true.
- `stop` BOOL [1] with a request id cancels the earlier request carrying that id.
Our `nemotron` model adds what the llmapi model lacks, all optional so the protocol stays a superset:
- input `sampling_param_ignore_eos` (BOOL, fixed-length benchmarks) and output `num_output_tokens` (INT32,
  cumulative generated-token count; clients fall back to counting responses when it is absent);
- the inflight-batcher names (`INFLIGHT_ALIASES`: `stream`, `max_tokens`, `temperature`, `top_p`, `top_k`,
  `seed`, `stop_words`, `exclude_input_in_output`, `beam_width`, the penalties), the ones Triton's OpenAI
  frontend and GenAI-Perf's `kserve`/`tensorrtllm` mode send (spec `openai_serving.md` §2a, §3b), each an
  alias of its llmapi input; `return_num_input_tokens` / `return_num_output_tokens` and output
  `num_input_tokens` (INT32, the prompt's token count). A request naming both an alias and its llmapi input
  with different values is refused. Options the runtime does not implement (penalties, beam search) are
  accepted only at their neutral value and refused clearly otherwise.

This module is pure numpy: `model.py` feeds it the request's tensors, the tests feed it arrays directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from triton_repo.model_config import TensorSpec

_S, _B, _I32, _U64, _F32, _I64 = (
    "TYPE_STRING",
    "TYPE_BOOL",
    "TYPE_INT32",
    "TYPE_UINT64",
    "TYPE_FP32",
    "TYPE_INT64",
)

# TensorRT-LLM's llmapi model, in its order.
LLMAPI_INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_input", _S, (-1,)),
    TensorSpec("image_url", _S, (-1,), optional=True),
    TensorSpec("streaming", _B, (1,), optional=True),
    TensorSpec("sampling_param_best_of", _I32, (1,), optional=True),
    TensorSpec("sampling_param_temperature", _F32, (1,), optional=True),
    TensorSpec("sampling_param_top_k", _I32, (1,), optional=True),
    TensorSpec("sampling_param_top_p", _F32, (1,), optional=True),
    TensorSpec("sampling_param_frequency_penalty", _F32, (1,), optional=True),
    TensorSpec("sampling_param_presence_penalty", _F32, (1,), optional=True),
    TensorSpec("sampling_param_max_tokens", _I32, (1,), optional=True),
    TensorSpec("sampling_param_stop", _S, (-1,), optional=True),
    TensorSpec("sampling_param_seed", _U64, (1,), optional=True),
    TensorSpec("sampling_param_exclude_input_from_output", _B, (1,), optional=True),
    TensorSpec("sampling_param_return_perf_metrics", _B, (1,), optional=True),
    TensorSpec("return_finish_reason", _B, (1,), optional=True),
    TensorSpec("return_stop_reason", _B, (1,), optional=True),
    TensorSpec("return_cumulative_logprob", _B, (1,), optional=True),
    TensorSpec("stop", _B, (1,), optional=True),
    TensorSpec("lora_id", _U64, (1,), optional=True),
    TensorSpec("lora_name", _S, (1,), optional=True),
    TensorSpec("lora_path", _S, (1,), optional=True),
    TensorSpec("lora_ckpt_source", _S, (1,), optional=True),
)
LLMAPI_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("text_output", _S, (-1,)),
    TensorSpec("finish_reason", _S, (-1,)),
    TensorSpec("stop_reason", _S, (-1,)),
    TensorSpec("cumulative_logprob", _F32, (-1,)),
    TensorSpec("kv_cache_reused_block", _I32, (-1,)),
    TensorSpec("kv_cache_missed_block", _I32, (-1,)),
    TensorSpec("kv_cache_alloc_new_blocks", _I32, (-1,)),
    TensorSpec("kv_cache_alloc_total_blocks", _I32, (-1,)),
    TensorSpec("kv_cache_hit_rate", _F32, (-1,)),
    TensorSpec("arrival_time_ns", _I64, (1,)),
    TensorSpec("first_scheduled_time_ns", _I64, (1,)),
    TensorSpec("first_token_time_ns", _I64, (1,)),
    TensorSpec("last_token_time_ns", _I64, (1,)),
    TensorSpec("acceptance_rate", _F32, (1,)),
    TensorSpec("total_accepted_draft_tokens", _I32, (1,)),
    TensorSpec("total_draft_tokens", _I32, (1,)),
)

# What our runtime implements: the llmapi names it can honour, plus the two extensions above.
_NEMOTRON_INPUT_NAMES = (
    "text_input",
    "streaming",
    "sampling_param_temperature",
    "sampling_param_top_k",
    "sampling_param_top_p",
    "sampling_param_frequency_penalty",
    "sampling_param_presence_penalty",
    "sampling_param_max_tokens",
    "sampling_param_stop",
    "sampling_param_seed",
    "sampling_param_exclude_input_from_output",
    "sampling_param_return_perf_metrics",
    "return_finish_reason",
    "return_stop_reason",
    "stop",
)
# The inflight-batcher (`ensemble` / `tensorrt_llm_bls`) name -> (dtype, dims, the llmapi input it stands for).
# Dims as the ensemble declares them without its batch dim; our model is `max_batch_size: 0`, so a client sends
# shape [1] (what GenAI-Perf's perf_analyzer sends for a non-batching model).
INFLIGHT_ALIASES: dict[str, tuple[str, tuple[int, ...], str]] = {
    "stream": (_B, (1,), "streaming"),
    "max_tokens": (_I32, (1,), "sampling_param_max_tokens"),
    "temperature": (_F32, (1,), "sampling_param_temperature"),
    "top_p": (_F32, (1,), "sampling_param_top_p"),
    "top_k": (_I32, (1,), "sampling_param_top_k"),
    "seed": (_U64, (1,), "sampling_param_seed"),
    "stop_words": (_S, (-1,), "sampling_param_stop"),
    "exclude_input_in_output": (_B, (1,), "sampling_param_exclude_input_from_output"),
    "frequency_penalty": (_F32, (1,), "sampling_param_frequency_penalty"),
    "presence_penalty": (_F32, (1,), "sampling_param_presence_penalty"),
    "repetition_penalty": (_F32, (1,), "repetition_penalty"),  # no llmapi twin
    "beam_width": (_I32, (1,), "beam_width"),  # no llmapi twin
}
# Options the runtime does not implement: accepted at their neutral value only.
NEUTRAL_ONLY: dict[str, float] = {
    "sampling_param_frequency_penalty": 0.0,
    "sampling_param_presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "beam_width": 1,
}
_NEMOTRON_OUTPUT_NAMES = (
    "text_output",
    "finish_reason",
    "stop_reason",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
    "kv_cache_reused_block",
    "kv_cache_missed_block",
    "kv_cache_alloc_new_blocks",
    "kv_cache_alloc_total_blocks",
    "kv_cache_hit_rate",
)
# prefix-cache counters of the runtime's stats -> the llmapi KV-cache outputs (sent with the perf metrics, as the
# llmapi model does from `request_perf_metrics.kv_cache_metrics`)
KV_CACHE_OUTPUTS: dict[str, tuple[str, type]] = {
    "kv_cache_reused_block": ("kv_cache_reused_block", np.int32),
    "kv_cache_missed_block": ("kv_cache_missed_block", np.int32),
    "kv_cache_alloc_new_blocks": ("kv_cache_alloc_new_blocks", np.int32),
    "kv_cache_alloc_total_blocks": ("kv_cache_alloc_total_blocks", np.int32),
    "kv_cache_hit_rate": ("kv_cache_hit_rate", np.float32),
}
NEMOTRON_INPUTS: tuple[TensorSpec, ...] = tuple(
    t for t in LLMAPI_INPUTS if t.name in _NEMOTRON_INPUT_NAMES
) + (
    TensorSpec("sampling_param_ignore_eos", _B, (1,), optional=True),
    *(TensorSpec(name, dtype, dims, optional=True) for name, (dtype, dims, _) in INFLIGHT_ALIASES.items()),
    TensorSpec("return_num_input_tokens", _B, (1,), optional=True),
    TensorSpec("return_num_output_tokens", _B, (1,), optional=True),
)
NEMOTRON_OUTPUTS: tuple[TensorSpec, ...] = tuple(
    t for t in LLMAPI_OUTPUTS if t.name in _NEMOTRON_OUTPUT_NAMES
) + (
    TensorSpec("num_output_tokens", _I32, (1,)),
    TensorSpec("num_input_tokens", _I32, (1,)),
)

# sampling_param_<x> -> SamplingParams field (ours), with the Python type the value is cast to
SAMPLING_FIELDS: dict[str, tuple[str, type]] = {
    "sampling_param_max_tokens": ("max_tokens", int),
    "sampling_param_temperature": ("temperature", float),
    "sampling_param_top_k": ("top_k", int),
    "sampling_param_top_p": ("top_p", float),
    "sampling_param_seed": ("seed", int),
    "sampling_param_ignore_eos": ("ignore_eos", bool),
}


class RequestError(ValueError):
    """A request the model answers with an error response (bad shape, missing prompt)."""


@dataclass(frozen=True)
class ParsedRequest:
    prompt: str
    sampling: dict  # SamplingParams keyword arguments; absent keys keep the runtime's defaults
    streaming: bool = False
    exclude_input: bool = True  # TensorRT-LLM's default: text_output is the generated text only
    return_finish_reason: bool = False
    return_stop_reason: bool = False
    return_perf_metrics: bool = False
    stop_request: bool = False  # `stop: true`: cancel the request with this request id
    return_num_input_tokens: bool = False


def _decode(v: object, name: str = "text_input") -> str:
    if not isinstance(v, (bytes, np.bytes_)):
        return str(v)
    try:
        return v.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            f"input {name!r} is not valid UTF-8 ({e.reason} at byte {e.start}); send UTF-8 text"
        ) from e


def _scalar(name: str, arr: np.ndarray) -> object:
    if arr.size != 1:
        raise RequestError(f"input {name!r}: expected one value (shape [1]), got shape {list(arr.shape)}")
    value = arr.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def _with_aliases(get: Callable[[str], np.ndarray | None]) -> Callable[[str], np.ndarray | None]:
    """`get` that also answers an llmapi name from its inflight-batcher alias; refuses two different values."""
    alias_of = {target: alias for alias, (_, _, target) in INFLIGHT_ALIASES.items()}

    def get2(name: str) -> np.ndarray | None:
        value = get(name)
        alias = alias_of.get(name)
        other = get(alias) if alias is not None else None
        if other is None:
            return value
        if value is not None and not np.array_equal(value.reshape(-1), other.reshape(-1)):
            raise RequestError(
                f"inputs {alias!r} and {name!r} are the same option with different values; send one of them"
            )
        return other

    return get2


def parse_request(get: Callable[[str], np.ndarray | None]) -> ParsedRequest:
    """Read one request through `get(name) -> array | None` (the tensor, or None when absent).

    The inflight-batcher aliases (`INFLIGHT_ALIASES`) are read as their llmapi inputs.
    """
    get = _with_aliases(get)
    stop_arr = get("stop")
    stop_request = bool(_scalar("stop", stop_arr)) if stop_arr is not None else False
    text = get("text_input")
    if text is None:
        if stop_request:
            return ParsedRequest(prompt="", sampling={}, stop_request=True)
        raise RequestError("input 'text_input' is missing: send the prompt as a STRING tensor of shape [1]")
    if text.ndim != 1 or text.size != 1:
        raise RequestError(
            f"input 'text_input': expected a 1-D STRING tensor with one prompt, got shape "
            f"{list(text.shape)}; send one request per prompt"
        )
    prompt = _decode(text[0])

    sampling: dict = {}
    for name, (fld, cast) in SAMPLING_FIELDS.items():
        arr = get(name)
        if arr is not None:
            sampling[fld] = cast(_scalar(name, arr))
    stop_words = get("sampling_param_stop")
    if stop_words is not None:
        # an empty stop string means none (llmapi clients send "" for "no stop"); `generate --stop ""` agrees
        sampling["stop"] = tuple(
            s for s in (_decode(v, "sampling_param_stop") for v in stop_words.reshape(-1)) if s
        )

    for name, neutral in NEUTRAL_ONLY.items():
        arr = get(name)
        value = _scalar(name, arr) if arr is not None else neutral
        if value != neutral:
            raise RequestError(
                f"input {name!r} = {value!r} is not supported by the nemotron runtime; "
                f"leave it out or send {neutral:g}"
            )

    def flag(name: str, default: bool = False) -> bool:
        arr = get(name)
        return default if arr is None else bool(_scalar(name, arr))

    return ParsedRequest(
        prompt=prompt,
        sampling=sampling,
        streaming=flag("streaming"),
        exclude_input=flag("sampling_param_exclude_input_from_output", default=True),
        return_finish_reason=flag("return_finish_reason"),
        return_stop_reason=flag("return_stop_reason"),
        return_perf_metrics=flag("sampling_param_return_perf_metrics"),
        stop_request=stop_request,
        return_num_input_tokens=flag("return_num_input_tokens"),
    )


def response_arrays(
    req: ParsedRequest,
    *,
    text: str,
    num_tokens: int,
    finish_reason: str | None,
    stop_reason: str | None,
    stats: dict | None,
    times_ns: dict[str, int],
    num_input_tokens: int | None = None,
) -> dict[str, np.ndarray]:
    """The output tensors of one response (name -> numpy array), honouring the request's `return_*` flags.

    `text` is the cumulative generated text; `times_ns` holds the `*_time_ns` outputs known so far;
    `num_input_tokens` the prompt's token count (sent when the request asked with `return_num_input_tokens`).
    """
    out_text = text if req.exclude_input else req.prompt + text
    arrays: dict[str, np.ndarray] = {
        "text_output": np.array([out_text.encode("utf-8")], dtype=np.object_),
        "num_output_tokens": np.array([num_tokens], dtype=np.int32),
    }
    if req.return_num_input_tokens and num_input_tokens is not None:
        arrays["num_input_tokens"] = np.array([num_input_tokens], dtype=np.int32)
    if req.return_finish_reason and finish_reason is not None:
        arrays["finish_reason"] = np.array([finish_reason.encode()], dtype=np.object_)
    if req.return_stop_reason and finish_reason is not None:
        arrays["stop_reason"] = np.array([(stop_reason or "None").encode()], dtype=np.object_)
    if req.return_perf_metrics:
        for name, value in times_ns.items():
            arrays[name] = np.array([value], dtype=np.int64)
        if stats is not None:
            rate = stats.get("acceptance_rate")
            arrays["acceptance_rate"] = np.array([rate if rate is not None else 0.0], dtype=np.float32)
            arrays["total_accepted_draft_tokens"] = np.array(
                [stats.get("accepted_draft_tokens") or 0], dtype=np.int32
            )
            arrays["total_draft_tokens"] = np.array([stats.get("draft_tokens") or 0], dtype=np.int32)
            for name, (key, dt) in KV_CACHE_OUTPUTS.items():
                if stats.get(key) is not None:
                    arrays[name] = np.array([stats[key]], dtype=dt)
    return arrays
