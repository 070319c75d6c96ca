"""Evaluation of the embedded model: held-out perplexity, MTP acceptance, greedy completions.

- Perplexity: teacher-forced next-token cross entropy on consecutive held-out windows, next to an add-one
  smoothed unigram model of the training tokens scored on the same target tokens (the baseline a model
  must beat to have learned anything beyond token frequencies). The MTP head's t+2 loss is reported too.
- MTP acceptance length (greedy speculative decoding, emulated exactly with the reference network):
  continue held-out prompts greedily with the main model; at each verification step the last accepted
  position t has hidden h_t and bonus token y[t+1]; the MTP block drafts d1 from (h_t, y[t+1]), then
  re-applies itself to (g, d) with its own final-normed output g (spec §4.7) for d2, d3. Its attention
  sees the teacher-forced pairs (h_i, y[i+1]) of all accepted positions i <= t, as an MTP KV cache would.
  Drafts are accepted while they equal the main model's greedy tokens; the step yields accepted + 1
  tokens. The acceptance length is the mean tokens per verification step (1 .. 1 + n_draft).
- Shapes: batch · T tokens · V vocab · D hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from trtllm_nemotron.train.data import unigram_logprobs

if TYPE_CHECKING:
    from trtllm_nemotron.model.network import NemotronHForCausalLM
    from trtllm_nemotron.tokenizer import Tokenizer

# prompts for the greedy completions shown in the docs
CODE_PROMPTS: tuple[str, ...] = (
    "def fibonacci(n):\n",
    "import os\n\n\ndef list_files(path):\n",
    "class Stack:\n    def __init__(self):\n",
    "    for i in range(",
    '    def __repr__(self):\n        return "',
)


@torch.no_grad()
def heldout_losses(model: NemotronHForCausalLM, windows: np.ndarray, batch_size: int = 8) -> dict[str, float]:
    """Mean next-token and MTP (t+2) cross entropy in nats over [n, T] held-out windows."""
    was_training = model.training
    model.eval()
    nll_main = nll_mtp = 0.0
    n_main = n_mtp = 0
    correct_main = correct_mtp = 0.0
    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[i : i + batch_size])
        logits, hidden = model(ids, return_hidden=True)  # [batch, T, V], [batch, T, D]
        tgt = ids[:, 1:]
        lm = logits[:, :-1].float()
        nll_main += F.cross_entropy(lm.reshape(-1, lm.shape[-1]), tgt.reshape(-1), reduction="sum").item()
        correct_main += (lm.argmax(-1) == tgt).sum().item()
        n_main += tgt.numel()
        if getattr(model, "mtp", None) is not None:
            mtp_logits, _ = model.mtp_step(hidden[:, :-1], ids[:, 1:], None)  # [batch, T-1, V]
            ml = mtp_logits[:, :-1].float()  # position t predicts t+2
            tgt2 = ids[:, 2:]
            nll_mtp += F.cross_entropy(ml.reshape(-1, ml.shape[-1]), tgt2.reshape(-1), reduction="sum").item()
            correct_mtp += (ml.argmax(-1) == tgt2).sum().item()
            n_mtp += tgt2.numel()
    model.train(was_training)
    out = {
        "loss": nll_main / n_main,
        "ppl": math.exp(nll_main / n_main),
        "top1": correct_main / n_main,
        "tokens": n_main,
    }
    if n_mtp:
        out.update(mtp_loss=nll_mtp / n_mtp, mtp_ppl=math.exp(nll_mtp / n_mtp), mtp_top1=correct_mtp / n_mtp)
    return out


def unigram_baseline(train_stream: np.ndarray, windows: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Unigram perplexity on the same targets `heldout_losses` scores (every window's tokens 1..T-1)."""
    lp = unigram_logprobs(train_stream, vocab_size)
    nll = float(-lp[windows[:, 1:].reshape(-1)].mean())
    return {"loss": nll, "ppl": math.exp(nll)}


@torch.no_grad()
def greedy_generate(
    model: NemotronHForCausalLM, ids: list[int], max_new_tokens: int, stop_ids: set[int] | None = None
) -> list[int]:
    """Greedy continuation with the network's HybridCache (prefill, then one token per step). Returns new ids."""
    cache = model.allocate_cache(1, len(ids) + max_new_tokens + 1)
    logits = model(torch.tensor([ids]), cache)  # [1, T, V]
    new: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        if stop_ids and nxt in stop_ids:
            break
        logits = model(torch.tensor([[nxt]]), cache)
    return new


@dataclass
class AcceptanceResult:
    acceptance_length: float  # mean tokens per verification step
    steps: int
    accepted_per_position: list[float]  # P(draft j accepted) j = 1..n_draft
    n_draft: int

    def to_dict(self) -> dict:
        return {
            "acceptance_length": self.acceptance_length,
            "steps": self.steps,
            "n_draft": self.n_draft,
            "accepted_per_position": self.accepted_per_position,
        }


