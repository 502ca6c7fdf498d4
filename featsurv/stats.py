"""Streaming statistics in float64: nothing of shape [N, d_sae] is ever held.

Batches are merged with Chan et al.'s pairwise update of means and co-moments, which stays
accurate for near-constant features where naive sums of squares cancel.
"""
from __future__ import annotations

from typing import Any

import numpy as np


class StreamingPearson:
    """Per-column Pearson correlation of two [tokens, d] streams, zeros included."""

    def __init__(self, d: int, chunk: int = 2048):
        self.d = d
        self.n = 0
        self.chunk = chunk
        self._ready = False

    def _init(self, device: Any) -> None:
        """Accumulators live on the device of the first batch (float64 works on CUDA too)."""
        import torch

        z = lambda: torch.zeros(self.d, dtype=torch.float64, device=device)  # noqa: E731
        self.mean_x, self.mean_y, self.m2x, self.m2y, self.cxy = z(), z(), z(), z(), z()
        self.min_x = torch.full((self.d,), float("inf"), dtype=torch.float64, device=device)
        self.max_x = torch.full((self.d,), float("-inf"), dtype=torch.float64, device=device)
        self.min_y, self.max_y = self.min_x.clone(), self.max_x.clone()
        self._ready = True

    def update(self, x: Any, y: Any) -> None:
        for start in range(0, x.shape[0], self.chunk):
            self._update(x[start:start + self.chunk], y[start:start + self.chunk])

    def _update(self, x: Any, y: Any) -> None:
        import torch

        if not self._ready:
            self._init(x.device)
        x = x.detach().to(self.mean_x.device, torch.float64)
        y = y.detach().to(self.mean_x.device, torch.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mxb, myb = x.mean(0), y.mean(0)
        dx, dy = x - mxb, y - myb
        m2xb, m2yb, cb = (dx * dx).sum(0), (dy * dy).sum(0), (dx * dy).sum(0)
        na, n = self.n, self.n + nb
        deltax, deltay = mxb - self.mean_x, myb - self.mean_y
        w = na * nb / n
        self.m2x += m2xb + deltax * deltax * w
        self.m2y += m2yb + deltay * deltay * w
        self.cxy += cb + deltax * deltay * w
        self.mean_x += deltax * (nb / n)
        self.mean_y += deltay * (nb / n)
        self.n = n
        torch.minimum(self.min_x, x.amin(0), out=self.min_x)
        torch.maximum(self.max_x, x.amax(0), out=self.max_x)
        torch.minimum(self.min_y, y.amin(0), out=self.min_y)
        torch.maximum(self.max_y, y.amax(0), out=self.max_y)

    def constant_x(self) -> np.ndarray:
        return (self.min_x == self.max_x).cpu().numpy()

    def constant_y(self) -> np.ndarray:
        """Columns of y that never changed value (a silenced compressed feature)."""
        return (self.min_y == self.max_y).cpu().numpy()

    def r(self) -> np.ndarray:
        """Pearson r per column; 0 where either column is constant."""
        import torch

        if not self._ready:
            return np.zeros(self.d)
        denom = torch.sqrt(self.m2x * self.m2y)
        r = torch.where(denom > 0, self.cxy / torch.where(denom > 0, denom, 1.0), torch.zeros_like(denom))
        r = r.clamp(-1.0, 1.0).cpu().numpy()
        r[self.constant_x() | self.constant_y()] = 0.0
        return r


class FeatureStats:
    """FP per-feature statistics: firing rate, mean activation (zeros included), peak."""

    def __init__(self, d: int):
        import torch

        self.n = 0
        self.fires = torch.zeros(d, dtype=torch.float64)
        self.total = torch.zeros(d, dtype=torch.float64)
        self.peak = torch.zeros(d, dtype=torch.float64)

    def update(self, f: Any) -> None:
        import torch

        f = f.detach().to("cpu", torch.float64)
        self.n += f.shape[0]
        self.fires += (f > 0).sum(0)
        self.total += f.sum(0)
        torch.maximum(self.peak, f.amax(0), out=self.peak)

    def result(self) -> dict[str, np.ndarray]:
        n = max(self.n, 1)
        return {"firing_rate": (self.fires / n).numpy(), "mean_act": (self.total / n).numpy(),
                "peak_act": self.peak.numpy()}


class ExplainedVariance:
    """Streaming explained variance of a reconstruction: 1 - SSE / total sum of squares."""

    def __init__(self, d: int):
        import torch

        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.m2 = torch.zeros(d, dtype=torch.float64)
        self.sse = 0.0

    def update(self, x: Any, x_hat: Any) -> None:
        import torch

        # per-token vectors; per-head activations (hook_z: [tokens, heads, d_head]) flattened
        x = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
        x_hat = x_hat.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
        nb = x.shape[0]
        if nb == 0:
            return
        self.sse += float(((x - x_hat) ** 2).sum())
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        n = self.n + nb
        delta = mb - self.mean
        self.m2 += m2b + delta * delta * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def result(self) -> float:
        total = float(self.m2.sum())
        return 1.0 - self.sse / total if total > 0 else float("nan")
