"""Survival's moments and r against scipy and a per-context numpy reference; the host's FP statistics."""
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from featsurv.stats import ExplainedVariance, FeatureStats
from featsurv_plugins import survival_numerics
from featsurv_plugins.survival_numerics import (CONST_REL, SurvivalMoments, context_moments, is_constant,
                                                merge, merge_all, pearson)


@pytest.fixture(autouse=True, params=["dense", "sparse"])
def moments_path(request, monkeypatch):
    """Every test here runs with each of context_moments' two ways to its sums."""
    monkeypatch.setattr(survival_numerics, "SPARSE_MAX_DENSITY", 0.0 if request.param == "dense" else 1.0)
    return request.param


def _relu_pair(rng, n, d, noise=0.3):
    x = np.maximum(rng.normal(size=(n, d)), 0).astype(np.float32)  # ReLU-like, many zeros
    y = np.maximum(x + noise * rng.normal(size=(n, d)), 0).astype(np.float32)
    return x, y


def _feed(x, y, batches, max_blocks=256):
    """``batches``: a list of context-size lists; each inner list is one batch."""
    acc = SurvivalMoments(x.shape[1], max_blocks=max_blocks)
    start = 0
    for sizes in batches:
        t = sum(sizes)
        acc.update(torch.tensor(x[start:start + t]), torch.tensor(y[start:start + t]), sizes)
        start += t
    assert start == x.shape[0]
    return acc


