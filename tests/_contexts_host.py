"""Test helpers for the contexts metric and the explorer.

- ``DenseProbe``: a test-only metric that keeps every batch's dense FP and compressed features
  (fine for tiny models), the oracle the contexts metric is checked against, run by the real host
  in the same audit;
- ``run_with_contexts``: a whole audit through the host (contexts.parquet, explorer.html);
- ``synthetic_run``: an in-memory run of a large SAE with a contexts table, for page tests.
"""
from __future__ import annotations

from typing import Any

from featsurv import FeatureAccumulator, FeatureResult, Metric, hookimpl
from featsurv.base import FPAccumulator


class _DenseFP(FPAccumulator):
    def __init__(self) -> None:
        self.parts: list[Any] = []

    def update(self, fp: Any, batch: Any) -> None:
        self.parts.append(fp.detach().float().cpu().clone())

    def result(self) -> Any:
        import torch

        return torch.cat(self.parts)


class _DenseConfig(FeatureAccumulator):
    def __init__(self, fp: Any) -> None:
        self.fp, self.parts = fp, []

    def update(self, fp: Any, compressed: Any, batch: Any) -> None:
        self.parts.append(compressed.detach().float().cpu().clone())

    def result(self, fp_stats: Any) -> FeatureResult:
        import torch

        return _Dense(self.fp, torch.cat(self.parts))


class _Dense(FeatureResult):
    def __init__(self, fp: Any, compressed: Any) -> None:
        super().__init__({}, {}, {})
        self.fp, self.compressed = fp, compressed


class DenseProbe(Metric):
    """Keeps the dense FP and compressed features of every kept token (tests on tiny models only)."""

    name = "dense_probe"
    default = True

    def fp_accumulator(self, d_sae: int, options: dict[str, Any]) -> FPAccumulator:
        return _DenseFP()

    def feature_accumulator(self, d_sae: int, options: dict[str, Any], fp_result: Any = None) -> FeatureAccumulator:
        return _DenseConfig(fp_result)


class _ProbePlugin:
    @hookimpl
    def register_metrics(self, register: Any) -> None:
        register(DenseProbe())


def with_probe():
    """A context manager: the registry holds DenseProbe while it is open."""
    import contextlib

    from featsurv import plugins

    @contextlib.contextmanager
    def cm():
        plugins.reset_registry()
        plugins.get_registry().add_plugin(_ProbePlugin(), "dense-probe", "tests", "0")
        try:
            yield
        finally:
            plugins.reset_registry()

    return cm()


def run_with_contexts(options: Any, configurations: list[tuple[str, dict[str, Any]]], out_dir: Any,
                      k: int = 5, window: int = 4, probe: bool = False) -> tuple[Any, Any]:
    """A whole audit through the host with the contexts metric (k, window), written to ``out_dir``.

    Returns the RunResult and the contexts table; with ``probe`` the result's outcomes carry the
    dense features (``result.extra["dense"][(label, hook)] = (fp, compressed)``)."""
    import contextlib

    from featsurv.audit import AuditSession
    from featsurv.assembly import assemble
    from featsurv.runs import finish

    options.metric_options = {**options.metric_options, "contexts": {"k": k, "window": window}}
    with with_probe() if probe else contextlib.nullcontext():
        session = AuditSession(options)
        session.prepare()
        outcomes = []
        for name, params in configurations:
            declared = {p.name: p.default for p in session.compressor(name).params}
            outcomes.append(session.run(name, {**declared, **params}))
        result = assemble(session, outcomes, "audit")
        if probe:
            result.extra["dense"] = {(o.label, h): (r["dense_probe"].fp, r["dense_probe"].compressed)
                                     for o in outcomes for h, r in o.features.items()}
            result.extra["keep"] = session.tokens.keep.clone()
            result.extra["contexts_ids"] = session.tokens.contexts.clone()
            result.extra["tokenizer"] = session.loaded.tokenizer
        result = finish(session, result, out_dir, "audit")
    return result, result.extra["tables"]["contexts.parquet"]


