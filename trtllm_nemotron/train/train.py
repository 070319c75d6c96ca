"""Train the embedded default model: Nemotron 3 Super's architecture at ~6M parameters, on CPU.

Design notes
- The network is the reference `NemotronHForCausalLM` (Mamba-2, LatentMoE with grouped sigmoid routing,
  NoPE attention, one MTP block `*E`), initialised by `model_from_config(cfg, seed)` and trained in fp32.
  Only the routed-expert accumulation runs through a training fast path (`train.fast`, same maths).
  Every linear layer's input width is a multiple of 16, so the NVFP4 (16-element blocks) and FP8 recipes
  apply to every weight of the shipped model.
- Loss = CE(next token) + mtp_weight · CE(MTP, token t+2) + mtp_chain_weight · CE(MTP applied to its own
  output g and token t+2, token t+3). The chained term trains the block the way speculative decoding uses
  it with 3 draft tokens (spec §4.7: the final-normed output is fed back as the next hidden).
- MoE balance without an auxiliary loss (DeepSeek-V3): after each step every router's
  `e_score_correction_bias += u · sign(mean_load - load)`, load = tokens routed to each expert in that
  step. The bias only changes which experts are chosen, never the weights, which is its purpose.
- Reproducible: fixed seed for the init and for the data windows, a fixed step count (never a wall-clock
  budget), AdamW with linear warmup and cosine decay. Threads default to 2 (bit-for-bit equality across
  different thread counts is not guaranteed by the CPU GEMM libraries). `OMP_WAIT_POLICY=PASSIVE` is set by
  the command: on a shared 2-core machine, spinning OpenMP workers cost 3-5x the step time.
- Output: a HF checkpoint (bf16 weights, fp32 correction bias, tokenizer, generation_config.json) written
  atomically with `save_checkpoint`, plus `training_log.json` (recipe, config, per-step losses, held-out
  curve, final metrics, wall time) and `loss.png`. The final metrics are measured on the bf16-rounded
  weights, i.e. on exactly what ships.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_nemotron.config import NemotronHConfig
from trtllm_nemotron.errors import ConfigError
from trtllm_nemotron.train.data import (
    DataRecipe,
    WindowSampler,
    encode_documents,
    heldout_windows,
    iter_texts,
    load_corpus,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "nemotron-tiny"
TRAIN_COMMAND = "trtllm-nemotron train-tiny"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in training_log.json)."""

    seed: int = 0
    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mtp_weight: float = 0.5
    mtp_chain_weight: float = 0.25
    mtp_stride: int = 2  # MTP losses scored on every 2nd position (saves two thirds of a vocab projection)
    bias_update_rate: float = 1e-3
    vocab_size: int = 4096
    threads: int = 2
    eval_every: int = 50
    eval_windows: int = 8  # held-out windows scored during training
    final_eval_windows: int = 0  # 0 = every held-out window
    accept_prompts: int = 12
    accept_prompt_len: int = 64
    accept_gen_tokens: int = 64
    n_draft: int = 3
    completion_tokens: int = 48

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ConfigError(
                f"steps ({self.steps}), batch_size ({self.batch_size}) must be >= 1 and seq_len ({self.seq_len}) >= 8"
            )
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")


def tiny_model_config(
    vocab_size: int = 4096, *, hidden_size: int = 256, pattern: str = "MEM*EME"
) -> NemotronHConfig:
    """The embedded model's architecture: Super's layer types and routing at toy size.

    Every linear input dim (hidden 256, d_inner 256, attention 8x32, latent 64, expert 128, shared expert 512,
    eh_proj 512) is a multiple of 16.
    """
    D = hidden_size
    cfg = NemotronHConfig(
        pattern=pattern,
        mtp_pattern="*E",
        num_nextn_predict_layers=1,
        vocab_size=vocab_size,
        hidden_size=D,
        tie_word_embeddings=False,
        num_attention_heads=D // 32,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        intermediate_size=2 * D,
        mamba_num_heads=D // 32,
        mamba_head_dim=32,
        ssm_state_size=32,
        n_groups=2,
        conv_kernel=4,
        chunk_size=64,
        n_routed_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=128,
        n_shared_experts=1,
        moe_shared_expert_intermediate_size=2 * D,
        moe_latent_size=64,
        moe_shared_expert_overlap=False,
        routed_scaling_factor=2.5,
        n_group=4,
        topk_group=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="bfloat16",
    )
    bad = linear_in_dims_not_multiple(cfg, 16)
    if bad:
        raise ConfigError(f"linear input dims must be multiples of 16 for NVFP4/FP8; offending: {bad}")
    return cfg


