"""Block bootstrap of the band fractions, against a brute-force token-level oracle."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from featsurv_plugins.survival_bootstrap import bootstrap_band_ci, resample_indices
from featsurv_plugins.survival_numerics import SurvivalMoments, band_fractions, context_moments, merge

torch = pytest.importorskip("torch")


def _moments(xs, ys, max_blocks=256):
    """One context per block, one batch per context (the blocks of the old per-call API)."""
    bm = SurvivalMoments(xs[0].shape[1], max_blocks=max_blocks)
    for x, y in zip(xs, ys):
        bm.update(torch.as_tensor(x), torch.as_tensor(y), [x.shape[0]])
    return bm


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


def _centred_ss(a):
    return ((a - a.mean(0)) ** 2).sum(0)


def test_merge_matches_direct_moments():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(11, 3))
    full = np.vstack([a, b])
    bm = SurvivalMoments(3, max_blocks=None)   # two contexts in one batch, pooled
    bm.update(torch.tensor(full), torch.tensor(full * 2 + 1), [7, 11])
    assert bm.n == 18 and bm.n_blocks == 0
    np.testing.assert_allclose(bm.total[0].numpy(), full.mean(0))
    np.testing.assert_allclose(bm.total[2].numpy(), ((full - full.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(bm.total[4].numpy(),
                               ((full - full.mean(0)) * (2 * full + 1 - (2 * full + 1).mean(0))).sum(0))
    counts, m = context_moments(torch.tensor(full), torch.tensor(full * 2 + 1), [7, 11])
    n2, mm = merge(counts[0], m[0], counts[1], m[1])
    assert n2 == 18 and torch.allclose(mm, bm.total, rtol=1e-13, atol=1e-13)


def test_full_data_r_matches_scipy():
    xs, ys = _make_blocks()
    bm = _moments(xs, ys)
    assert bm.n_blocks == len(xs)
    expected = _oracle_r(xs, ys, range(len(xs)))
    np.testing.assert_allclose(bm.r(), expected, atol=1e-9)
    assert bm.r()[1] == 0.0 and bm.r()[2] == 0.0


def test_float32_input_same_as_float64():
    xs, ys = _make_blocks(d=6, n_blocks=3)
    a = _moments(xs, ys)
    b = _moments([x.astype(np.float32) for x in xs], [y.astype(np.float32) for y in ys])
    np.testing.assert_allclose(a.blocks()[1].numpy(), b.blocks()[1].numpy(), rtol=1e-12, atol=1e-9)


def test_point_r_and_interval_share_the_constant_rule():
    """A compressed feature constant up to float noise is r = 0 in the point r and in every resample."""
    rng = np.random.default_rng(4)
    xs, ys = [], []
    for _ in range(12):
        x = np.maximum(rng.normal(size=(40, 2)), 0)
        y = x.copy()
        y[:, 1] = 3.0 * (1 + 1e-8 * rng.normal(size=40))  # relative spread 1e-8: noise, not signal
        xs.append(x)
        ys.append(y)
    bm = _moments(xs, ys)
    r, _, silenced = bm.pearson()
    assert r[1] == 0.0 and silenced.tolist() == [False, True]
    ci = bootstrap_band_ci(bm, np.array([False, True]), n_resamples=50)
    assert ci["damaged"] == [1.0, 1.0] and ci["survived"] == [0.0, 0.0]
    ci = bootstrap_band_ci(bm, np.array([True, False]), n_resamples=50)
    assert ci["survived"] == [1.0, 1.0]


@pytest.mark.parametrize("chunk_elements", [4_000_000, 25])  # one chunk, and many small chunks
def test_bootstrap_matches_token_level_oracle(chunk_elements):
    xs, ys = _make_blocks()
    d = xs[0].shape[1]
    bm = _moments(xs, ys)
    active = np.ones(d, dtype=bool)
    active[5] = False
    n_res, seed = 60, 3
    ci = bootstrap_band_ci(bm, active, n_resamples=n_res, seed=seed, level=0.9, chunk_elements=chunk_elements)
    idx = resample_indices(len(xs), n_res, seed)
    fr = {b: [] for b in ("survived", "blurred", "damaged")}
    absent = []
    for row in idx:
        x = np.concatenate([xs[i] for i in row])[:, active]
        has_r = ~np.all(x == x[0], axis=0)  # a feature constant in the FP resample has no r: left out
        absent.append(1.0 - has_r.mean())
        r = _oracle_r(xs, ys, row)[active][has_r]
        for b, v in band_fractions(r).items():
            fr[b].append(float(v))
    assert 0 < np.mean(absent) < 1  # the rare column 0 is missing from most resamples
    assert ci["absent"] == pytest.approx(np.mean(absent), abs=1e-12)
    for b in fr:
        lo, hi = np.quantile(fr[b], [0.05, 0.95])
        assert ci[b] == pytest.approx([lo, hi], abs=1e-12), b
    assert ci["n_blocks"] == len(xs) and ci["n_resamples"] == n_res


def test_interval_brackets_point_and_is_deterministic():
    xs, ys = _make_blocks(seed=5, d=30, n_blocks=20)
    bm = _moments(xs, ys)
    active = np.ones(30, dtype=bool)
    a = bootstrap_band_ci(bm, active, n_resamples=200, seed=0)
    b = bootstrap_band_ci(bm, active, n_resamples=200, seed=0)
    assert a == b
    for band in ("survived", "blurred", "damaged"):
        assert 0.0 <= a[band][0] <= a[band][1] <= 1.0


def test_pair_merge_when_full_keeps_totals():
    rng = np.random.default_rng(2)
    d = 4
    batches = [(rng.normal(size=(5 + i, d)), rng.normal(size=(5 + i, d))) for i in range(11)]
    bm = _moments([b[0] for b in batches], [b[1] for b in batches], max_blocks=4)
    # contexts of 5..15 tokens, at most 4 blocks: [5 6 7 8] -> the 5th context merges pairs
    # ([11 15] + [9]); contexts 6+7 form a block of two ([11 15 9 21]); the 9th context's block
    # merges pairs again ([26 30] + [12+13]); contexts 10 and 11 wait in a partial block
    assert bm.contexts_per_block == 4
    n, m = bm.blocks()
    assert n.tolist() == [26, 30, 25, 29]
    assert n.sum() == sum(x.shape[0] for x, _ in batches) == bm.n_tokens
    x = np.vstack([b[0] for b in batches])
    y = np.vstack([b[1] for b in batches])
    expected = [scipy.stats.pearsonr(x[:, j], y[:, j])[0] for j in range(d)]
    np.testing.assert_allclose(bm.r(), expected, atol=1e-12)
    # each block holds exactly its contexts' moments
    np.testing.assert_allclose(m[0, 0].numpy(), np.vstack([b[0] for b in batches[:4]]).mean(0), rtol=1e-12)
    np.testing.assert_allclose(m[3, 2].numpy(), _centred_ss(np.vstack([b[0] for b in batches[9:]])), rtol=1e-12)
    # the same contexts in other batches give the same blocks
    bm2 = SurvivalMoments(d, max_blocks=4)
    for k in range(0, 11, 3):
        part = batches[k:k + 3]
        bm2.update(torch.tensor(np.vstack([p[0] for p in part])), torch.tensor(np.vstack([p[1] for p in part])),
                   [p[0].shape[0] for p in part])
    assert bm2.blocks()[0].tolist() == n.tolist()
    np.testing.assert_allclose(bm2.blocks()[1].numpy(), m.numpy(), rtol=1e-12, atol=1e-12)


def test_pair_merge_in_slices_equals_one_merge_of_all_blocks():
    """The blocks are merged a few pairs at a time (memory); the result is the one stacked merge's."""
    rng = np.random.default_rng(4)
    d, max_blocks = 6, 40  # 40 blocks, 20 pairs: merged in slices of 16 and 4 pairs when the 41st context comes
    xs = [rng.normal(size=(3 + i % 5, d)) for i in range(max_blocks + 1)]
    ys = [x + rng.normal(size=x.shape) for x in xs]
    full = _moments(xs[:max_blocks], ys[:max_blocks], max_blocks=max_blocks)
    n_before, m_before = full.blocks()
    full.update(torch.as_tensor(xs[-1]), torch.as_tensor(ys[-1]), [xs[-1].shape[0]])
    n_want, m_want = merge(n_before[0::2].astype(float), m_before[0::2], n_before[1::2].astype(float), m_before[1::2])
    n_got, m_got = full.blocks()
    assert full.contexts_per_block == 2 and n_got[:-1].tolist() == n_want.tolist()
    assert torch.equal(m_got[:-1], m_want)  # bit for bit


