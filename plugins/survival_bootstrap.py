"""Confidence intervals for the band fractions, by resampling blocks of contexts.

Tokens inside one context are strongly dependent, so resampling single tokens would give
intervals that are far too narrow. :class:`~featsurv_plugins.survival_numerics.SurvivalMoments`
keeps one float64 moment set per block of contexts; a resample draws ``n_blocks`` blocks with
replacement, and its per-feature r follows exactly from the drawn blocks' moments, so no token
is ever stored. The constant rule and the r formula are the point r's own
(:func:`~featsurv_plugins.survival_numerics.is_constant`), so r and its interval cannot disagree.

Cost: one float64 matrix product ``weights [R, B] @ P [B, 5 d']`` (``d'`` active features)
and about twenty in-place element-wise operations per ``[R, d']`` chunk; chunks are sized to
stay in the CPU's cache (``chunk_elements``), or large on an accelerator.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .survival_numerics import (BANDS, CONST_REL, CXY, DEFAULT_DAMAGED_BELOW, DEFAULT_SURVIVED_ABOVE, M2X,
                                M2Y, MEAN_X, MEAN_Y, SurvivalMoments)


def resample_indices(n_blocks: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """The drawn block indices ``[n_resamples, n_blocks]`` (with replacement) for a seed.

    Public so that a check can rebuild exactly the same resamples token by token.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_blocks, size=(n_resamples, n_blocks))


def resample_weights(idx: np.ndarray) -> np.ndarray:
    """How often each block is drawn: ``[R, B]`` float64 from the indices ``[R, B]``."""
    rows, n_blocks = idx.shape
    flat = (np.arange(rows)[:, None] * n_blocks + idx).ravel()
    return np.bincount(flat, minlength=rows * n_blocks).reshape(rows, n_blocks).astype(np.float64)


def _shifts(nf: Any, total: float, means: Any) -> tuple[Any, Any]:
    """The all-block means of x and y (``nf [B]`` block token counts as float64 on the device,
    ``means [B, 2, d']`` the blocks' MEAN_X and MEAN_Y)."""
    return (nf @ means[:, 0]) / total, (nf @ means[:, 1]) / total


def _pooling_terms(nf: Any, m: Any, shift_x: Any, shift_y: Any) -> Any:
    """Per-block terms ``P [B, 5, d']`` whose weighted sums give every resample's moments.

    Means are taken around the all-block mean ``shift`` (:func:`_shifts`, which keeps the sums of
    squares free of cancellation): with ``a_b = mean_b - shift``, a resample with block weights
    ``w`` has ``S0 = sum w n a_x``, ``S2 = sum w (M2x_b + n a_x^2)``, ``S4 = sum w (Cxy_b + n a_x
    a_y)`` (and likewise for y), so ``mean = shift + S0/N``, ``M2x = S2 - S0^2/N``, ``Cxy = S4 -
    S0 S1/N``. ``m`` and the shifts may be any slice of the features' columns.
    """
    import torch

    ax, ay = m[:, MEAN_X] - shift_x, m[:, MEAN_Y] - shift_y
    nax, nay = ax * nf[:, None], ay * nf[:, None]
    return torch.stack([nax, nay, torch.addcmul(m[:, M2X], nax, ax), torch.addcmul(m[:, M2Y], nay, ay),
                        torch.addcmul(m[:, CXY], nax, ay)], dim=1)


#: Elements of one slice of the pooling terms ``[B, 5, w]`` built at a time (32 MiB of float64):
#: the bootstrap's memory stays bounded by this, not by blocks x active features.
POOL_SLICE_ELEMENTS = 1 << 22


def _count_bands(s: Any, shift_x: Any, shift_y: Any, survived_above: float, damaged_below: float,
                 buf: Any) -> tuple[Any, Any, Any]:
    """Per-resample counts of survived, damaged and FP-constant features from the sums ``s [R, 5, w]``.

    A feature whose FP values are constant in a resample (a rare feature none of whose firing
    contexts was drawn) has no r there: it is left out of that resample's fractions, not counted
    as damaged. A feature whose compressed values are constant while its FP values vary is r = 0
    (silenced), as in the point r.

    The block weights were divided by each resample's token count N, so ``s`` holds the sums
    over N: ``s0 = mean_x - shift_x``, ``s2 = (M2x + N (mean_x - shift_x)^2) / N``, and so on; r
    is unchanged by the common 1/N. ``s`` is consumed (overwritten in place). The constant rule
    is :func:`~featsurv_plugins.survival_numerics.is_constant` divided by N:
    ``M2/N - CONST_REL mean^2 <= CONST_REL shift^2``.
    """
    import torch

    tx, ty, m2x, m2y, cxy = s.unbind(1)
    m2x.addcmul_(tx, tx, value=-1)
    m2y.addcmul_(ty, ty, value=-1)
    cxy.addcmul_(tx, ty, value=-1)
    consts = []
    for t, shift, m2 in ((tx, shift_x, m2x), (ty, shift_y, m2y)):
        mean = t.add_(shift)
        torch.addcmul(m2, mean, mean, value=-CONST_REL, out=buf)
        consts.append(buf <= (shift * shift).mul_(CONST_REL))
    fp_const, const = consts[0], consts[1].logical_or_(consts[0])
    r = m2x.mul_(m2y).rsqrt_().mul_(cxy)
    if not (-1.0 < damaged_below and survived_above < 1.0):  # only then can rounding past +-1 matter
        r.clamp_(-1.0, 1.0)
    r.masked_fill_(const, 0.0)
    surv = (r > survived_above).logical_and_(~fp_const)
    dam = (r < damaged_below).logical_and_(~fp_const)
    if damaged_below > survived_above:
        dam &= ~surv
    return surv.sum(1), dam.sum(1), fp_const.sum(1)


