"""Our plugin nodes (ONNX domain `trtllm_nemotron`) evaluated on CPU: `onnx.reference` `OpRun`s over the
plugins' torch references, so an exported graph runs without TensorRT.

`OPS` lists the OpRun classes (class name = ONNX op_type = QDP name, `op_domain` = the plugin namespace); pass
them to `onnx.reference.ReferenceEvaluator(model, new_ops=OPS)`. Each computes exactly what the TensorRT
plugin computes (the references are the kernels' specification). State outputs are the updated copies of the
state inputs (TensorRT binds both to one buffer; here the caller takes the output).

numpy <-> torch: bfloat16 arrays (ml_dtypes) travel as their int16 bits; everything else is shared memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from onnx.reference.op_run import OpRun

DOMAIN = "trtllm_nemotron"


def to_torch(a: Any) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    if a.dtype.name.startswith("float8_e4m3fn"):
        return torch.from_numpy(np.ascontiguousarray(a).view(np.uint8)).view(torch.float8_e4m3fn)
    return torch.from_numpy(np.array(a) if not a.flags.writeable else np.ascontiguousarray(a))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class mamba_state_update(OpRun):  # noqa: N801 - the class name is the ONNX op_type
    op_domain = DOMAIN

    def _run(self, xbc, dt, conv_weight, conv_bias, dt_bias, A, D, slot_idx, conv_state, ssm_state,
             num_heads=None, n_groups=None, head_dim=None, state_size=None, conv_kernel=None, keep_steps=None,
             plugin_namespace=None, aot=None):  # fmt: skip
        from plugins.mamba_state_update.reference import mamba_state_update_ref

        conv, ssm = to_torch(conv_state).clone(), to_torch(ssm_state).clone()
        y, ssm_steps, conv_steps = mamba_state_update_ref(
            to_torch(xbc), to_torch(dt), conv, ssm, to_torch(conv_weight), to_torch(conv_bias),
            to_torch(dt_bias), to_torch(A), to_torch(D), to_torch(slot_idx).long(), n_groups=int(n_groups),
            keep_steps=bool(keep_steps),
        )  # fmt: skip
        if not keep_steps:  # the plugin's shape-[1] placeholders
            ssm_steps, conv_steps = ssm.new_zeros(1), conv.new_zeros(1)
        return tuple(to_numpy(t) for t in (y, conv, ssm, ssm_steps, conv_steps))


class latent_moe_routing(OpRun):  # noqa: N801
    op_domain = DOMAIN

    def _run(self, logits, bias, num_experts=None, top_k=None, n_group=None, topk_group=None, norm_topk_prob=None,
             routed_scaling_factor=None, plugin_namespace=None, aot=None):  # fmt: skip
        from plugins.latent_moe_routing.reference import latent_moe_routing_ref

        w, idx, _, _ = latent_moe_routing_ref(
            to_torch(logits), to_torch(bias), int(top_k), int(n_group), int(topk_group), bool(norm_topk_prob),
            float(routed_scaling_factor),
        )  # fmt: skip
        return to_numpy(w), to_numpy(idx)


class moe_expert_permutation(OpRun):  # noqa: N801
    op_domain = DOMAIN

    def _run(self, idx, num_experts=None, plugin_namespace=None, aot=None):
        flat = to_torch(idx).long().flatten()
        counts = torch.bincount(flat, minlength=int(num_experts)).to(torch.int32)
        perm = torch.sort(flat, stable=True).indices.to(torch.int32)
        return to_numpy(counts), to_numpy(perm)


class latent_moe_experts(OpRun):  # noqa: N801
    op_domain = DOMAIN

    def _run(self, x, weights, counts, perm, *w, num_experts=None, top_k=None, hidden_size=None, inter_size=None,
             weight_format=None, plugin_namespace=None, aot=None):  # fmt: skip
        from trtllm_nemotron.quant import nvfp4

        xt = to_torch(x).float()
        k = int(top_k)
        if int(weight_format) == 1:
            up = nvfp4.dequantize(to_torch(w[0]), to_torch(w[1]), to_torch(w[2])[:, None, None])
            down = nvfp4.dequantize(to_torch(w[3]), to_torch(w[4]), to_torch(w[5])[:, None, None])
        else:
            up, down = to_torch(w[0]).float(), to_torch(w[1]).float()
        p = to_torch(perm).long()
        wf = to_torch(weights).float().flatten()
        acc = torch.zeros(xt.shape, dtype=torch.float32)
        start = 0
        for e, n in enumerate(to_torch(counts).tolist()):
            if n == 0:
                continue
            a = p[start : start + n]
            tok = a // k
            y = torch.nn.functional.linear(
                torch.relu(torch.nn.functional.linear(xt[tok], up[e])).square(), down[e]
            )
            acc.index_add_(0, tok, y * wf[a, None])
            start += n
        return (to_numpy(acc),)


OPS = (mamba_state_update, latent_moe_routing, moe_expert_permutation, latent_moe_experts)