def linear_in_dims_not_multiple(cfg: NemotronHConfig, m: int = 16) -> dict[str, int]:
    """{tensor name: input dim} of every 2-D weight whose input dim is not a multiple of m (embeddings excluded)."""
    from trtllm_nemotron.config import expected_tensors

    out = {}
    for name, spec in expected_tensors(cfg).items():
        if len(spec.shape) == 2 and not name.endswith("embeddings.weight") and spec.shape[1] % m:
            out[name] = spec.shape[1]
    return out


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to tc.lr, then cosine down to tc.lr * tc.min_lr_ratio at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    frac = (step - tc.warmup_steps) / max(1, tc.steps - 1 - tc.warmup_steps)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


class RouterLoads:
    """Counts tokens per expert of every router during training forwards (forward hooks on `gate`)."""

    def __init__(self, model) -> None:
        self.routers = [m for name, m in model.named_modules() if name.endswith("mixer.gate")]
        self.counts = [None] * len(self.routers)
        self.active = False
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, i: int):
        def hook(module, inputs, output) -> None:
            if not self.active:
                return
            _, idx = output
            c = idx.reshape(-1).bincount(minlength=module.e_score_correction_bias.numel())
            self.counts[i] = c if self.counts[i] is None else self.counts[i] + c

        return hook

    def update_bias(self, rate: float) -> float:
        """bias += rate · sign(mean_load - load) per router; returns the mean max/mean load ratio."""
        import torch

        ratios: list[float] = []
        with torch.no_grad():
            for r, c in zip(self.routers, self.counts, strict=True):
                if c is None:
                    continue
                load = c.float()
                ratios.append((load.max() / load.mean().clamp(min=1e-9)).item())
                r.e_score_correction_bias += rate * torch.sign(load.mean() - load)
        self.counts = [None] * len(self.routers)
        return float(np.mean(ratios)) if ratios else 1.0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def step_losses(model, ids, tc: TrainConfig):
    """Training losses on ids [batch, T]: (total, main, mtp, mtp_chain) as 0-d tensors."""
    import torch.nn.functional as F

    V = model.config.vocab_size
    h = model.hidden_states(ids)  # [batch, T, D] final-normed
    logits = model.logits(h[:, :-1])  # [batch, T-1, V]
    main = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
    total = main
    mtp = chain = main.new_zeros(())
    if model.mtp is not None and tc.mtp_weight > 0:
        emb = model.backbone.embeddings
        # position t: (h_t, x_{t+1}) -> x_{t+2}, t = 0..T-3
        # the MTP block runs on every position (its attention needs them); the vocabulary projection, the
        # costliest part at V=4096, is scored on every `mtp_stride`-th position only
        s = tc.mtp_stride
        g = model.mtp(emb(ids[:, 1:-1]), h[:, :-2])  # [batch, T-2, D]
        mtp = F.cross_entropy(model.logits(g[:, ::s]).reshape(-1, V), ids[:, 2::s].reshape(-1))
        total = total + tc.mtp_weight * mtp
        if tc.mtp_chain_weight > 0:
            # chained: (g_t, x_{t+2}) -> x_{t+3}, t = 0..T-4
            g2 = model.mtp(emb(ids[:, 2:-1]), g[:, :-1])  # [batch, T-3, D]
            chain = F.cross_entropy(model.logits(g2[:, ::s]).reshape(-1, V), ids[:, 3::s].reshape(-1))
            total = total + tc.mtp_chain_weight * chain
    return total, main, mtp, chain


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear weights, embeddings, conv); none on norms, A_log, D, dt_bias."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def plot_losses(log: dict[str, Any]) -> bytes:
    """loss.png: training losses (smoothed), held-out losses and the unigram baseline, in nats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in log["train"]])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for key, label in (
        ("loss", "train next-token"),
        ("mtp", "train MTP t+2"),
        ("mtp_chain", "train MTP chained t+3"),
    ):
        y = np.array([r[key] for r in log["train"]])
        if not np.any(y):
            continue
        k = max(1, len(y) // 50)
        ys = np.convolve(y, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], ys, label=label)
    if log["heldout"]:
        hs = [r["step"] for r in log["heldout"]]
        ax.plot(hs, [r["loss"] for r in log["heldout"]], "o-", label="held-out next-token")
        if "mtp_loss" in log["heldout"][0]:
            ax.plot(hs, [r["mtp_loss"] for r in log["heldout"]], "s--", label="held-out MTP t+2")
    uni = log.get("final", {}).get("unigram")
    if uni:
        ax.axhline(uni["loss"], color="gray", ls=":", label=f"unigram baseline (ppl {uni['ppl']:.0f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats)")
    ax.set_title("nemotron-tiny: Python stdlib, CPU")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def train_tiny(
    out_dir: str | Path = DEFAULT_OUT,
    tc: TrainConfig | None = None,
    recipe: DataRecipe | None = None,
    *,
    model_config: NemotronHConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the embedded model and write its checkpoint to `out_dir` (atomically). Returns the training log.

    `model_config` overrides the architecture (its vocab_size must equal `tc.vocab_size`); the default is
    `tiny_model_config(tc.vocab_size)`.
    """
    import torch
    from tokenizers import Tokenizer
    from tqdm import tqdm

    from trtllm_nemotron.checkpoint.writer import save_checkpoint
    from trtllm_nemotron.model.loader import model_from_config
    from trtllm_nemotron.tokenizer import EOS, load_tokenizer, train_bpe_tokenizer
    from trtllm_nemotron.train import eval as ev
    from trtllm_nemotron.train.fast import routed_experts_sorted

    tc = tc or TrainConfig()
    recipe = recipe or DataRecipe()
    cfg = model_config or tiny_model_config(tc.vocab_size)
    if cfg.vocab_size != tc.vocab_size:
        raise ConfigError(
            f"model_config.vocab_size ({cfg.vocab_size}) != TrainConfig.vocab_size ({tc.vocab_size})"
        )
    out_dir = Path(out_dir)
    t_start = time.time()
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)

    # ---- data + tokenizer ----
    corpus = load_corpus(recipe)
    out_dir.absolute().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tok-", dir=out_dir.absolute().parent) as tok_dir:
        train_bpe_tokenizer(iter_texts(corpus.train), tc.vocab_size, tok_dir)
        tok = load_tokenizer(tok_dir)
        fast_tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))  # batch encoding
        eos = tok.id_of(EOS)
        train_stream = encode_documents(fast_tok, corpus.train, eos)
        heldout_stream = encode_documents(fast_tok, corpus.heldout, eos)
        t_data = time.time() - t_start
        sampler = WindowSampler(train_stream, tc.seq_len, tc.seed)
        ev_windows = heldout_windows(heldout_stream, tc.seq_len, tc.eval_windows)
        final_windows = heldout_windows(heldout_stream, tc.seq_len, tc.final_eval_windows or None)

        # ---- model ----
        model = model_from_config(cfg, seed=tc.seed, moe_routed=routed_experts_sorted)
        model.train(True)
        loads = RouterLoads(model)
        opt = torch.optim.AdamW(
            _param_groups(model, tc.weight_decay), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8
        )
        n_params = sum(p.numel() for p in model.parameters())
        log: dict[str, Any] = {
            "command": TRAIN_COMMAND,
            "train_config": dataclasses.asdict(tc),
            "data_recipe": dataclasses.asdict(recipe),
            "corpus": corpus.summary(),
            "tokens": {"train": int(len(train_stream)), "heldout": int(len(heldout_stream))},
            "model_config": cfg.to_dict(),
            "parameters": int(n_params),
            "environment": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "platform": platform.platform(),
                "threads": tc.threads,
            },
            "train": [],
            "heldout": [],
        }

        # ---- training ----
        t_train = time.time()
        bar = tqdm(range(tc.steps), desc="train-tiny", unit="step", disable=not progress, file=sys.stderr)
        for step in bar:
            lr = lr_at(step, tc)
            for grp in opt.param_groups:
                grp["lr"] = lr
            ids = torch.from_numpy(sampler.batch(tc.batch_size))
            loads.active = True
            total, main, mtp, chain = step_losses(model, ids, tc)
            loads.active = False
            opt.zero_grad(set_to_none=True)
            total.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            imbalance = loads.update_bias(tc.bias_update_rate)
            rec = {
                "step": step,
                "lr": lr,
                "loss": main.item(),
                "mtp": mtp.item(),
                "mtp_chain": chain.item(),
                "grad_norm": float(gnorm),
                "load_max_over_mean": imbalance,
                "elapsed_s": round(time.time() - t_train, 2),
            }
            log["train"].append(rec)
            if (step + 1) % tc.eval_every == 0 or step == tc.steps - 1:
                h = ev.heldout_losses(model, ev_windows)
                h["step"] = step
                log["heldout"].append(h)
                model.train(True)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", mtp=f"{rec['mtp']:.3f}", lb=f"{imbalance:.2f}")
        loads.remove()
        train_s = time.time() - t_train
        # keep the trained weights until the checkpoint is written: evaluation can then be redone alone
        state_path = out_dir.absolute().parent / f".{out_dir.name}.trained-state.pt"
        torch.save({"state_dict": model.state_dict(), "log": log, "train_s": train_s}, state_path)

        # ---- final evaluation, on the bf16-rounded weights that ship ----
        t_eval = time.time()
        model.to(torch.bfloat16).to(torch.float32)
        model.eval()
        final = ev.heldout_losses(model, final_windows)
        uni = ev.unigram_baseline(train_stream, final_windows, tc.vocab_size)
        starts = np.linspace(0, len(heldout_stream) - tc.accept_prompt_len - 1, tc.accept_prompts).astype(int)
        prompts = [heldout_stream[s : s + tc.accept_prompt_len].tolist() for s in starts]
        acc = ev.mtp_acceptance(model, prompts, n_draft=tc.n_draft, gen_tokens=tc.accept_gen_tokens)
        comps = ev.completions(model, tok, max_new_tokens=tc.completion_tokens)
        log["final"] = {
            "heldout": final,
            "unigram": uni,
            "mtp_acceptance": acc.to_dict(),
            "completions": comps,
            "weights": "bf16 (as shipped), computed in fp32",
        }
        log["timing"] = {
            "data_and_tokenizer_s": round(t_data, 1),
            "train_s": round(train_s, 1),
            "s_per_step": round(train_s / tc.steps, 3),
            "eval_s": round(time.time() - t_eval, 1),
        }
        log["timing"]["total_s"] = round(time.time() - t_start, 1)

        # ---- checkpoint ----
        def tensors():
            for name, t in model.state_dict().items():
                yield name, (t.float() if name.endswith("e_score_correction_bias") else t.to(torch.bfloat16))

        png = plot_losses(log)
        save_checkpoint(
            out_dir,
            cfg,
            tensors(),
            tokenizer_dir=tok_dir,
            metadata={"format": "pt"},
            extra_files={"training_log.json": json.dumps(log, indent=1) + "\n", "loss.png": png},
        )
        state_path.unlink()
    return log


def summarize(log: dict[str, Any]) -> str:
    """A few lines for the terminal: losses, perplexities, acceptance length, timing."""
    f = log["final"]
    h, u, a = f["heldout"], f["unigram"], f["mtp_acceptance"]
    last = log["train"][-1]
    lines = [
        f"parameters: {log['parameters']:,}; train tokens available {log['tokens']['train']:,}",
        f"final train loss {last['loss']:.3f} (MTP {last['mtp']:.3f}, chained {last['mtp_chain']:.3f})",
        f"held-out ppl {h['ppl']:.2f} (top-1 {h['top1']:.3f}) vs unigram {u['ppl']:.1f}; MTP t+2 ppl "
        f"{h.get('mtp_ppl', float('nan')):.2f}",
        f"MTP acceptance length @{a['n_draft']} drafts: {a['acceptance_length']:.3f} over {a['steps']} steps "
        f"(per-position {', '.join(f'{x:.2f}' for x in a['accepted_per_position'])})",
        f"time: {log['timing']['train_s']:.0f} s training ({log['timing']['s_per_step']:.2f} s/step), "
        f"{log['timing']['total_s']:.0f} s total",
    ]
    return "\n".join(lines)