@torch.no_grad()
def mtp_acceptance(
    model: NemotronHForCausalLM,
    prompts: list[list[int]],
    *,
    n_draft: int = 3,
    gen_tokens: int = 96,
) -> AcceptanceResult:
    """Greedy MTP speculative decoding emulated with the reference network (see module docstring)."""
    model.eval()
    tokens_total = steps_total = 0
    accepted_at = np.zeros(n_draft)
    mtp = model._need_mtp()
    for prompt in prompts:
        # the greedy continuation is what any verifier accepts; generate it in one batch of forwards
        y = prompt + greedy_generate(model, prompt, gen_tokens)
        ids = torch.tensor([y])
        _, hidden = model(ids, return_hidden=True)  # [1, L, D]
        L = len(y)
        t = len(prompt) - 1  # the prompt's last position: the main model produced the bonus y[t+1]
        while t + 1 + n_draft < L:
            # MTP sequence of accepted pairs (h_i, y[i+1]), i = 0..t
            h_seq = hidden[:, : t + 1]
            nxt = ids[:, 1 : t + 2]
            drafts: list[int] = []
            for _ in range(n_draft):
                g = mtp(model.backbone.embeddings(nxt), h_seq)  # [1, len, D] final-normed
                d = int(model.logits(g[:, -1])[0].argmax())  # only the newest position is a draft
                drafts.append(d)
                h_seq = torch.cat([h_seq, g[:, -1:]], dim=1)  # chained: (g, d) is the next MTP position
                nxt = torch.cat([nxt, torch.tensor([[d]])], dim=1)
            n_acc = 0
            for j, d in enumerate(drafts):
                if d != y[t + 2 + j]:
                    break
                n_acc += 1
                accepted_at[j] += 1
            tokens_total += n_acc + 1
            steps_total += 1
            t += n_acc + 1
    return AcceptanceResult(
        acceptance_length=tokens_total / max(steps_total, 1),
        steps=steps_total,
        accepted_per_position=(accepted_at / max(steps_total, 1)).tolist(),
        n_draft=n_draft,
    )


def completions(
    model: NemotronHForCausalLM,
    tokenizer: Tokenizer,
    prompts: tuple[str, ...] = CODE_PROMPTS,
    max_new_tokens: int = 48,
) -> list[dict]:
    """Greedy completions of code prompts: [{"prompt", "completion"}]."""
    stop = set(tokenizer.eos_token_ids())
    out = []
    for p in prompts:
        ids = tokenizer.encode(p)
        new = greedy_generate(model, ids, max_new_tokens, stop)
        out.append({"prompt": p, "completion": tokenizer.decode(new, skip_special_tokens=False)})
    return out


def evaluate_checkpoint(
    path,
    *,
    seq_len: int = 256,
    max_windows: int | None = None,
    accept_prompts: int = 12,
    accept_prompt_len: int = 64,
    accept_gen_tokens: int = 64,
    n_draft: int = 3,
) -> dict:
    """Re-measure a trained checkpoint with the data recipe in its training_log.json (held-out ppl vs unigram,
    MTP acceptance length, greedy completions). The unigram counts come from the recipe's training text."""
    import json
    from pathlib import Path

    from tokenizers import Tokenizer

    from trtllm_nemotron.model.loader import load_model
    from trtllm_nemotron.tokenizer import EOS, load_tokenizer
    from trtllm_nemotron.train.data import DataRecipe, encode_documents, heldout_windows, load_corpus

    path = Path(path)
    log = json.loads((path / "training_log.json").read_text())
    recipe = DataRecipe(**log["data_recipe"])
    corpus = load_corpus(recipe)
    tok = load_tokenizer(path)
    fast = Tokenizer.from_file(str(path / "tokenizer.json"))
    eos = tok.id_of(EOS)
    train_stream = encode_documents(fast, corpus.train, eos)
    held = encode_documents(fast, corpus.heldout, eos)
    model = load_model(path, dtype=torch.float32)
    windows = heldout_windows(held, seq_len, max_windows)
    starts = np.linspace(0, len(held) - accept_prompt_len - 1, accept_prompts).astype(int)
    prompts = [held[s : s + accept_prompt_len].tolist() for s in starts]
    return {
        "heldout": heldout_losses(model, windows),
        "unigram": unigram_baseline(train_stream, windows, model.config.vocab_size),
        "mtp_acceptance": mtp_acceptance(
            model, prompts, n_draft=n_draft, gen_tokens=accept_gen_tokens
        ).to_dict(),
        "completions": completions(model, tok),
    }
