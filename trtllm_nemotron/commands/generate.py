"""`trtllm-nemotron generate`: one completion, in-process (`--model`) or from a server (`--url`).

The completion text alone goes to stdout (streamed as it is produced); statistics (tokens/s, TTFT,
acceptance rate and length) go to stderr. `--json` prints one JSON object instead. Heavy imports (torch via
the runtime, tritonclient via the client library) happen inside the command body.
"""

from __future__ import annotations

import json
import sys

import click

from trtllm_nemotron.commands import user_errors


def _stats_line(d: dict) -> str:
    parts = [f"{d.get('num_tokens', 0)} tokens", f"{(d.get('tokens_per_s') or 0.0):.1f} tok/s"]
    if d.get("ttft_s") is not None:
        parts.append(f"TTFT {d['ttft_s'] * 1000:.1f} ms")
    if d.get("acceptance_rate") is not None:
        parts.append(f"acceptance rate {d['acceptance_rate']:.2f}")
    if d.get("acceptance_length") is not None:
        parts.append(f"acceptance length {d['acceptance_length']:.2f}")
    if d.get("finish_reason"):
        parts.append(f"finish {d['finish_reason']}")
    return "[" + ", ".join(parts) + "]"


@click.command("generate")
@click.argument("prompt")
@click.option(
    "--model",
    "model",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Engine dir or HF checkpoint dir (default: the embedded model). Exclusive with --url.",
)
@click.option("--url", default=None, help="Triton server URL (host:port) instead of a local model.")
@click.option(
    "--protocol",
    type=click.Choice(["grpc", "http"]),
    default="grpc",
    show_default=True,
    help="Protocol for --url.",
)
@click.option("--stream/--no-stream", default=True, show_default=True, help="Stream text as it is generated.")
@click.option("--max-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 means greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="0 = off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="1 = off.")
@click.option("--seed", type=int, default=None, help="Sampling seed (reproducible output).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not included in the output.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past EOS.")
@click.option(
    "--mtp",
    type=int,
    default=None,
    help="MTP draft tokens (0 = speculation off; default: the engine's setting). Local only.",
)
@click.option("--chat", is_flag=True, help="Wrap PROMPT as a user message in the chat template. Local only.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda. Local only.")
@click.option("--max-seq-len", type=int, default=None, help="Cache length per sequence. Local only.")
@click.option(
    "--backend",
    metavar="NAME",
    default="auto",
    show_default=True,
    help="Step backend: native (C++ CPU step), eager (the reference network; the CUDA path), or any other "
    "registered one (runtime/backend.py); auto = native where it can run, else eager. Local only.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text + statistics) instead.")
@user_errors
def generate(
    prompt,
    model,
    url,
    protocol,
    stream,
    max_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    stop,
    ignore_eos,
    mtp,
    chat,
    device,
    max_seq_len,
    backend,
    as_json,
) -> None:
    """Generate a completion of PROMPT ("-" reads it from stdin), streaming to the terminal."""
    prompt = _utf8_prompt(sys.stdin.buffer.read() if prompt == "-" else prompt)
    stop = tuple(s for s in stop if s)  # an empty stop string means none, as on the server
    if model and url:
        raise click.UsageError("give exactly one of --model and --url")
    if url:
        for flag, val in (("--mtp", mtp), ("--max-seq-len", max_seq_len)):
            if val is not None:
                raise click.UsageError(
                    f"{flag} applies to a local --model only (the server's engine decides)"
                )
        if chat or backend != "auto":
            raise click.UsageError("--chat and --backend apply to a local --model only")
        _remote(
            prompt,
            url,
            protocol,
            stream,
            as_json,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=list(stop),
            ignore_eos=ignore_eos,
        )
        return
    if model is None:
        model = _default_model()
    _local(
        prompt,
        model,
        stream,
        as_json,
        chat,
        device=device,
        max_seq_len=max_seq_len,
        mtp=mtp,
        backend=backend,
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop),
        ignore_eos=ignore_eos,
    )


def _utf8_prompt(prompt: str | bytes) -> str:
    """The prompt as text; a usage error when it is not UTF-8 (argv keeps undecodable bytes as surrogates)."""
    try:
        raw = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as e:
        raise click.BadParameter(
            f"the prompt is not valid UTF-8 ({e.reason} at byte {e.start}); pass UTF-8 text",
            param_hint="PROMPT",
        ) from e


def _default_model() -> str:
    try:
        from builder.defaults import default_model_dir
    except ImportError as e:
        raise click.UsageError(f"no default model available ({e}); pass --model PATH or --url URL") from e
    return str(default_model_dir())


def _local(prompt, model, stream, as_json, chat, *, device, max_seq_len, mtp, backend, **sampling) -> None:
    from trtllm_nemotron.runtime import Engine, SamplingParams

    params = SamplingParams(**sampling).validate()  # refuse bad options before loading the model
    engine = Engine.load(
        model, device=device, max_seq_len=max_seq_len, mtp=mtp, max_batch_size=1, backend=backend
    )
    if chat:
        prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    out = sys.stdout
    # one request: stepped on this thread (Engine.stream), at the engine's own speed -- no scheduler thread
    # and no wake-up per token; Ctrl-C closes the stream, which frees the slot
    text, last = [], None
    for ev in engine.stream(prompt, params):
        text.append(ev.text)
        if stream and not as_json and ev.text:
            out.write(ev.text)
            out.flush()
        last = ev
    from trtllm_nemotron.errors import RuntimeStateError

    if last is None:
        raise RuntimeStateError("generation ended without any event; rerun, and report it if it repeats")
    if last.finish_reason == "error":
        raise RuntimeStateError(f"generation failed: {last.error}")
    st = dict(last.stats or {})
    st["finish_reason"] = last.finish_reason
    _finish("".join(text), st, stream, as_json)


def _remote(prompt, url, protocol, stream, as_json, **sampling) -> None:
    import clients

    if stream and not as_json:
        s = clients.TextStream(prompt, url=url, protocol=protocol, stream=True, **sampling)
        for delta in s:
            sys.stdout.write(delta)
            sys.stdout.flush()
        res = s.result
    else:
        res = clients.generate(prompt, url=url, protocol=protocol, stream=stream, **sampling)
    _finish(res.text, res.to_json(), stream and not as_json, as_json)


def _finish(text: str, stats: dict, streamed: bool, as_json: bool) -> None:
    if as_json:
        keys = (
            "num_tokens",
            "prompt_tokens",
            "tokens_per_s",
            "ttft_s",
            "e2e_s",
            "acceptance_rate",
            "acceptance_length",
            "accepted_draft_tokens",
            "draft_tokens",
            "finish_reason",
        )
        obj = {"text": text, **{k: stats.get(k) for k in keys}}
        click.echo(json.dumps(obj))
        return
    if not streamed:
        sys.stdout.write(text)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    sys.stdout.flush()
    click.echo(_stats_line(stats), err=True)