def _no_interval(out: dict[str, Any], note: str) -> dict[str, Any]:
    """``out`` with NaN bounds, no resamples and the reason."""
    out.update({b: [float("nan"), float("nan")] for b in BANDS})
    out.update(n_resamples=0, note=note)
    return out


def _default_chunk(device: Any) -> int:
    """Elements per ``[resamples, features]`` plane of a chunk (each chunk holds about eight).

    On the CPU 2**18 (2 MiB per plane): measured fastest on a 2-core EPYC with 8 MiB of L3
    (1000 resamples x 16384 features: 0.62 s at 2**22, 0.42 s at 2**18, 0.44 s at 2**17; the same
    intervals; benchmarks/README.md)."""
    return 1 << 18 if getattr(device, "type", "cpu") == "cpu" else 1 << 25


def bootstrap_band_ci(moments: SurvivalMoments, active: Any, survived_above: float = DEFAULT_SURVIVED_ABOVE,
                      damaged_below: float = DEFAULT_DAMAGED_BELOW, n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, chunk_elements: int | None = None) -> dict[str, Any]:
    """Percentile bootstrap intervals of the survived / blurred / damaged fractions.

    ``active`` is the boolean mask (length d) of the active features, decided once on all FP
    tokens and held fixed across resamples; fractions are over those features. Each resample
    draws ``n_blocks`` blocks with replacement (:func:`resample_indices`); a feature whose
    compressed values are constant in a resample gets r = 0, as the point r does, and one whose FP
    values are constant there (none of its firing blocks drawn) has no r and is left out of that
    resample's fractions (counting it as damaged would pull every interval below the estimate
    when features are rare). Returns ``{"survived": [lo, hi], "blurred": [lo, hi], "damaged":
    [lo, hi], "n_blocks", "n_resamples", "level", "absent"}`` (``absent``: the mean fraction of
    active features left out per resample). With fewer
    than two blocks, or no active feature, no interval can be formed: the bounds are NaN,
    ``n_resamples`` is 0 and ``note`` says why.
    """
    import torch

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
        return _no_interval(out, note)

    cols = np.flatnonzero(active)
    n, means = moments.blocks(cols, planes=(MEAN_X, MEAN_Y))
    dev, d_act = means.device, means.shape[2]
    nf = torch.as_tensor(n, dtype=torch.float64).to(dev)
    shift_x, shift_y = _shifts(nf, float(n.sum()), means)
    del means
    weights = torch.from_numpy(resample_weights(resample_indices(n_blocks, n_resamples, seed))).to(dev)
    weights /= weights @ nf[:, None]  # sums over N
    chunk = chunk_elements or _default_chunk(dev)
    rows = min(n_resamples, max(1, chunk))
    width = max(1, min(d_act, chunk // rows))
    span = width * max(1, POOL_SLICE_ELEMENTS // (5 * n_blocks * width))  # columns per slice of the terms
    surv = torch.zeros(n_resamples, dtype=torch.long, device=dev)
    dam = torch.zeros_like(surv)
    absent = torch.zeros_like(surv)
    buf = torch.empty((rows, width), dtype=torch.float64, device=dev)
    for a in range(0, d_act, span):
        _, m = moments.blocks(cols[a:a + span])
        p = _pooling_terms(nf, m, shift_x[a:a + span], shift_y[a:a + span])
        del m
        for j in range(0, p.shape[2], width):
            pj = p[:, :, j:j + width].reshape(n_blocks, -1)
            w = pj.shape[1] // 5
            lo = a + j
            for i in range(0, n_resamples, rows):
                s = (weights[i:i + rows] @ pj).view(-1, 5, w)
                cs, cd, cc = _count_bands(s, shift_x[lo:lo + w], shift_y[lo:lo + w], survived_above,
                                          damaged_below, buf[:s.shape[0], :w])
                surv[i:i + rows] += cs
                dam[i:i + rows] += cd
                absent[i:i + rows] += cc
        del p
    surv_n, dam_n = surv.cpu().numpy(), dam.cpu().numpy()
    present = d_act - absent.cpu().numpy()  # the active features that have an r in each resample
    keep = present > 0
    out["absent"] = float(np.mean(1.0 - present / d_act))
    if not keep.any():
        return _no_interval(out, "no active feature varies in any resample")
    surv_n, dam_n, present = surv_n[keep], dam_n[keep], present[keep]
    fracs = {"survived": surv_n / present, "blurred": (present - surv_n - dam_n) / present, "damaged": dam_n / present}
    alpha = (1.0 - level) / 2.0
    for b in BANDS:
        lo, hi = np.quantile(fracs[b], [alpha, 1.0 - alpha])
        out[b] = [float(lo), float(hi)]
    return out
