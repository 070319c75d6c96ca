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
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # initializers are read-only views; torch wants writable memory
        a = a.copy()
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    if a.dtype.name.startswith("float8_e4m3fn"):
        return torch.from_numpy(a.view(np.uint8)).view(torch.float8_e4m3fn)
    return torch.from_numpy(a)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


class mamba_state_update(OpRun):  # noqa: N801 - the class name is the ONNX op_type
    op_domain = DOMAIN

    def _run(
        self,
        xbc,
        dt,
        conv_weight,
        conv_bias,
        dt_bias,
        A,
        D,
        slot_idx,
        conv_state,
        ssm_state,
        conv_window,
        num_heads=None,
        n_groups=None,
        head_dim=None,
        state_size=None,
        conv_kernel=None,
        keep_steps=None,
        plugin_namespace=None,
        aot=None,
    ):
        from plugins.mamba_state_update.reference import mamba_state_update_ref

        conv, ssm = to_torch(conv_state).clone(), to_torch(ssm_state).clone()
        y, ssm_steps, conv_steps = mamba_state_update_ref(
            to_torch(xbc),
            to_torch(dt),
            conv,
            ssm,
            to_torch(conv_weight),
            to_torch(conv_bias),
            to_torch(dt_bias),
            to_torch(A),
            to_torch(D),
            to_torch(slot_idx).long(),
            n_groups=int(n_groups),
            keep_steps=bool(keep_steps),
        )
        if not keep_steps:  # the plugin's shape-[1] placeholders
            ssm_steps, conv_steps = ssm.new_zeros(1), conv.new_zeros(1)
        return tuple(to_numpy(t) for t in (y, conv, ssm, ssm_steps, conv_steps))


class latent_moe_routing(OpRun):  # noqa: N801
    op_domain = DOMAIN

    def _run(
        self,
        logits,
        bias,
        num_experts=None,
        top_k=None,
        n_group=None,
        topk_group=None,
        norm_topk_prob=None,
        routed_scaling_factor=None,
        plugin_namespace=None,
        aot=None,
    ):
        from plugins.latent_moe_routing.reference import latent_moe_routing_ref

        w, idx, _, _ = latent_moe_routing_ref(
            to_torch(logits),
            to_torch(bias),
            int(top_k),
            int(n_group),
            int(topk_group),
            bool(norm_topk_prob),
            float(routed_scaling_factor),
        )
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

    def _run(self, x, weights, counts, perm, up, down, plugin_namespace=None, aot=None):
        from plugins.latent_moe_experts.reference import latent_moe_experts_ref

        t = [to_torch(a) for a in (x, weights, counts, perm, up, down)]
        return (to_numpy(latent_moe_experts_ref(*t)),)


class latent_moe_experts_nvfp4(OpRun):  # noqa: N801
    op_domain = DOMAIN

    def _run(
        self,
        x,
        weights,
        counts,
        perm,
        up,
        up_scale,
        up_scale_2,
        down,
        down_scale,
        down_scale_2,
        plugin_namespace=None,
        aot=None,
    ):
        from plugins.latent_moe_experts.reference import latent_moe_experts_ref

        def bits(a: Any, dtype: torch.dtype) -> torch.Tensor:  # INT8 tensors holding E2M1 pairs / E4M3 bits
            return to_torch(a).view(torch.uint8).view(dtype)

        return (
            to_numpy(
                latent_moe_experts_ref(
                    to_torch(x),
                    to_torch(weights),
                    to_torch(counts),
                    to_torch(perm),
                    bits(up, torch.uint8),
                    up_scale=bits(up_scale, torch.float8_e4m3fn),
                    up_scale_2=to_torch(up_scale_2),
                    down=bits(down, torch.uint8),
                    down_scale=bits(down_scale, torch.float8_e4m3fn),
                    down_scale_2=to_torch(down_scale_2),
                )
            ),
        )


OPS = (
    mamba_state_update,
    latent_moe_routing,
    moe_expert_permutation,
    latent_moe_experts,
    latent_moe_experts_nvfp4,
)


_ORT_REGISTERED: list[Any] = []


def register_ort_ops() -> str:
    """Register the plugin ops (float32 graphs, BF16 experts widened to float32 in the graph) as
    onnxruntime-extensions Python custom ops, once per process; returns their ONNX domain
    (`ai.onnx.contrib`: the extensions' Python ops cannot choose theirs)."""
    from onnxruntime_extensions import PyCustomOpDef as T
    from onnxruntime_extensions import default_opset_domain, onnx_op

    if _ORT_REGISTERED:
        return default_opset_domain()
    f, i8, i32, i64, s = T.dt_float, T.dt_int8, T.dt_int32, T.dt_int64, T.dt_string

    def attrs(*names: str, floats: tuple[str, ...] = ()) -> dict[str, int]:
        return {**{n: i64 for n in names}, **{n: f for n in floats}, "plugin_namespace": s, "aot": i64}

    def op(cls: type[OpRun], inputs: list[int], outputs: list[int], a: dict[str, int]) -> None:
        def fn(*args: Any, **kw: Any) -> Any:
            out = cls._run(None, *args, **kw)  # type: ignore[arg-type]  # _run uses no instance state
            return out if len(out) > 1 else out[0]

        _ORT_REGISTERED.append(onnx_op(op_type=cls.__name__, inputs=inputs, outputs=outputs, attrs=a)(fn))

    op(
        mamba_state_update,
        [f] * 7 + [i32, f, f, f],
        [f] * 5,
        attrs("num_heads", "n_groups", "head_dim", "state_size", "conv_kernel", "keep_steps"),
    )
    op(
        latent_moe_routing,
        [f, f],
        [f, i32],
        attrs(
            "num_experts",
            "top_k",
            "n_group",
            "topk_group",
            "norm_topk_prob",
            floats=("routed_scaling_factor",),
        ),
    )
    op(moe_expert_permutation, [i32], [i32, i32], attrs("num_experts"))
    op(latent_moe_experts, [f, f, i32, i32, f, f], [f], attrs())
    op(latent_moe_experts_nvfp4, [f, f, i32, i32, i8, i8, f, i8, i8, f], [f], attrs())
    return default_opset_domain()
