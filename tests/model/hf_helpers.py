"""Random HF NemotronH checkpoints for the parity tests (HF transformers 5.23 is the numerical oracle).

`make_hf_model(**overrides)` builds a transformers `NemotronHForCausalLM` with weights drawn at a scale
where every path matters (unit-ish activations, some Mamba heads with dt below time_step_min), and
`save_hf(model, dir)` writes it with HF's own `save_pretrained` (per-expert 2-D tensors, `backbone.` names).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

BASE = dict(
    vocab_size=96,
    hidden_size=32,
    layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=40,
    mamba_num_heads=4,
    mamba_head_dim=8,
    ssm_state_size=8,
    n_groups=2,
    conv_kernel=4,
    chunk_size=8,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    moe_shared_expert_intermediate_size=24,
    moe_latent_size=16,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
)


def hf_config(**overrides):
    from transformers import NemotronHConfig

    kw = dict(BASE)
    kw.update(overrides)
    return NemotronHConfig(**kw)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Redraw every parameter so the logits are O(1) and routing / gating / dt clamping all matter."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            p.copy_(torch.log(torch.empty(p.shape).uniform_(1.0, 8.0, generator=g)))
        elif leaf == "dt_bias":
            dt = torch.exp(torch.empty(p.shape).uniform_(math.log(1e-4), math.log(0.3), generator=g))
            dt[0] = 2e-4  # below time_step_min = 1e-3: the clamp matters for head 0
            p.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif leaf == "D":
            p.copy_(torch.randn(p.shape, generator=g))
        elif "norm" in name or "layernorm" in name:
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif leaf == "bias" or p.dim() == 1:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            fan_in = p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.05 * torch.randn(b.shape, generator=g))


def make_hf_model(seed: int = 0, **overrides):
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    m = NemotronHForCausalLM(hf_config(**overrides)).eval()
    randomize(m, seed)
    return m


def save_hf(model, out: Path) -> Path:
    model.save_pretrained(str(out))
    return out


def load_ours_from_hf_dir(path: Path, clamp_dt_min=False):
    """Our network from a HF save_pretrained dir via safetensors directly (independent of the checkpoint reader)."""
    from safetensors.torch import load_file

    from trtllm_nemotron.checkpoint.reader import read_config
    from trtllm_nemotron.model import NemotronHForCausalLM

    cfg = read_config(path)
    model = NemotronHForCausalLM(cfg, clamp_dt_min=clamp_dt_min)
    sd = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        sd.update(load_file(f))
    model.load_state_dict(sd, strict=True)
    return model.eval()