def _reference_moments(x, y):
    """Two-pass float64 moments of one context (numpy): the definition."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    return np.stack([mx, my, ((x - mx) ** 2).sum(0), ((y - my) ** 2).sum(0), ((x - mx) * (y - my)).sum(0)])


def _reference_streaming_r(x, y, sizes):
    """The per-context reference: moments per context, merged one context at a time (numpy)."""
    n, tot, start = 0, None, 0
    for s in sizes:
        if s == 0:
            continue
        m = _reference_moments(x[start:start + s], y[start:start + s])
        start += s
        if tot is None:
            n, tot = s, m
            continue
        nn = n + s
        dx, dy = m[0] - tot[0], m[1] - tot[1]
        w = n * s / nn
        tot = np.stack([tot[0] + dx * s / nn, tot[1] + dy * s / nn, tot[2] + m[2] + dx * dx * w,
                        tot[3] + m[3] + dy * dy * w, tot[4] + m[4] + dx * dy * w])
        n = nn
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot[4] / np.sqrt(tot[2] * tot[3])


def _scipy_r(x, y):
    out = []
    for j in range(x.shape[1]):
        a, b = x[:, j].astype(np.float64), y[:, j].astype(np.float64)
        if np.all(a == a[0]) or np.all(b == b[0]):
            out.append(0.0)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(stats.pearsonr(a, b)[0])
    return np.array(out)


def test_context_moments_match_the_per_context_definition():
    rng = np.random.default_rng(0)
    sizes = [5, 0, 17, 1, 9]
    x, y = _relu_pair(rng, sum(sizes), 6)
    x[:, 2] += 1000.0  # a large offset: the shift keeps the sums free of cancellation
    counts, m = context_moments(torch.tensor(x), torch.tensor(y), sizes)
    assert counts == [5, 17, 1, 9]
    starts = np.cumsum([0] + sizes)
    want = [_reference_moments(x[a:b], y[a:b]) for a, b, s in zip(starts[:-1], starts[1:], sizes) if s]
    np.testing.assert_allclose(m.numpy(), np.stack(want), rtol=1e-12, atol=1e-12)


def _sparse_pair(rng, n, d):
    """SAE-like features: about 1% nonzero, the compressed side firing on a slightly different set."""
    x = np.where(rng.random((n, d)) < 0.01, rng.exponential(2.0, (n, d)), 0).astype(np.float32)
    y = np.where(rng.random((n, d)) < 0.9, x * (1 + 0.1 * rng.normal(size=(n, d))), 0).astype(np.float32)
    y = np.where(rng.random((n, d)) < 0.003, 0.5, y).astype(np.float32)
    x[0] = 0.25  # the first row of a context is its shift: nonzero here
    x[:, 1] = 7.0 + 1e-3 * rng.normal(size=n)  # a dense, offset column
    return x, y


def test_the_sparse_and_dense_sums_agree_on_sae_like_features(moments_path):
    rng = np.random.default_rng(7)
    sizes = [64, 0, 128, 1, 63]
    x, y = _sparse_pair(rng, sum(sizes), 300)
    assert ((x != 0) | (y != 0)).mean() < 0.05
    counts, m = context_moments(torch.tensor(x), torch.tensor(y), sizes)
    starts = np.cumsum([0] + sizes)
    want = [_reference_moments(x[a:b], y[a:b]) for a, b, s in zip(starts[:-1], starts[1:], sizes) if s]
    np.testing.assert_allclose(m.numpy(), np.stack(want), rtol=1e-11, atol=1e-11)
    acc = _feed(x, y, [sizes[:2], sizes[2:]])
    np.testing.assert_allclose(acc.r(), _scipy_r(x, y), rtol=1e-9, atol=1e-12)


def test_the_density_threshold_picks_the_path(monkeypatch):
    """Above SPARSE_MAX_DENSITY nonzeros the dense sums run; at or below it the sparse ones."""
    calls = []
    for name in ("_dense_sums", "_sparse_sums"):
        original = getattr(survival_numerics, name)
        monkeypatch.setattr(survival_numerics, name,
                            lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))
    rng = np.random.default_rng(8)
    x, y = _sparse_pair(rng, 40, 50)
    density = float(((x != 0) | (y != 0)).mean())
    monkeypatch.setattr(survival_numerics, "SPARSE_MAX_DENSITY", density)
    context_moments(torch.tensor(x), torch.tensor(y), [40])
    assert calls == ["_sparse_sums"]
    calls.clear()
    monkeypatch.setattr(survival_numerics, "SPARSE_MAX_DENSITY", density * 0.99)
    context_moments(torch.tensor(x), torch.tensor(y), [40])
    assert calls == ["_sparse_sums", "_dense_sums"]  # the sparse path saw the density and declined


def test_equal_and_unequal_context_sizes_agree():
    rng = np.random.default_rng(1)
    x, y = _relu_pair(rng, 64, 5)
    _, even = context_moments(torch.tensor(x), torch.tensor(y), [16, 16, 16, 16])
    _, split = context_moments(torch.tensor(x), torch.tensor(y), [16, 16, 16, 10, 6])
    np.testing.assert_allclose(even[:3].numpy(), split[:3].numpy(), rtol=1e-13, atol=1e-13)
    n, tail = merge(10, split[3], 6, split[4])
    assert n == 16.0
    np.testing.assert_allclose(tail.numpy(), even[3].numpy(), rtol=1e-12, atol=1e-12)


def test_merge_is_chan_and_handles_an_empty_side():
    rng = np.random.default_rng(2)
    x, y = _relu_pair(rng, 30, 4)
    _, m = context_moments(torch.tensor(x), torch.tensor(y), [11, 19])
    n, both = merge(11, m[0], 19, m[1])
    np.testing.assert_allclose(both.numpy(), _reference_moments(x, y), rtol=1e-12, atol=1e-12)
    n0, same = merge(0, torch.zeros_like(m[1]), 19, m[1])
    assert n0 == 19 and torch.equal(same, m[1])
    n_all, pooled = merge_all([11, 19], m)
    assert n_all == 30 and torch.allclose(pooled, both, rtol=1e-13, atol=1e-13)


def test_r_matches_scipy_and_the_per_context_reference():
    rng = np.random.default_rng(3)
    batches = [[1, 40, 0, 58], [100], [33, 33, 33, 1], [2, 0, 50]]
    flat = [s for b in batches for s in b]
    x, y = _relu_pair(rng, sum(flat), 12)
    acc = _feed(x, y, batches)
    np.testing.assert_allclose(acc.r(), _scipy_r(x, y), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(acc.r(), _reference_streaming_r(x, y, flat), rtol=0, atol=1e-13)
    assert acc.n_tokens == sum(flat) and acc.n_blocks == sum(1 for s in flat if s)


def test_batching_does_not_change_r_or_blocks():
    rng = np.random.default_rng(4)
    sizes = [int(s) for s in rng.integers(1, 30, size=24)]
    x, y = _relu_pair(rng, sum(sizes), 7)
    one = _feed(x, y, [sizes])
    per_context = _feed(x, y, [[s] for s in sizes])
    by_three = _feed(x, y, [sizes[i:i + 3] for i in range(0, 24, 3)])
    for other in (per_context, by_three):
        np.testing.assert_allclose(other.r(), one.r(), rtol=0, atol=1e-13)
        n_a, m_a = one.blocks()
        n_b, m_b = other.blocks()
        assert n_a.tolist() == n_b.tolist()
        np.testing.assert_allclose(m_b.numpy(), m_a.numpy(), rtol=1e-12, atol=1e-12)


def test_large_offset_small_spread_matches_scipy():
    """An offset of 1000 with a spread of 0.05: naive sums of squares would lose 8 digits."""
    rng = np.random.default_rng(5)
    n = 400
    x = 1000.0 + 0.05 * rng.normal(size=(n, 1))
    y = 1000.0 + 0.5 * (x - 1000.0) + 0.05 * rng.normal(size=(n, 1))
    acc = SurvivalMoments(1)
    for a in range(0, n, 100):
        acc.update(torch.tensor(x[a:a + 100]), torch.tensor(y[a:a + 100]), [64, 36])
    assert acc.r()[0] == pytest.approx(stats.pearsonr(x[:, 0], y[:, 0])[0], abs=1e-11)


def test_constant_rule_is_shared_and_relative():
    rng = np.random.default_rng(6)
    n = 300
    x = np.maximum(rng.normal(size=(n, 5)), 0)
    y = x.copy()
    y[:, 1] = 0.0                                          # silenced
    y[:, 2] = 0.7                                          # constant, non-zero
    y[:, 3] = 5.0 * (1 + 1e-7 * rng.normal(size=n))        # constant up to float noise (rel. spread 1e-7)
    y[:, 4] = 5.0 * (1 + 1e-3 * x[:, 4])                   # small but real spread (rel. 1e-3)
    acc = _feed(x, y, [[100, 100], [100]])
    r, const_x, const_y = acc.pearson()
    assert r[0] == pytest.approx(1.0) and r[4] == pytest.approx(1.0)
    assert r[1] == r[2] == r[3] == 0.0
    assert const_y.tolist() == [False, True, True, True, False] and not const_x.any()
    # the rule itself, against its definition
    m2 = torch.tensor([0.0, 1.9e-9, 2.1e-9], dtype=torch.float64)  # threshold 1e-10 * 10 * (1 + 1) = 2e-9
    assert is_constant(m2, 10.0, torch.tensor(1.0), torch.tensor(1.0)).tolist() == [True, True, False]
    assert CONST_REL == 1e-10


def test_pearson_uses_reference_means_for_the_rule():
    n, m = 4.0, torch.zeros(5, 1, dtype=torch.float64)
    m[2] = m[3] = 1e-14  # tiny M2 around a mean of 0: constant only relative to a non-zero reference
    m[4] = 1e-14
    r, cx, _ = pearson(n, m)
    assert not bool(cx[0]) and float(r[0]) == pytest.approx(1.0)
    r, cx, _ = pearson(n, m, ref_x=torch.tensor([1.0], dtype=torch.float64))
    assert bool(cx[0]) and float(r[0]) == 0.0


def test_bad_shapes_are_refused():
    acc = SurvivalMoments(3)
    with pytest.raises(ValueError, match="sum\\(context_sizes\\)"):
        acc.update(torch.zeros(5, 3), torch.zeros(5, 3), [2, 2])
    with pytest.raises(ValueError, match="tokens, 3"):
        acc.update(torch.zeros(5, 2), torch.zeros(5, 2), [5])
    with pytest.raises(ValueError, match="even"):
        SurvivalMoments(3, max_blocks=3)
    empty = SurvivalMoments(2)
    assert empty.r().tolist() == [0.0, 0.0] and empty.n_blocks == 0


# --------------------------------------------------------------------------- host FP statistics
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


def test_feature_stats_from_csr_equal_dense():
    import warnings as _w

    rng = np.random.default_rng(7)
    f = np.maximum(rng.normal(-1.0, 1.0, size=(300, 9)), 0).astype(np.float32)
    f[:, 3] = 0.0                 # never fires
    f[:, 4] = -np.abs(f[:, 4])    # stored negative values: not firing, peak stays 0
    dense, sparse = FeatureStats(9), FeatureStats(9)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        for a in range(0, 300, 128):
            dense.update(torch.tensor(f[a:a + 128]))
            sparse.update(torch.tensor(f[a:a + 128]).to_sparse_csr())
    d_out, s_out = dense.result(), sparse.result()
    assert np.array_equal(d_out["firing_rate"], s_out["firing_rate"])
    np.testing.assert_allclose(s_out["mean_act"], f.astype(np.float64).mean(0), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(s_out["peak_act"], d_out["peak_act"])
    assert s_out["peak_act"][4] == 0.0 and s_out["firing_rate"][3] == 0.0


def test_the_fp_cache_is_csr_with_int32_indices_and_gives_back_the_features():
    from featsurv.fp_pass import sparse

    rng = np.random.default_rng(9)
    f = np.maximum(rng.normal(-1.5, 1.0, size=(200, 70)), 0).astype(np.float32)
    f[7] = 0.0  # an empty row
    csr = sparse(torch.tensor(f))
    assert csr.layout == torch.sparse_csr
    assert csr.crow_indices().dtype == csr.col_indices().dtype == torch.int32
    assert csr.values().numel() == int((f != 0).sum())
    np.testing.assert_array_equal(csr.to_dense().numpy(), f)
    w = torch.tensor(rng.normal(size=(70, 5)).astype(np.float32))
    torch.testing.assert_close(csr @ w, torch.tensor(f) @ w, rtol=1e-5, atol=1e-5)
    dense, from_cache = FeatureStats(70), FeatureStats(70)
    dense.update(torch.tensor(f))
    from_cache.update(csr)
    for key, want in dense.result().items():
        np.testing.assert_allclose(from_cache.result()[key], want, rtol=1e-12, atol=1e-15, err_msg=key)


def test_the_packed_fp_cache_is_views_into_one_buffer_with_the_same_features():
    from featsurv.fp_pass import pack, sparse

    rng = np.random.default_rng(10)
    dense = [np.maximum(rng.normal(-1.5, 1.0, size=(n, 70)), 0).astype(np.float32) for n in (33, 1, 64, 20)]
    dense[1][:] = 0.0  # a batch with nothing stored
    batches = [sparse(torch.tensor(f)) for f in dense]
    packed = pack(batches)
    assert len(packed) == len(batches)
    for i, (f, p, b) in enumerate(zip(dense, packed, batches)):
        assert p.layout == torch.sparse_csr and p.shape == b.shape
        for part in ("crow_indices", "col_indices", "values"):
            got, want = getattr(p, part)(), getattr(b, part)()
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        np.testing.assert_array_equal(p.to_dense().numpy(), f, err_msg=f"batch {i}")
    # one storage per part: the values of every batch live in the first batch's buffer
    assert len({p.values().untyped_storage().data_ptr() for p in packed}) == 1
    assert len({p.col_indices().untyped_storage().data_ptr() for p in packed}) == 1
    assert pack(batches[:1])[0] is batches[0] and pack([]) == []


def test_release_freed_memory_trims_with_glibc_and_is_a_no_op_without(monkeypatch):
    import ctypes
    import platform

    from featsurv import heap

    monkeypatch.setattr(heap, "_LOOKED", False)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert heap.release_freed_memory() is expected
    calls = []
    monkeypatch.setattr(heap, "_TRIM", calls.append)
    monkeypatch.setattr(heap, "_LOOKED", True)
    assert heap.release_freed_memory() is True and calls == [0]

    def no_libc(name):
        raise OSError("no C library")

    monkeypatch.setattr(heap, "_LOOKED", False)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert heap.release_freed_memory() is False


def test_explained_variance_with_a_large_offset():
    rng = np.random.default_rng(8)
    x = 1e4 + rng.normal(size=(500, 3))
    x_hat = x + 0.1 * rng.normal(size=(500, 3))
    ev = ExplainedVariance(3)
    for a in range(0, 500, 64):
        ev.update(torch.tensor(x[a:a + 64]), torch.tensor(x_hat[a:a + 64]))
    expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert ev.result() == pytest.approx(expected, rel=1e-10)
    assert np.isnan(ExplainedVariance(3).result())


class _LinearSAE:
    def __init__(self, w, b):
        self.w, self.b = w, b
        self.calls = []

    def decode(self, f):
        self.calls.append(f.layout)
        return f @ self.w + self.b


class _DenseOnlySAE(_LinearSAE):
    def decode(self, f):
        self.calls.append(f.layout)
        return f.to_dense() * 0 + 1 if f.layout != torch.strided else f @ self.w  # wrong on sparse


def test_sparse_decode_used_only_when_it_matches_the_dense_decode():
    import warnings as _w

    from featsurv.stats import SparseDecode

    rng = np.random.default_rng(9)
    w = torch.tensor(rng.normal(size=(20, 4)), dtype=torch.float32)
    b = torch.tensor(rng.normal(size=4), dtype=torch.float32)
    f = torch.relu(torch.tensor(rng.normal(-1, 1, size=(16, 20)), dtype=torch.float32))
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        csr = f.to_sparse_csr()
    good = SparseDecode(_LinearSAE(w, b))
    first = good(f, csr)
    second = good(f, csr)
    assert good.sparse_ok is True and good.sae.calls == [torch.strided, torch.sparse_csr, torch.sparse_csr]
    torch.testing.assert_close(second, f @ w + b)
    torch.testing.assert_close(first, f @ w + b)
    bad = SparseDecode(_DenseOnlySAE(w, b))
    bad(f, csr)
    bad(f, csr)
    assert bad.sparse_ok is False and bad.sae.calls[-1] == torch.strided


@pytest.mark.parametrize("kind", ["standard", "topk-embedded"])
def test_sparse_decode_of_sae_lens_saes(kind, tmp_path):
    """A standard sae-lens SAE decodes CSR input; the embedded TopK SAE (rescaled by decoder norms)
    cannot, and falls back to the dense decode."""
    import warnings as _w

    from featsurv.data_paths import resolve
    from featsurv.loading import load_sae
    from featsurv.plugins import get_registry
    from featsurv.stats import SparseDecode
    from featsurv.testing import write_exact_sae

    spec = (str(write_exact_sae(tmp_path / "sae", 16, "blocks.0.hook_resid_post")) if kind == "standard"
            else resolve("featsurv:saes/featsurv-tiny/blocks.1.hook_resid_post"))
    sae = load_sae(get_registry(), spec)
    x = torch.randn(64, sae.d_in)
    with torch.no_grad():
        f = sae.encode(x)
        with _w.catch_warnings():
            _w.simplefilter("ignore")
            csr = f.to_sparse_csr()
        dec = SparseDecode(sae)
        dec(f, csr)
        out = dec(f, csr)
        torch.testing.assert_close(out, sae.decode(f), rtol=1e-4, atol=1e-5)
    assert dec.sparse_ok is (kind == "standard")