def synthetic_run(d_sae: int = 16384, configs: tuple[str, ...] = ("rtn int6", "magnitude sparsity=0.3"),
                  k: int = 8, n_ctx: int = 2000, ctx_len: int = 128, window: int = 8, seed: int = 0,
                  hook: str = "blocks.12.hook_resid_post") -> tuple[Any, Any]:
    """An in-memory run of a ``d_sae``-feature SAE with a contexts table of the documented schema
    (random but consistent: windows read from one token matrix), for page size and speed tests."""
    import numpy as np
    import pandas as pd

    from featsurv.results import RunResult
    from featsurv_plugins.metric_contexts import list_column

    rng = np.random.default_rng(seed)
    active = rng.random(d_sae) < 0.9
    fr = 10 ** rng.uniform(-3.5, -0.7, d_sae)
    peak = rng.lognormal(1.0, 0.5, d_sae)
    frames, ctx_frames = [], []
    vocab = np.array([" tok%d" % i if i % 3 else "w%d" % i for i in range(4000)], dtype=object)
    tokens = rng.integers(0, len(vocab), (n_ctx, ctx_len))
    feats = np.flatnonzero(active)
    n = len(feats) * k
    f_rep = np.repeat(feats, k)
    rank = np.tile(np.arange(k), len(feats))
    w = 2 * window + 1

    def windows(ctx: Any, pos: Any) -> tuple[Any, Any]:
        wp = pos[:, None] + np.arange(-window, window + 1)[None, :]
        inside = (wp >= 0) & (wp < ctx_len)
        ids = np.where(inside, tokens[ctx[:, None], wp.clip(0, ctx_len - 1)], -1)
        return ids, inside

    def acts(top: Any, inside: Any) -> Any:
        a = np.where(rng.random((len(top), w)) < 0.15, rng.random((len(top), w)) * top[:, None], 0.0)
        a[:, window] = top
        return np.where(inside, a, np.nan).astype(np.float32)

    ctx = rng.integers(0, n_ctx, n)
    pos = rng.integers(0, ctx_len, n)
    ids, inside = windows(ctx, pos)
    fp_top = (peak[f_rep] * (1 - 0.05 * rank)).astype(np.float32)
    fp_win = acts(fp_top, inside)
    toks = vocab[np.where(ids >= 0, ids, 0)]
    toks[ids < 0] = ""
    text = ["".join(t) for t in toks]
    for ci, config in enumerate(configs):
        r = np.clip(1 - np.abs(rng.normal(0, 0.12 + 0.1 * ci, d_sae)), -0.2, 1)
        band = np.where(r > 0.9, "survived", np.where(r < 0.5, "damaged", "blurred"))
        frames.append(pd.DataFrame({"config": config, "compressor": config.split()[0], "hook": hook,
                                    "feature": np.arange(d_sae, dtype=np.int32), "r": r, "band": band,
                                    "active": active, "silenced": False, "contexts.top_overlap": rng.random(d_sae),
                                    "firing_rate": fr, "mean_act": fr * peak / 3, "peak_act": peak}))
        comp_at = (fp_win * rng.uniform(0.3, 1.1, (n, 1))).astype(np.float32)
        cctx, cpos = rng.integers(0, n_ctx, n), rng.integers(0, ctx_len, n)
        cids, cinside = windows(cctx, cpos)
        ctop = (fp_top * rng.uniform(0.5, 1.0, n)).astype(np.float32)
        ctoks = vocab[np.where(cids >= 0, cids, 0)]
        ctoks[cids < 0] = ""
        for kind, cx, ps, ii, tk, tx, fa, ca, fw, cw in (
                ("fp_top", ctx, pos, ids, toks, text, fp_top, comp_at[:, window], fp_win, comp_at),
                ("compressed_top", cctx, cpos, cids, ctoks, ["".join(t) for t in ctoks], ctop * 0.5, ctop,
                 acts(ctop * 0.5, cinside), acts(ctop, cinside))):
            ctx_frames.append(pd.DataFrame({
                "feature": f_rep.astype(np.int32), "kind": kind, "rank": rank.astype(np.int16),
                "context": cx.astype(np.int32), "position": ps.astype(np.int32),
                "window_start": (ps - window).astype(np.int32), "target": np.int16(window),
                "fp_act": fa, "compressed_act": ca, "in_both": rng.random(n) < 0.5, "text": tx,
                "window_ids": list_column(ii.astype(np.int32)), "window_tokens": list_column(tk),
                "fp_window": list_column(fw), "compressed_window": list_column(cw), "config": config, "hook": hook}))
    features = pd.concat(frames, ignore_index=True)
    summary = {"baseline": {"n_tokens": n_ctx * ctx_len, "perplexity": 12.3,
                            "saes": {hook: {"d_sae": d_sae, "neuronpedia_id": "gemma-2-2b/12-gemmascope-res-16k"}}},
               "metric_options": {"survival": {"survived_above": 0.9, "damaged_below": 0.5}},
               "results": [{"label": c, "hook": hook} for c in configs]}
    return RunResult({"command": "synthetic"}, summary, features), pd.concat(ctx_frames, ignore_index=True)
