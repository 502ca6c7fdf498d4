"""Survival's numerics: float64 moments per context, one merge routine, one constant rule, r, bands.

A *moment set* is a float64 tensor ``[..., 5, d]`` holding, per feature, ``mean_x, mean_y, M2x,
M2y, Cxy`` (centred sums of squares and the co-moment; ``x`` is FP, ``y`` compressed) with a
count of tokens beside it. Contexts are the unit: :func:`context_moments` computes the moments of
every context of a batch in one vectorised pass, :func:`merge` (Chan et al.'s pairwise update,
the only merge there is) pools them, and :class:`SurvivalMoments` keeps the pooled total (for r)
and, when asked, one moment set per block of contexts (for the bootstrap). Everything stays on
the device of the features; counts are host integers, so no update waits for the device.

Nothing of shape ``[N, d_sae]`` is held: a batch's float64 temporaries are ``[tokens, d]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BANDS = ("survived", "blurred", "damaged")
#: Default band thresholds: survived ``r > 0.9``, damaged ``r < 0.5``, blurred otherwise.
DEFAULT_SURVIVED_ABOVE = 0.9
DEFAULT_DAMAGED_BELOW = 0.5

#: The constant rule (see :func:`is_constant` and docs/measurement.md).
CONST_REL = 1e-10

MEAN_X, MEAN_Y, M2X, M2Y, CXY = range(5)


# --------------------------------------------------------------------------- rules
def is_constant(m2: Any, n: Any, mean: Any, ref: Any) -> Any:
    """The one constant-feature rule, for the point r and every bootstrap resample alike.

    A feature counts as constant (r = 0) when ``M2 <= CONST_REL * N * (mean^2 + ref^2)``: its
    relative spread is below about 1e-5, where float32 features hold only rounding noise.
    ``ref`` is the all-token mean (for the point r it is the mean itself); float64 pooling of
    moments leaves about 1e-13 of that scale behind, so a truly constant feature is caught
    whichever blocks a resample draws.
    """
    return m2 <= CONST_REL * n * (mean * mean + ref * ref)


def bands(r: np.ndarray, survived_above: float = DEFAULT_SURVIVED_ABOVE,
          damaged_below: float = DEFAULT_DAMAGED_BELOW) -> np.ndarray:
    """Band name per feature: survived ``r > survived_above``, else damaged ``r < damaged_below``,
    else blurred."""
    r = np.asarray(r)
    return np.where(r > survived_above, BANDS[0], np.where(r < damaged_below, BANDS[2], BANDS[1]))


def band_fractions(r: np.ndarray, survived_above: float = DEFAULT_SURVIVED_ABOVE,
                   damaged_below: float = DEFAULT_DAMAGED_BELOW) -> dict[str, np.ndarray]:
    """Fractions of the columns of ``r [..., d]`` in each band (over the last axis), as :func:`bands`."""
    r = np.asarray(r)
    d = r.shape[-1]
    surv = r > survived_above
    dam = (r < damaged_below) & ~surv
    return {"survived": surv.sum(-1) / d, "blurred": (~surv & ~dam).sum(-1) / d, "damaged": dam.sum(-1) / d}


# --------------------------------------------------------------------------- moments
def merge(n_a: Any, a: Any, n_b: Any, b: Any) -> tuple[Any, Any]:
    """Chan et al.'s pairwise merge of moment sets ``a``, ``b`` ``[..., 5, d]`` with counts.

    Counts are numbers or numpy arrays shaped like the leading dimensions (host values: no
    device synchronisation); ``n_a`` may be 0 when ``a`` is all zeros (an empty set).
    """
    import torch

    n_a = np.asarray(n_a, dtype=np.float64)
    n_b = np.asarray(n_b, dtype=np.float64)
    n = n_a + n_b
    f = _col(n_b / n, a)
    w = _col(n_a * n_b / n, a)
    dx = b[..., MEAN_X, :] - a[..., MEAN_X, :]
    dy = b[..., MEAN_Y, :] - a[..., MEAN_Y, :]
    out = torch.empty_like(a)
    torch.addcmul(a[..., MEAN_X, :], dx, f, out=out[..., MEAN_X, :])
    torch.addcmul(a[..., MEAN_Y, :], dy, f, out=out[..., MEAN_Y, :])
    torch.add(a[..., M2X:, :], b[..., M2X:, :], out=out[..., M2X:, :])
    dxw = dx * w
    out[..., M2X, :].addcmul_(dxw, dx)
    out[..., M2Y, :].addcmul_(dy * w, dy)
    out[..., CXY, :].addcmul_(dxw, dy)
    return (float(n) if n.ndim == 0 else n), out


def _col(v: np.ndarray, like: Any) -> Any:
    """A host array of per-set factors as a tensor that broadcasts over ``[..., d]``."""
    import torch

    if v.ndim == 0:
        return torch.tensor(float(v), dtype=like.dtype, device=like.device)
    return torch.as_tensor(v, dtype=like.dtype).to(like.device).unsqueeze(-1)


def merge_all(counts: Sequence[int], m: Any) -> tuple[float, Any]:
    """Pool ``len(counts)`` moment sets ``m [C, 5, d]`` into one ``[5, d]`` (pairwise tree of merges)."""
    n = np.asarray(counts, dtype=np.float64)
    while len(n) > 1:
        k = len(n) // 2
        merged_n, merged = merge(n[0:2 * k:2], m[0:2 * k:2], n[1:2 * k:2], m[1:2 * k:2])
        if len(n) % 2:
            import torch

            merged_n, merged = np.append(merged_n, n[-1]), torch.cat([merged, m[-1:]])
        n, m = merged_n, merged
    return float(n[0]), m[0]


#: On the CPU, batches whose FP-or-compressed nonzeros are at most this fraction of the entries
#: take the sparse path of :func:`context_moments` (SAE features are mostly exact zeros). Tests
#: set it to 0 or 1 to run one path or the other.
SPARSE_MAX_DENSITY = 0.25


def context_moments(x: Any, y: Any, sizes: Sequence[int]) -> tuple[list[int], Any]:
    """Moments of every non-empty context of one batch: ``(counts, m [C, 5, d])`` in float64.

    ``x``, ``y`` are ``[tokens, d]`` (any float dtype, any device); context ``i`` owns the next
    ``sizes[i]`` rows. Each context is shifted by its own first row ``s``; the sums of the shifted
    values, squares and products of all contexts are taken at once (``index_add_`` by context
    id), and with that shift ``sum (x - s)^2 <= (n + 1) M2``, so turning the sums into centred
    moments loses at most ``log2(n + 1)`` bits: centred accuracy without a second pass.

    Two ways to the same sums (equal up to float64 summation order): dense, over every entry
    copied to float64 (any device); and, on the CPU when at most ``SPARSE_MAX_DENSITY`` of the
    entries are nonzero in ``x`` or ``y``, sparse: only those entries are summed and the rows
    where both are exactly 0 (whose shifted values are ``-s_x``, ``-s_y``) are added in closed
    form, per context and feature, from their count.
    """
    import torch

    sizes = [int(s) for s in sizes]
    if sum(sizes) != x.shape[0] or tuple(x.shape) != tuple(y.shape) or x.dim() != 2:
        raise ValueError(f"expected two [tokens, d] tensors with sum(context_sizes) = {sum(sizes)} rows, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    counts = [s for s in sizes if s > 0]
    c, d, dev = len(counts), x.shape[1], x.device
    f64 = torch.float64
    out = torch.empty((c, 5, d), dtype=f64, device=dev)
    if c == 0:
        return [], out
    starts = np.cumsum([0] + counts[:-1]).tolist()
    ctx = _context_index(tuple(counts), dev)
    first = torch.as_tensor(starts, dtype=torch.long).to(dev)
    out[:, MEAN_X] = x.index_select(0, first)
    out[:, MEAN_Y] = y.index_select(0, first)
    n = _col(np.asarray(counts, dtype=np.float64), out)  # [C, 1]
    sums = None
    if dev.type == "cpu" and SPARSE_MAX_DENSITY > 0:
        sums = _sparse_sums(x, y, ctx, out[:, MEAN_X], out[:, MEAN_Y], n)
    if sums is None:
        sums = _dense_sums(x, y, ctx, out)
    # mean = s + S1/n; M2 = S2 - S1^2/n; C = Sxy - S1x S1y / n
    tx, ty = sums[MEAN_X] / n, sums[MEAN_Y] / n
    out[:, MEAN_X] += tx
    out[:, MEAN_Y] += ty
    out[:, M2X] = torch.addcmul(sums[M2X], tx, sums[MEAN_X], value=-1)
    out[:, M2Y] = torch.addcmul(sums[M2Y], ty, sums[MEAN_Y], value=-1)
    out[:, CXY] = torch.addcmul(sums[CXY], tx, sums[MEAN_Y], value=-1)
    out[:, M2X:M2Y + 1].clamp_(min=0.0)
    return counts, out


def _dense_sums(x: Any, y: Any, ctx: Any, out: Any) -> Any:
    """``[5, C, d]``: per context the sums of ``x - s``, ``y - s``, their squares and product, over every row."""
    import torch

    c, d = out.shape[0], x.shape[1]
    sums = torch.zeros((5, c, d), dtype=torch.float64, device=x.device)
    shifted = []
    for k, v in ((MEAN_X, x), (MEAN_Y, y)):
        dv = torch.sub(v, out[:, k].index_select(0, ctx))  # float64: each row minus its context's shift, one launch
        sums[k].index_add_(0, ctx, dv)
        shifted.append(dv)
    dx, dy = shifted
    sums[CXY].index_add_(0, ctx, dx * dy)
    sums[M2X].index_add_(0, ctx, dx.square_())
    sums[M2Y].index_add_(0, ctx, dy.square_())
    return sums


def _sparse_sums(x: Any, y: Any, ctx: Any, sx: Any, sy: Any, n: Any) -> Any:
    """The sums of :func:`_dense_sums` from the entries nonzero in ``x`` or ``y`` (None when too dense).

    Per context and feature, the ``rest`` rows where both are 0 add ``-rest s_x`` and
    ``-rest s_y`` to the sums, ``rest s_x^2``, ``rest s_y^2`` to the squares and ``rest s_x s_y``
    to the product.
    """
    import torch

    c, d = sx.shape
    mask = (x != 0) | (y != 0)
    nnz = int(torch.count_nonzero(mask))
    if nnz > SPARSE_MAX_DENSITY * mask.numel():
        return None
    flat = mask.reshape(-1).nonzero().squeeze(1)
    del mask
    g = ctx.index_select(0, flat // d) * d + flat % d  # context * d + feature
    dx = x.reshape(-1).index_select(0, flat).to(torch.float64) - sx.reshape(-1).index_select(0, g)
    dy = y.reshape(-1).index_select(0, flat).to(torch.float64) - sy.reshape(-1).index_select(0, g)
    sums = torch.zeros((5, c * d), dtype=torch.float64)
    sums[MEAN_X].index_add_(0, g, dx)
    sums[MEAN_Y].index_add_(0, g, dy)
    sums[CXY].index_add_(0, g, dx * dy)
    sums[M2X].index_add_(0, g, dx * dx)
    sums[M2Y].index_add_(0, g, dy * dy)
    sums = sums.view(5, c, d)
    rest = n - torch.bincount(g, minlength=c * d).view(c, d).to(torch.float64)  # rows with both 0
    sums[MEAN_X].sub_(rest * sx)
    sums[MEAN_Y].sub_(rest * sy)
    sums[M2X].addcmul_(rest * sx, sx)
    sums[M2Y].addcmul_(rest * sy, sy)
    sums[CXY].addcmul_(rest * sx, sy)
    return sums


_INDEX_CACHE: dict[tuple[Any, tuple[int, ...]], Any] = {}


def _context_index(counts: tuple[int, ...], device: Any) -> Any:
    """Context id per row ``[tokens]`` on ``device`` (cached: most batches share one layout)."""
    import torch

    key = (str(device), counts)
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)
        _INDEX_CACHE[key] = idx
    return idx


def pearson(n: Any, m: Any, ref_x: Any = None, ref_y: Any = None) -> tuple[Any, Any, Any]:
    """``(r, constant_x, constant_y)`` from pooled moments ``m [..., 5, d]`` with ``n`` tokens.

    ``ref_x``, ``ref_y``: the all-token means for the constant rule (default: the means in ``m``).
    r is clamped to [-1, 1] and 0 where either side is constant.
    """
    import torch

    mx, my = m[..., MEAN_X, :], m[..., MEAN_Y, :]
    const_x = is_constant(m[..., M2X, :], n, mx, mx if ref_x is None else ref_x)
    const_y = is_constant(m[..., M2Y, :], n, my, my if ref_y is None else ref_y)
    const = const_x | const_y
    denom = torch.where(const, 1.0, m[..., M2X, :] * m[..., M2Y, :]).sqrt_()
    r = torch.where(const, 0.0, m[..., CXY, :] / denom).clamp_(-1.0, 1.0)
    return r, const_x, const_y


# --------------------------------------------------------------------------- the accumulator
class SurvivalMoments:
    """The one accumulator: per-context float64 moments of FP ``x`` and compressed ``y``.

    :meth:`update` takes one batch (its rows split by ``context_sizes``); the pooled total gives
    r, and with ``max_blocks`` set every block of contexts keeps its own moment set for the
    bootstrap. A block is one context until ``max_blocks`` blocks exist; then neighbouring
    blocks are merged pairwise (0+1, 2+3, ...) and each later block takes twice as many
    contexts, so blocks stay equal in size and depend only on the order of the contexts.
    """

    def __init__(self, d: int, max_blocks: int | None = 256):
        if max_blocks is not None and (max_blocks < 2 or max_blocks % 2):
            raise ValueError(f"max_blocks must be an even number >= 2, got {max_blocks}")
        self.d = int(d)
        self.n = 0.0
        self.total: Any = None
        self.max_blocks = max_blocks
        self.contexts_per_block = 1
        self._counts: list[float] = []
        self._moments: list[Any] = []
        self._pending: tuple[float, Any] | None = None
        self._pending_contexts = 0

    def update(self, x: Any, y: Any, context_sizes: Sequence[int]) -> None:
        """Add one batch: ``x``, ``y`` ``[tokens, d]``, ``context_sizes`` rows per context, in order."""
        if x.dim() != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected [tokens, {self.d}] features, got {tuple(x.shape)}")
        counts, m = context_moments(x.detach(), y.detach(), context_sizes)
        if not counts:
            return
        n_b, total_b = merge_all(counts, m)
        if self.total is None:
            self.n, self.total = n_b, total_b.clone()
        else:
            self.n, self.total = merge(self.n, self.total, n_b, total_b)
        if self.max_blocks is not None:
            self._add_blocks(counts, m)

    # ------------------------------------------------------------------ blocks
    def _add_blocks(self, counts: list[int], m: Any) -> None:
        i = 0
        while i < len(counts):
            room = self.max_blocks - len(self._moments)
            if self.contexts_per_block == 1 and self._pending is None and room > 0:
                take = min(room, len(counts) - i)  # one block per context: take them all at once
                self._counts.extend(float(c) for c in counts[i:i + take])
                self._moments.extend(m[i:i + take].unbind(0))
                i += take
                continue
            n_c, m_c = float(counts[i]), m[i]
            self._pending = (n_c, m_c) if self._pending is None else merge(*self._pending, n_c, m_c)
            self._pending_contexts += 1
            if self._pending_contexts >= self.contexts_per_block:
                if len(self._moments) >= self.max_blocks:
                    self._pair_merge()
                self._counts.append(self._pending[0])
                self._moments.append(self._pending[1])
                self._pending, self._pending_contexts = None, 0
            i += 1

    def _pair_merge(self) -> None:
        """Merge neighbouring blocks pairwise, a few pairs at a time (no stacked copy of all blocks)."""
        import torch

        k = len(self._moments) // 2
        counts, moments = [], []
        step = 16  # pairs per merge: [32, 5, d] staged at once, old blocks released as they merge
        for s in range(0, k, step):
            e = min(k, s + step)
            stacked = torch.stack(self._moments[2 * s:2 * e])
            n = np.asarray(self._counts[2 * s:2 * e])
            self._moments[2 * s:2 * e] = [None] * (2 * (e - s))
            n_m, merged = merge(n[0::2], stacked[0::2], n[1::2], stacked[1::2])
            del stacked
            counts.extend(n_m)
            moments.extend(merged.unbind(0))
        if len(self._moments) % 2:
            counts.append(self._counts[-1])
            moments.append(self._moments[-1])
        self._counts, self._moments = counts, moments
        self.contexts_per_block *= 2

    def blocks(self, columns: Any = None, planes: Sequence[int] | None = None) -> tuple[np.ndarray, Any]:
        """``(n [B], moments [B, 5, d'])`` of every block, a trailing partial block included.

        ``columns`` (a boolean mask or index array over the d features) keeps only those columns;
        ``planes`` (indices of the five moments, e.g. ``(MEAN_X, MEAN_Y)``) only those moments.
        """
        import torch

        counts, moments = list(self._counts), list(self._moments)
        if self._pending is not None:
            counts.append(self._pending[0])
            moments.append(self._pending[1])
        dev = self.total.device if self.total is not None else "cpu"
        cols = None
        if columns is not None:
            cols = torch.as_tensor(np.flatnonzero(np.asarray(columns)) if np.asarray(columns).dtype == bool
                                   else np.asarray(columns), dtype=torch.long).to(dev)
        rows = None if planes is None else torch.as_tensor(list(planes), dtype=torch.long).to(dev)
        if not moments:
            width = self.d if cols is None else int(cols.numel())
            return np.zeros(0, dtype=np.int64), torch.zeros((0, 5 if rows is None else len(rows), width),
                                                            dtype=torch.float64)
        if cols is not None:
            moments = [b.index_select(-1, cols) for b in moments]
        if rows is not None:
            moments = [b.index_select(0, rows) for b in moments]
        return np.asarray(counts, dtype=np.int64), torch.stack(moments)

    @property
    def n_blocks(self) -> int:
        return len(self._moments) + int(self._pending is not None)

    @property
    def n_tokens(self) -> int:
        return int(self.n)

    # ------------------------------------------------------------------ results
    def pearson(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(r, constant_x, constant_y)`` per feature over every token, as numpy arrays."""
        if self.total is None:
            z = np.zeros(self.d, dtype=bool)
            return np.zeros(self.d), z, z.copy()
        r, cx, cy = pearson(self.n, self.total)
        return r.cpu().numpy(), cx.cpu().numpy(), cy.cpu().numpy()

    def r(self) -> np.ndarray:
        """Pearson r per feature; 0 where either side is constant (:func:`is_constant`)."""
        return self.pearson()[0]
