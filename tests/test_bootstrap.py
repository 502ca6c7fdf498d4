"""Block bootstrap of the band fractions, against a brute-force token-level oracle."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from featsurv.bootstrap import (BlockMoments, band_fractions, bootstrap_band_ci, merge_moments,
                                resample_indices)


def _make_blocks(seed: int = 1, d: int = 12, n_blocks: int = 9):
    """Blocks of FP/compressed features with every awkward case the metric meets."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for b in range(n_blocks):
        t = int(rng.integers(5, 40))
        x = np.maximum(rng.normal(0.0, 1.0, size=(t, d)), 0.0) * rng.uniform(0.5, 3.0, size=d)
        noise = rng.normal(0.0, 1.0, size=(t, d)) * np.linspace(0.0, 2.5, d)
        y = np.maximum(x + noise, 0.0)
        # column 0: rare, fires in block 0 only (all-zero in most resamples' other blocks)
        x[:, 0] = 0.0
        y[:, 0] = 0.0
        if b == 0:
            x[:2, 0] = [1.5, 0.25]
            y[:2, 0] = [1.0, 0.5]
        # column 1: silenced (compressed constant 0 everywhere)
        y[:, 1] = 0.0
        # column 2: compressed constant non-zero everywhere
        y[:, 2] = 0.7
        # column 3: large offset, small spread (cancellation check)
        x[:, 3] = 1e4 + rng.normal(size=t)
        y[:, 3] = 1e4 + x[:, 3] - 1e4 + 0.3 * rng.normal(size=t)
        # column 4: anti-correlated
        y[:, 4] = -x[:, 4]
        xs.append(x.astype(np.float32).astype(np.float64))
        ys.append(y.astype(np.float32).astype(np.float64))
    return xs, ys


def _pearson_or_zero(x, y):
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(scipy.stats.pearsonr(x, y)[0])


def _oracle_r(xs, ys, idx_row):
    x = np.concatenate([xs[i] for i in idx_row])
    y = np.concatenate([ys[i] for i in idx_row])
    return np.array([_pearson_or_zero(x[:, j], y[:, j]) for j in range(x.shape[1])])


def test_merge_matches_direct_moments():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(11, 3))
    bm = BlockMoments(3, chunk_rows=4)   # chunked inside one block: merges chunk moments
    bm.update(np.vstack([a, b]), np.vstack([a, b]) * 2 + 1)
    n, m = bm.blocks()
    full = np.vstack([a, b])
    assert n.tolist() == [18]
    np.testing.assert_allclose(m[0, 0], full.mean(0))
    np.testing.assert_allclose(m[0, 2], ((full - full.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(m[0, 4], ((full - full.mean(0)) * (2 * full + 1 - (2 * full + 1).mean(0))).sum(0))
    n2, mm = merge_moments(0, np.zeros((5, 3)), 4, m[0])
    assert n2 == 4 and np.array_equal(mm, m[0])


def test_full_data_r_matches_scipy():
    xs, ys = _make_blocks()
    bm = BlockMoments(xs[0].shape[1])
    for x, y in zip(xs, ys):
        bm.update(x, y)
    assert bm.n_blocks == len(xs)
    expected = _oracle_r(xs, ys, range(len(xs)))
    np.testing.assert_allclose(bm.r(), expected, atol=1e-9)
    assert bm.r()[1] == 0.0 and bm.r()[2] == 0.0


def test_torch_input_same_as_numpy():
    torch = pytest.importorskip("torch")
    xs, ys = _make_blocks(d=6, n_blocks=3)
    a, b = BlockMoments(6), BlockMoments(6)
    for x, y in zip(xs, ys):
        a.update(x, y)
        b.update(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    np.testing.assert_allclose(a.blocks()[1], b.blocks()[1], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("chunk_elements", [4_000_000, 25])  # one chunk, and many small chunks
def test_bootstrap_matches_token_level_oracle(chunk_elements):
    xs, ys = _make_blocks()
    d = xs[0].shape[1]
    bm = BlockMoments(d)
    for x, y in zip(xs, ys):
        bm.update(x, y)
    active = np.ones(d, dtype=bool)
    active[5] = False
    n_res, seed = 60, 3
    ci = bootstrap_band_ci(bm, active, n_resamples=n_res, seed=seed, level=0.9, chunk_elements=chunk_elements)
    idx = resample_indices(len(xs), n_res, seed)
    fr = {b: [] for b in ("survived", "blurred", "damaged")}
    for row in idx:
        r = _oracle_r(xs, ys, row)[active]
        for b, v in band_fractions(r).items():
            fr[b].append(float(v))
    for b in fr:
        lo, hi = np.quantile(fr[b], [0.05, 0.95])
        assert ci[b] == pytest.approx([lo, hi], abs=1e-12), b
    assert ci["n_blocks"] == len(xs) and ci["n_resamples"] == n_res


def test_interval_brackets_point_and_is_deterministic():
    xs, ys = _make_blocks(seed=5, d=30, n_blocks=20)
    bm = BlockMoments(30)
    for x, y in zip(xs, ys):
        bm.update(x, y)
    active = np.ones(30, dtype=bool)
    a = bootstrap_band_ci(bm, active, n_resamples=200, seed=0)
    b = bootstrap_band_ci(bm, active, n_resamples=200, seed=0)
    assert a == b
    for band in ("survived", "blurred", "damaged"):
        assert 0.0 <= a[band][0] <= a[band][1] <= 1.0


def test_pair_merge_when_full_keeps_totals():
    rng = np.random.default_rng(2)
    d = 4
    bm = BlockMoments(d, max_blocks=4)
    batches = [(rng.normal(size=(5 + i, d)), rng.normal(size=(5 + i, d))) for i in range(11)]
    for x, y in batches:
        bm.update(x, y)
    # 11 calls with max 4 blocks: blocks of 4 calls, then a pending partial block of 3 calls
    assert bm.calls_per_block == 4
    n, m = bm.blocks()
    assert len(n) <= 4 + 1
    assert n.sum() == sum(x.shape[0] for x, _ in batches) == bm.n_tokens
    x = np.vstack([b[0] for b in batches])
    y = np.vstack([b[1] for b in batches])
    expected = [scipy.stats.pearsonr(x[:, j], y[:, j])[0] for j in range(d)]
    np.testing.assert_allclose(bm.r(), expected, atol=1e-12)
    # deterministic: the same calls give the same blocks
    bm2 = BlockMoments(d, max_blocks=4)
    for xx, yy in batches:
        bm2.update(xx, yy)
    assert np.array_equal(bm2.blocks()[1], m)


def test_degenerate_cases():
    bm = BlockMoments(3)
    bm.update(np.ones((4, 3)), np.ones((4, 3)))
    out = bootstrap_band_ci(bm, np.ones(3, dtype=bool))
    assert out["n_resamples"] == 0 and "block" in out["note"]
    assert all(np.isnan(v) for v in out["survived"])
    bm.update(np.ones((4, 3)), np.ones((4, 3)))
    out = bootstrap_band_ci(bm, np.zeros(3, dtype=bool))
    assert out["note"] == "no active features"
    with pytest.raises(ValueError):
        bm.update(np.ones((4, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError):
        BlockMoments(3, max_blocks=3)
