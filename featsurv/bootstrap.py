"""Confidence intervals for the band fractions, by resampling blocks of contexts.

Tokens inside one context (and neighbouring contexts of one batch) are strongly dependent, so
resampling single tokens would give intervals that are far too narrow. Instead every batch of
contexts is one *block*: :class:`BlockMoments` keeps, per block and per feature, the float64
moments ``n, mean_x, mean_y, M2x, M2y, Cxy`` (centred sums of squares and co-moments; ``x`` is
FP, ``y`` compressed). A bootstrap resample draws ``n_blocks`` blocks with replacement; its
per-feature Pearson r follows exactly from the drawn blocks' moments (pooled with Chan et al.'s
formulas), so no token is ever stored.

Memory: a block costs ``5 * d`` float64 values (d = 65k: 2.6 MB), at most ``max_blocks`` blocks
are kept (when full, neighbours are merged pairwise and later blocks span twice as many
batches). :func:`bootstrap_band_ci` keeps only the active features' columns and processes the
resamples in chunks so that each temporary array stays near ``chunk_elements`` values.
"""
from __future__ import annotations

from typing import Any

import numpy as np

BANDS = ("survived", "blurred", "damaged")

#: A pooled sum of squares counts as zero (a constant feature, r = 0) when
#: ``M2 <= _CONST_REL * N * (mean^2 + shift^2)`` (``shift``: the all-block mean). Rounding leaves
#: about 1e-13 of that scale (a few hundred float64 additions); a real feature's spread is far
#: above it (a relative standard deviation above 1e-5, or one firing token among 1e9 tokens).
_CONST_REL = 1e-10