@pytest.mark.parametrize("slice_elements", [1, 5 * 9 * 3, 1 << 22])  # one column, 3 columns, all at once
def test_bootstrap_in_slices_of_the_pooling_terms_gives_the_same_intervals(monkeypatch, slice_elements):
    from featsurv_plugins import survival_bootstrap

    xs, ys = _make_blocks(seed=6, d=23, n_blocks=9)
    bm = _moments(xs, ys)
    active = np.ones(23, dtype=bool)
    active[[5, 11]] = False
    want = bootstrap_band_ci(bm, active, n_resamples=80, seed=2, chunk_elements=80 * 2)
    monkeypatch.setattr(survival_bootstrap, "POOL_SLICE_ELEMENTS", slice_elements)
    got = bootstrap_band_ci(bm, active, n_resamples=80, seed=2, chunk_elements=80 * 2)
    assert got == want


def test_degenerate_cases():
    bm = SurvivalMoments(3)
    bm.update(torch.ones(4, 3), torch.ones(4, 3), [4])
    out = bootstrap_band_ci(bm, np.ones(3, dtype=bool))
    assert out["n_resamples"] == 0 and "block" in out["note"]
    assert all(np.isnan(v) for v in out["survived"])
    bm.update(torch.ones(4, 3), torch.ones(4, 3), [4])
    out = bootstrap_band_ci(bm, np.zeros(3, dtype=bool))
    assert out["note"] == "no active features"
    with pytest.raises(ValueError):
        bootstrap_band_ci(bm, np.ones(2, dtype=bool))
    with pytest.raises(ValueError):
        bootstrap_band_ci(bm, np.ones(3, dtype=bool), level=1.0)


