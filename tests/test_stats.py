"""Streaming Pearson, FP statistics and explained variance against independent oracles."""
import numpy as np
import pytest
import torch
from scipy import stats

from featsurv.stats import ExplainedVariance, FeatureStats, StreamingPearson


def _stream(x, y, sizes):
    acc = StreamingPearson(x.shape[1], chunk=7)
    start = 0
    for size in sizes:
        acc.update(torch.tensor(x[start:start + size]), torch.tensor(y[start:start + size]))
        start += size
    assert start == x.shape[0]
    return acc


def test_pearson_matches_scipy_on_random_data():
    rng = np.random.default_rng(0)
    n, d = 500, 12
    x = np.maximum(rng.normal(size=(n, d)), 0).astype(np.float32)  # ReLU-like, many zeros
    y = (x + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    acc = _stream(x, y, [1, 99, 150, 250])
    expected = [stats.pearsonr(x[:, j].astype(np.float64), y[:, j].astype(np.float64))[0] for j in range(d)]
    np.testing.assert_allclose(acc.r(), expected, rtol=1e-9, atol=1e-12)


def test_near_constant_feature_matches_scipy():
    rng = np.random.default_rng(1)
    n = 400
    base = 1000.0
    x = (base + 1e-3 * rng.normal(size=(n, 1)))  # large offset, tiny spread: naive sums cancel
    y = (base + 1e-3 * (x - base) + 1e-4 * rng.normal(size=(n, 1)))
    acc = _stream(x, y, [128, 128, 144])
    expected = stats.pearsonr(x[:, 0], y[:, 0])[0]
    assert acc.r()[0] == pytest.approx(expected, abs=1e-6)


def test_constant_compressed_feature_is_silenced_with_r_zero():
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(300, 3)), 0)
    y = x.copy()
    y[:, 1] = 0.0  # silenced
    y[:, 2] = 0.7  # constant non-zero
    acc = _stream(x, y, [100, 200])
    r = acc.r()
    assert r[0] == pytest.approx(1.0)
    assert r[1] == 0.0 and r[2] == 0.0
    assert acc.constant_y().tolist() == [False, True, True]


def test_feature_stats_and_explained_variance_against_numpy():
    rng = np.random.default_rng(3)
    f = np.maximum(rng.normal(size=(200, 5)), 0)
    fs = FeatureStats(5)
    fs.update(torch.tensor(f[:50]))
    fs.update(torch.tensor(f[50:]))
    out = fs.result()
    np.testing.assert_allclose(out["firing_rate"], (f > 0).mean(0))
    np.testing.assert_allclose(out["mean_act"], f.mean(0))
    np.testing.assert_allclose(out["peak_act"], f.max(0))

    x = rng.normal(size=(200, 4)) + 5
    x_hat = x + 0.5 * rng.normal(size=(200, 4))
    ev = ExplainedVariance(4)
    ev.update(torch.tensor(x[:80]), torch.tensor(x_hat[:80]))
    ev.update(torch.tensor(x[80:]), torch.tensor(x_hat[80:]))
    expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev.result() == pytest.approx(expected, rel=1e-10)