def _block_moments(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[5, d]`` moments (mean_x, mean_y, M2x, M2y, Cxy) of one chunk of float64 rows."""
    mx, my = x.mean(0), y.mean(0)
    dx, dy = x - mx, y - my
    return np.stack([mx, my, np.einsum("ij,ij->j", dx, dx), np.einsum("ij,ij->j", dy, dy),
                     np.einsum("ij,ij->j", dx, dy)])


def merge_moments(n_a: int, a: np.ndarray, n_b: int, b: np.ndarray) -> tuple[int, np.ndarray]:
    """Chan et al.'s pairwise merge of two ``[5, d]`` moment sets with counts ``n_a``, ``n_b``."""
    if n_a == 0:
        return n_b, b.copy()
    if n_b == 0:
        return n_a, a.copy()
    n = n_a + n_b
    dx, dy = b[0] - a[0], b[1] - a[1]
    w = n_a * n_b / n
    out = np.empty_like(a)
    out[0] = a[0] + dx * (n_b / n)
    out[1] = a[1] + dy * (n_b / n)
    out[2] = a[2] + b[2] + dx * dx * w
    out[3] = a[3] + b[3] + dy * dy * w
    out[4] = a[4] + b[4] + dx * dy * w
    return n, out


class BlockMoments:
    """Per-block float64 moments of two aligned ``[tokens, d]`` feature streams.

    Call :meth:`update` once per batch of contexts with the FP (``x``) and compressed (``y``)
    features of that batch's kept tokens (torch tensors or numpy arrays). Each call is one block
    until ``max_blocks`` blocks exist; then neighbouring blocks are merged pairwise (0+1, 2+3, ...)
    and each later block collects twice as many calls, so blocks stay equal in size and the
    result does not depend on anything but the order of the calls.
    """

    def __init__(self, d: int, max_blocks: int = 256, chunk_rows: int = 2048):
        if max_blocks < 2 or max_blocks % 2:
            raise ValueError(f"max_blocks must be an even number >= 2, got {max_blocks}")
        self.d = int(d)
        self.max_blocks = int(max_blocks)
        self.chunk_rows = int(chunk_rows)
        self.calls_per_block = 1
        self._counts: list[int] = []
        self._moments: list[np.ndarray] = []
        self._pending_n = 0
        self._pending: np.ndarray | None = None
        self._pending_calls = 0

    # ------------------------------------------------------------------ streaming
    def update(self, x: Any, y: Any) -> None:
        """Add one batch (one block's worth of calls) of FP ``x`` and compressed ``y`` features."""
        if tuple(x.shape) != tuple(y.shape) or len(x.shape) != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected two [tokens, {self.d}] arrays, got {tuple(x.shape)} and {tuple(y.shape)}")
        n, mom = 0, None
        for start in range(0, int(x.shape[0]), self.chunk_rows):
            xc, yc = _to_f64(x[start:start + self.chunk_rows]), _to_f64(y[start:start + self.chunk_rows])
            n_c = xc.shape[0]
            m_c = _block_moments(xc, yc)
            n, mom = (n_c, m_c) if mom is None else merge_moments(n, mom, n_c, m_c)
        if mom is not None:
            if self._pending is None:
                self._pending_n, self._pending = n, mom
            else:
                self._pending_n, self._pending = merge_moments(self._pending_n, self._pending, n, mom)
        self._pending_calls += 1
        if self._pending_calls >= self.calls_per_block:
            self._flush()

    def _flush(self) -> None:
        if self._pending is not None and self._pending_n > 0:
            if len(self._moments) >= self.max_blocks:
                self._pair_merge()
            self._counts.append(self._pending_n)
            self._moments.append(self._pending)
        self._pending, self._pending_n, self._pending_calls = None, 0, 0

    def _pair_merge(self) -> None:
        counts, moments = [], []
        for i in range(0, len(self._moments) - 1, 2):
            n, m = merge_moments(self._counts[i], self._moments[i], self._counts[i + 1], self._moments[i + 1])
            counts.append(n)
            moments.append(m)
        if len(self._moments) % 2:
            counts.append(self._counts[-1])
            moments.append(self._moments[-1])
        self._counts, self._moments = counts, moments
        self.calls_per_block *= 2

    # ------------------------------------------------------------------ access
    def blocks(self, columns: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``(n [B], moments [B, 5, d'])`` of every block, a trailing partial block included.

        ``columns`` (a boolean mask or index array over the d features) keeps only those columns.
        """
        counts, moments = list(self._counts), list(self._moments)
        if self._pending is not None and self._pending_n > 0:
            counts.append(self._pending_n)
            moments.append(self._pending)
        if not moments:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 5, 0 if columns is None else _ncols(columns, self.d)))
        cols = slice(None) if columns is None else np.asarray(columns)
        return np.asarray(counts, dtype=np.int64), np.stack([m[:, cols] for m in moments])

    @property
    def n_blocks(self) -> int:
        return len(self._moments) + int(self._pending is not None and self._pending_n > 0)

    @property
    def n_tokens(self) -> int:
        return int(sum(self._counts) + self._pending_n)

    def r(self) -> np.ndarray:
        """Pearson r per feature over every token (all blocks pooled); 0 for constant features."""
        n, m = self.blocks()
        if len(n) == 0:
            return np.zeros(self.d)
        return _pooled_r(np.ones((1, len(n))), n, m)[0]


def _ncols(columns: Any, d: int) -> int:
    c = np.asarray(columns)
    return int(c.sum()) if c.dtype == bool else int(c.size)


def _to_f64(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, on any device
        import torch

        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _pooled_r(weights: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pearson r ``[R, d]`` for R resamples given block multiplicities ``weights [R, B]``.

    Block b, drawn ``w_b`` times, contributes ``w_b`` copies of its tokens. Means are pooled
    around the all-block mean (a shift that keeps the sums of squares free of cancellation):
    ``M2 = sum_b w_b (M2_b + n_b a_b^2) - N dbar^2`` with ``a_b`` the block mean minus the shift and
    ``dbar`` the resample mean minus the shift; likewise for the co-moment.
    """
    n = n.astype(np.float64)
    big_n = weights @ n                                   # [R]
    total = n.sum()
    shift_x = (n @ m[:, 0]) / total                       # [d]
    shift_y = (n @ m[:, 1]) / total
    ax = m[:, 0] - shift_x                                # [B, d]
    ay = m[:, 1] - shift_y
    wn = weights * n                                      # [R, B]
    dbx = (wn @ ax) / big_n[:, None]                      # [R, d]
    dby = (wn @ ay) / big_n[:, None]
    m2x = weights @ m[:, 2] + wn @ (ax * ax) - big_n[:, None] * dbx * dbx
    m2y = weights @ m[:, 3] + wn @ (ay * ay) - big_n[:, None] * dby * dby
    cxy = weights @ m[:, 4] + wn @ (ax * ay) - big_n[:, None] * dbx * dby
    mean_x = shift_x + dbx
    mean_y = shift_y + dby
    const = (m2x <= _CONST_REL * big_n[:, None] * (mean_x * mean_x + shift_x * shift_x)) | \
            (m2y <= _CONST_REL * big_n[:, None] * (mean_y * mean_y + shift_y * shift_y))
    denom = np.sqrt(np.where(const, 1.0, m2x * m2y))
    r = np.where(const, 0.0, cxy / denom)
    return np.clip(r, -1.0, 1.0)


def resample_indices(n_blocks: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """The drawn block indices ``[n_resamples, n_blocks]`` (with replacement) for a seed.

    Public so that a check can rebuild exactly the same resamples token by token.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_blocks, size=(n_resamples, n_blocks))


def band_fractions(r: np.ndarray, survived_above: float = 0.9, damaged_below: float = 0.5) -> dict[str, np.ndarray]:
    """Fractions of the columns of ``r [..., d]`` in each band (over the last axis)."""
    d = r.shape[-1]
    surv = r > survived_above
    dam = r < damaged_below
    return {"survived": surv.sum(-1) / d, "blurred": (~surv & ~dam).sum(-1) / d, "damaged": dam.sum(-1) / d}


def bootstrap_band_ci(moments: BlockMoments, active: Any, survived_above: float = 0.9,
                      damaged_below: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, chunk_elements: int = 4_000_000) -> dict[str, Any]:
    """Percentile bootstrap intervals of the survived / blurred / damaged fractions.

    ``active`` is the boolean mask (length d) of the active features, decided once on all FP
    tokens and held fixed across resamples; fractions are over those features. Each resample
    draws ``n_blocks`` blocks with replacement (:func:`resample_indices`); a feature constant in a
    resample (FP or compressed) gets r = 0, as in the main metric. Returns
    ``{"survived": [lo, hi], "blurred": [lo, hi], "damaged": [lo, hi], "n_blocks", "n_resamples",
    "level"}``. With fewer than two blocks, or no active feature, no interval can be formed: the
    bounds are NaN, ``n_resamples`` is 0 and ``note`` says why.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    active = np.asarray(active, dtype=bool)
    if active.shape != (moments.d,):
        raise ValueError(f"active must be a boolean mask of length {moments.d}, got shape {active.shape}")
    n_blocks = moments.n_blocks
    out: dict[str, Any] = {"n_blocks": n_blocks, "n_resamples": int(n_resamples), "level": level}
    note = None
    if n_blocks < 2:
        note = f"needs at least 2 blocks of contexts, got {n_blocks}"
    elif not active.any():
        note = "no active features"
    elif n_resamples < 1:
        note = "n_resamples < 1"
    if note:
        out.update({b: [float("nan"), float("nan")] for b in BANDS})
        out.update(n_resamples=0, note=note)
        return out

    n, m = moments.blocks(active)
    d_act = m.shape[2]
    idx = resample_indices(n_blocks, n_resamples, seed)
    chunk = max(1, chunk_elements // max(d_act, 1))
    fracs = {b: np.empty(n_resamples) for b in BANDS}
    for start in range(0, n_resamples, chunk):
        sel = idx[start:start + chunk]
        rows = sel.shape[0]
        flat = (np.arange(rows)[:, None] * n_blocks + sel).ravel()
        weights = np.bincount(flat, minlength=rows * n_blocks).reshape(rows, n_blocks).astype(np.float64)
        r = _pooled_r(weights, n, m)
        for b, v in band_fractions(r, survived_above, damaged_below).items():
            fracs[b][start:start + chunk] = v
    alpha = (1.0 - level) / 2.0
    for b in BANDS:
        lo, hi = np.quantile(fracs[b], [alpha, 1.0 - alpha])
        out[b] = [float(lo), float(hi)]
    return out
