"""The host's streaming FP statistics in float64: feature statistics and the fit check.

They follow the device of the first batch and never wait for it (results are read once, at the
end). Survival's own numerics (moments, r, bootstrap) live with the survival plugin.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _is_csr(t: Any) -> bool:
    import torch

    return getattr(t, "layout", None) == torch.sparse_csr


class FeatureStats:
    """FP per-feature statistics: firing rate, mean activation (zeros included), peak.

    ``update`` takes a dense ``[tokens, d]`` tensor or, much cheaper, the same features as a
    sparse CSR tensor (zeros are not stored, so only the stored values are read).
    """

    def __init__(self, d: int):
        self.d = int(d)
        self.n = 0
        self.fires: Any = None

    def _init(self, device: Any) -> None:
        import torch

        self.fires = torch.zeros(self.d, dtype=torch.float64, device=device)
        self.total = torch.zeros_like(self.fires)
        self.peak = torch.zeros_like(self.fires)

    def update(self, f: Any) -> None:
        import torch

        if self.fires is None:
            self._init(f.device)
        f = f.detach()
        self.n += int(f.shape[0])
        if _is_csr(f):
            vals = f.values().to(self.fires.device, torch.float64)
            cols = f.col_indices().to(self.fires.device, torch.long)  # scatter_reduce_ takes int64 only
            self.fires.index_add_(0, cols, (vals > 0).to(torch.float64))
            self.total.index_add_(0, cols, vals)
            self.peak.scatter_reduce_(0, cols, vals, reduce="amax", include_self=True)
            return
        f = f.to(self.fires.device, torch.float64)
        self.fires += (f > 0).sum(0)
        self.total += f.sum(0)
        torch.maximum(self.peak, f.amax(0), out=self.peak)

    def result(self) -> dict[str, np.ndarray]:
        if self.fires is None:
            self._init("cpu")
        n = max(self.n, 1)
        return {"firing_rate": (self.fires / n).cpu().numpy(), "mean_act": (self.total / n).cpu().numpy(),
                "peak_act": self.peak.cpu().numpy()}


class ExplainedVariance:
    """Streaming explained variance of a reconstruction: 1 - SSE / total sum of squares.

    The total sum of squares comes from sums shifted by the first batch's mean (close to the
    overall mean, so the shifted sums do not cancel), with no merge step.
    """

    def __init__(self, d: int):
        self.d = int(d)
        self.n = 0
        self.shift: Any = None

    def update(self, x: Any, x_hat: Any) -> None:
        import torch

        if x.shape[0] == 0:
            return
        dev = x.device if self.shift is None else self.shift.device
        # per-token vectors; per-head activations (hook_z: [tokens, heads, d_head]) flattened
        x = x.detach().to(dev, torch.float64).reshape(x.shape[0], -1)
        x_hat = x_hat.detach().to(dev, torch.float64).reshape(x.shape[0], -1)
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros_like(self.shift)
            self.sse = torch.zeros((), dtype=torch.float64, device=dev)
        self.sse += (x - x_hat).square_().sum()
        dx = x - self.shift
        self.s1 += dx.sum(0)
        self.s2 += dx.square_().sum(0)
        self.n += int(x.shape[0])

    def result(self) -> float:
        if self.shift is None:
            return float("nan")
        total = float((self.s2 - self.s1 * self.s1 / self.n).sum())
        return 1.0 - float(self.sse) / total if total > 0 else float("nan")


class SparseDecode:
    """``sae.decode`` of the FP features for the fit check, from their sparse CSR copy when the
    SAE accepts one.

    The first batch is decoded densely (that result is used), then from the CSR copy as a probe:
    when the sparse decode raises, or differs from the dense one beyond float32 round-off, every
    batch is decoded densely. A sparse decode reads only the stored values: for an SAE with L0
    of 100 out of 16k features, about 1% of the dense work.
    """

    def __init__(self, sae: Any):
        self.sae = sae
        self.sparse_ok: bool | None = None

    def _sparse(self, csr: Any, like: Any) -> Any:
        try:
            return self.sae.decode(csr.to(like.device))
        except Exception:  # noqa: BLE001 - a probe: any failure means "decode densely"
            return None

    def __call__(self, f: Any, csr: Any) -> Any:
        import torch

        if self.sparse_ok is None:
            dense = self.sae.decode(f)
            sparse = self._sparse(csr, f)
            scale = float(dense.abs().max()) if dense.numel() else 0.0
            self.sparse_ok = bool(isinstance(sparse, torch.Tensor) and sparse.layout == torch.strided
                                  and sparse.shape == dense.shape and sparse.dtype == dense.dtype
                                  and torch.allclose(sparse, dense, rtol=1e-4, atol=1e-5 * scale))
            return dense
        if self.sparse_ok:
            out = self._sparse(csr, f)
            if out is not None:
                return out
        return self.sae.decode(f)