# --------------------------------------------------------------------------- pinned output
def _golden_batches(seed=11, d=200, n_batches=12, per_batch=3, lo=20, hi=64):
    """Batches ``(context_sizes, fp, compressed)`` (float32) with the awkward columns of a real audit."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        sizes = [0 if (b, c) == (4, 1) else int(rng.integers(lo, hi)) for c in range(per_batch)]
        t = sum(sizes)
        scale = rng.uniform(0.5, 3.0, size=d)
        x = np.maximum(rng.normal(-0.3, 1.0, size=(t, d)), 0.0) * scale
        noise = rng.normal(0.0, 1.0, size=(t, d)) * np.linspace(0.0, 3.0, d)
        y = np.maximum(x + noise, 0.0)
        x[:, 0] = 0.0
        y[:, 0] = 0.0
        if b == 0:  # column 0: rare, fires in the first batch only
            x[:3, 0] = [1.5, 0.25, 2.0]
            y[:3, 0] = [1.0, 0.5, 1.5]
        y[:, 1] = 0.0  # silenced
        y[:, 2] = 0.7  # compressed constant non-zero
        x[:, 3] = 1e4 + rng.normal(size=t)  # large offset, small spread
        y[:, 3] = x[:, 3] + 0.3 * rng.normal(size=t)
        y[:, 4] = np.maximum(2.0 - x[:, 4], 0)  # anti-correlated
        out.append((sizes, x.astype(np.float32), y.astype(np.float32)))
    return out


def _run_survival(data, n_resamples, seed):
    torch = pytest.importorskip("torch")
    from featsurv import Batch
    from featsurv_plugins.metric_survival import SurvivalAccumulator

    d = data[0][1].shape[1]
    acc = SurvivalAccumulator(d, {"min_firing_rate": 0.001, "survived_above": 0.9, "damaged_below": 0.5,
                                  "bootstrap": n_resamples, "seed": seed})
    first, fires, n = 0, np.zeros(d), 0
    for i, (sizes, x, y) in enumerate(data):
        acc.update(torch.from_numpy(x), torch.from_numpy(y), Batch(i, first, sizes))
        first += len(sizes)
        fires += (x > 0).sum(0)
        n += x.shape[0]
    return acc.result({"firing_rate": fires / n})


# Recorded with the per-context implementation (featsurv.stats.StreamingPearson and
# featsurv.bootstrap.BlockMoments, commit 9e11c86) before the numerics moved into the plugin;
# any later implementation must reproduce the bands and intervals exactly for the same seed.
# Intervals re-recorded on 2026-12-02 for one deliberate rule change (checked against the
# token-level oracle above): a feature whose FP values are constant in a resample (column 0,
# rare) is left out of that resample's fractions instead of counted as damaged. The old bounds
# were A: survived [0.159875, 0.18], blurred [0.395, 0.45], damaged [0.385, 0.43]; B: survived
# [0.041666, 0.083333], damaged [0.458333, 0.625]; the point bands are unchanged.
GOLDEN = {
    "A": (dict(), 400, 7, {
        "n_features": 200, "n_active": 200, "survived": 0.17, "blurred": 0.425, "damaged": 0.405,
        "mean_r": 0.6039787385001908, "median_r": 0.5903291586046882, "n_silenced": 2,
        "counts": {"survived": 34, "blurred": 85, "damaged": 81},
        "ci": {"n_blocks": 35, "n_resamples": 400, "level": 0.95, "absent": 0.0019125000000000017,
               "survived": [0.1598944723618091, 0.18090452261306533], "blurred": [0.395, 0.45226130653266333],
               "damaged": [0.3849227386934674, 0.43], "excludes_estimate": []}}),
    # 299 non-empty contexts: more than 256 blocks, so neighbouring blocks are merged pairwise
    "B": (dict(seed=3, d=24, n_batches=100, per_batch=3, lo=2, hi=9), 300, 1, {
        "n_features": 24, "n_active": 24, "survived": 0.08333333333333333, "blurred": 0.4166666666666667,
        "damaged": 0.5, "mean_r": 0.4673689942142996, "median_r": 0.49147471829288386, "n_silenced": 2,
        "counts": {"survived": 2, "blurred": 10, "damaged": 12},
        "ci": {"n_blocks": 150, "n_resamples": 300, "level": 0.95, "absent": 0.015833333333333317,
               "survived": [0.043478260869565216, 0.08333333333333333],
               "blurred": [0.3333333333333333, 0.4583333333333333],
               "damaged": [0.4583333333333333, 0.6086956521739131], "excludes_estimate": []}}),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_survival_output_pinned_for_a_fixed_seed(case):
    kwargs, n_resamples, seed, expected = GOLDEN[case]
    data = _golden_batches(**kwargs)
    res = _run_survival(data, n_resamples, seed)
    got = dict(res.summary)
    for key in ("mean_r", "median_r"):
        assert got.pop(key) == pytest.approx(expected[key], abs=1e-12), key
    want = {k: v for k, v in expected.items() if k not in ("mean_r", "median_r")}
    assert got == want
    # the point r against scipy, token by token (constant columns: 0)
    x = np.vstack([b[1] for b in data]).astype(np.float64)
    y = np.vstack([b[2] for b in data]).astype(np.float64)
    oracle = [_pearson_or_zero(x[:, j], y[:, j]) for j in range(x.shape[1])]
    np.testing.assert_allclose(res.per_feature["r"], oracle, rtol=0, atol=1e-9)
    assert np.flatnonzero(res.per_feature["silenced"]).tolist() == [1, 2]


def _rare_near_threshold(d=80, n_ctx=16, t=24, target=0.905, seed=7):
    """Features each firing in two of ``n_ctx`` contexts: compressed = FP in one, FP plus noise in
    the other, the noise set (bisection) so that r on all tokens is ``target``."""
    rng = np.random.default_rng(seed)
    x, y = np.zeros((n_ctx, t, d)), np.zeros((n_ctx, t, d))
    for j in range(d):
        a, b = j % n_ctx, (j + 5) % n_ctx
        u, v, e = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6), rng.normal(size=6)
        x[a, :6, j] = y[a, :6, j] = u
        x[b, :6, j] = v
        lo, hi = 0.0, 10.0
        for _ in range(60):
            y[b, :6, j] = v + (lo + hi) / 2 * e
            r = np.corrcoef(x[:, :, j].ravel(), y[:, :, j].ravel())[0, 1]
            lo, hi = ((lo + hi) / 2, hi) if r > target else (lo, (lo + hi) / 2)
        y[b, :6, j] = v + lo * e
    return [([t], x[c].astype(np.float32), y[c].astype(np.float32)) for c in range(n_ctx)]


def test_an_interval_that_excludes_its_estimate_is_flagged_and_said():
    """Every feature survives on all tokens (r = 0.905) but hinges on which of its two contexts a
    resample draws more often: the percentile interval of survived lies far below the point 100%.
    The summary lists the band and the command line's note says so."""
    from featsurv_plugins.survival_report import row_notes

    summary = _run_survival(_rare_near_threshold(), 300, 0).summary
    lo, hi = summary["ci"]["survived"]
    assert summary["survived"] == 1.0 and hi < 0.9
    assert "survived" in summary["ci"]["excludes_estimate"]
    note = row_notes(summary)[0]
    assert "excludes the" in note and "more --tokens" in note
    # an interval that brackets its estimate is not flagged (golden case A above)
    kwargs, n_res, seed, _ = GOLDEN["A"]
    assert _run_survival(_golden_batches(**kwargs), n_res, seed).summary["ci"]["excludes_estimate"] == []
