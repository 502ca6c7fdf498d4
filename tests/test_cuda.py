"""The device paths on a CUDA GPU against the CPU paths and scipy (skipped without one).

CI has no GPU, so these run only where ``torch.cuda.is_available()``: on a lent GPU machine,
``python -m pytest tests/test_cuda.py`` (benchmarks/gpu_check.sh runs them). What a CUDA run must
keep: float64 statistics equal to the CPU's up to summation order, the same bootstrap intervals
for the same seed, the FP cache and its dense batches exact, and an audit whose r agrees with
the CPU audit's to float32 round-off.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import stats

from test_stats import _scipy_r  # the per-feature scipy oracle (constant columns: 0)

#: the device under test: a CUDA GPU, or another one named in FEATSURV_TEST_DEVICE (``mps``; ``cpu``
#: checks the tests themselves against the CPU paths)
DEVICE = os.environ.get("FEATSURV_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device(DEVICE)


def _relu_pair(seed: int, n: int, d: int, density: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, d, generator=g) - float(stats.norm.ppf(1 - density)))
    y = torch.relu(x + 0.3 * torch.randn(n, d, generator=g) - 0.05)
    return x, y


def test_context_moments_on_the_gpu_equal_the_cpu_paths(monkeypatch):
    from featsurv_plugins import survival_numerics as sn

    x, y = _relu_pair(0, 512, 300)
    sizes = [128, 100, 0, 156, 128]
    for density in (0.0, 1.0):  # the CPU's dense and sparse sums
        monkeypatch.setattr(sn, "SPARSE_MAX_DENSITY", density)
        counts_c, m_c = sn.context_moments(x, y, sizes)
        counts_g, m_g = sn.context_moments(x.to(CUDA), y.to(CUDA), sizes)
        assert counts_c == counts_g == [128, 100, 156, 128]
        assert m_g.device.type == CUDA.type and m_g.dtype == torch.float64
        torch.testing.assert_close(m_g.cpu(), m_c, rtol=1e-12, atol=1e-9)


def test_streaming_r_on_the_gpu_matches_scipy_and_the_cpu():
    from featsurv_plugins.survival_numerics import SurvivalMoments

    x, y = _relu_pair(1, 2048, 200)
    accs = {"cpu": SurvivalMoments(200, max_blocks=8), "device": SurvivalMoments(200, max_blocks=8)}
    for i in range(0, 2048, 512):
        for key, acc in accs.items():
            dev = DEVICE if key == "device" else "cpu"
            acc.update(x[i:i + 512].to(dev), y[i:i + 512].to(dev), [128] * 4)
    r_gpu, r_cpu = accs["device"].r(), accs["cpu"].r()
    np.testing.assert_allclose(r_gpu, _scipy_r(x.numpy(), y.numpy()), rtol=0, atol=1e-9)
    np.testing.assert_allclose(r_gpu, r_cpu, rtol=0, atol=1e-12)
    assert accs["device"].n_blocks == accs["cpu"].n_blocks


def test_the_bootstrap_on_the_gpu_gives_the_cpus_intervals_for_the_same_seed():
    from featsurv_plugins.survival_bootstrap import bootstrap_band_ci
    from featsurv_plugins.survival_numerics import SurvivalMoments

    x, y = _relu_pair(2, 4096, 150, density=0.1)
    y[:, :50] = torch.relu(x[:, :50] + 1.5 * torch.randn(4096, 50, generator=torch.Generator().manual_seed(9)))
    out = {}
    for key, dev in (("cpu", "cpu"), ("device", DEVICE)):
        acc = SurvivalMoments(150, max_blocks=32)
        for i in range(0, 4096, 1024):
            acc.update(x[i:i + 1024].to(dev), y[i:i + 1024].to(dev), [128] * 8)
        active = (x > 0).double().mean(0).numpy() > 0.001
        out[key] = bootstrap_band_ci(acc, active, n_resamples=300, seed=5)
    for band in ("survived", "blurred", "damaged"):
        np.testing.assert_allclose(out["device"][band], out["cpu"][band], rtol=0, atol=1e-12)
    assert out["device"]["n_blocks"] == out["cpu"]["n_blocks"]


def test_the_fp_cache_dense_batches_and_feature_stats_on_the_gpu_are_exact():
    from featsurv.dense_fp import DenseFP
    from featsurv.fp_pass import pack, sparse
    from featsurv.stats import FeatureStats

    feats = [_relu_pair(s, n, 500)[0].to(CUDA) for s, n in ((3, 256), (4, 200), (5, 256))]
    cache = pack([sparse(f) for f in feats])
    assert all(c.device.type == CUDA.type and c.layout == torch.sparse_csr for c in cache)
    dense = DenseFP()
    stats_csr, stats_dense = FeatureStats(500), FeatureStats(500)
    for f, c in zip(feats, cache):
        got = dense.dense(c, CUDA)
        assert got.device.type == CUDA.type and torch.equal(got, f)
        stats_csr.update(c)
        stats_dense.update(f)
    a, b = stats_csr.result(), stats_dense.result()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=0)


def test_kept_rows_and_the_summed_cross_entropy_on_the_gpu():
    import torch.nn.functional as F

    from featsurv.passes import kept_rows
    from featsurv_plugins.metric_perplexity import summed_cross_entropy

    g = torch.Generator().manual_seed(6)
    acts = torch.randn(4, 16, 8, generator=g).to(CUDA)
    keep = torch.rand(4, 16, generator=g) > 0.3
    assert torch.equal(kept_rows(acts, keep), acts[keep.to(CUDA)])
    logits = torch.randn(64, 1000, generator=g).to(CUDA)
    target = torch.randint(0, 1000, (64,), generator=g).to(CUDA)
    target[::7] = -100
    want = F.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
    for chunk in (None, 4 * 1000 * 5):  # the device default (one chunk) and 5 rows at a time
        torch.testing.assert_close(summed_cross_entropy(logits, target, chunk_bytes=chunk), want, rtol=1e-6, atol=0)


def test_an_audit_on_the_gpu_agrees_with_the_cpu_audit():
    import featsurv

    runs = {key: featsurv.audit("rtn", {"bits": [8, 4]}, n_tokens=4096, bootstrap=200, device=dev, progress=False)
            for key, dev in (("cpu", "cpu"), ("device", DEVICE))}
    fc, fg = runs["cpu"].features(), runs["device"].features()
    m = fc.merge(fg, on=["config", "hook", "feature"], suffixes=("_c", "_g"))
    assert len(m) == len(fc) == len(fg)
    assert (m.active_c == m.active_g).all()
    act = m[m.active_c]
    assert np.nanmax(np.abs(act.r_c - act.r_g)) < 1e-4  # float32 forward passes, summed in another order
    assert (act.band_c != act.band_g).mean() < 0.002  # only features within round-off of a threshold
    for a, b in zip(runs["cpu"].summary["results"], runs["device"].summary["results"]):
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-5)
    assert runs["device"].record["device"] == DEVICE and runs["cpu"].record["device"] == "cpu"


def test_a_bf16_audit_on_the_gpu_runs_and_stays_close():
    import featsurv

    run = featsurv.audit("rtn", {"bits": [8]}, n_tokens=2048, bootstrap=0, device=DEVICE, dtype="bfloat16",
                         progress=False)
    f = run.features(active=True)
    assert len(f) and np.isfinite(f.r).all()
    assert f.r.median() > 0.5  # bf16 round-off on top of INT8 leaves most features correlated
