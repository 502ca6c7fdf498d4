"""Compressor ``magnitude``: unstructured magnitude pruning (per weight matrix or global).

Per matrix, a fused QKV projection (GPT-NeoX) counts as three matrices, Q, K and V, as it does in
TransformerLens's layout and in models with separate projections.
"""
from __future__ import annotations

from typing import Any

from featsurv import Compressor, Param, WeightTarget, hookimpl


def prune_mask(abs_w: Any, sparsity: float) -> Any:
    """Boolean mask of the ``round(sparsity * n)`` smallest entries (as torch.nn.utils.prune does)."""
    import torch

    flat = abs_w.reshape(-1)
    k = round(sparsity * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, largest=False).indices] = True
    return mask.reshape(abs_w.shape)


def _matrices(target: WeightTarget) -> list[Any]:
    """The logical weight matrices of a target, as views: Q, K and V of a fused QKV are separate."""
    w = target.weight
    if target.head_layout is not None and target.head_layout[1] > 1:
        n_heads, parts, d_head = target.head_layout
        view = w.view(n_heads, parts, d_head, w.shape[1])
        return [view[:, p] for p in range(parts)]
    return [w]


class Magnitude(Compressor):
    name = "magnitude"
    description = "Unstructured magnitude pruning: zero the smallest |w|, per matrix or globally"
    params = (
        Param("sparsity", float, 0.5, "fraction of weights set to zero", minimum=0.0, maximum=1.0,
              exclusive_maximum=True),
        Param("scope", str, "matrix", "rank weights within each matrix or across all of them",
              choices=("matrix", "global")),
    )
    knob = "sparsity"
    knob_range = (0.0, 0.8)
    compare_default = {"sparsity": 0.2}

    def label(self, params: dict[str, Any]) -> str:
        scope = "" if params.get("scope", "matrix") == "matrix" else " global"
        return f"magnitude s={params['sparsity']:.4g}{scope}"

    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        import torch

        s = params["sparsity"]
        with torch.no_grad():
            if params.get("scope", "matrix") == "matrix":
                for t in targets:
                    for part in _matrices(t):
                        part[prune_mask(part.abs(), s)] = 0
                return
            flat = torch.cat([t.weight.detach().abs().float().reshape(-1) for t in targets])
            mask = prune_mask(flat, s)
            start = 0
            for t in targets:
                n = t.weight.numel()
                t.weight[mask[start:start + n].reshape(t.weight.shape)] = 0
                start += n


@hookimpl
def register_compressors(register):
    register(Magnitude())
