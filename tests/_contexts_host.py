"""Test helper: drive the ``contexts`` metric exactly as the metric contract says the host does.

FP accumulators are fed ``update(fp, batch)`` over the FP features of every batch; each
configuration's feature accumulator gets ``fp_result=`` and ``update(fp, compressed, batch)``.
Also returns the dense FP and compressed features of every kept token, for oracles.
"""
from __future__ import annotations

from typing import Any


def batches(session: Any):
    """(ids, keep, Batch) per batch of the session's token set, as the host builds them."""
    from featsurv import Batch

    bs = session.options.batch_size
    for i, (ids, keep) in enumerate(session.tokens.batches(bs)):
        yield ids, keep, Batch(i, i * bs, keep.sum(1).tolist(), keep.nonzero()[:, 1], ids,
                               session.loaded.tokenizer)


def fp_pass(session: Any, metric: Any, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per hook: the FP accumulator's result and the dense FP features [N, d_sae]."""
    import torch

    results, dense = {}, {}
    for hook, state in session.hooks.items():
        acc = metric.fp_accumulator(state.sae.d_sae, options)
        parts = []
        for (_, _, batch), csr in zip(batches(session), state.fp_batches):
            fp = csr.to_dense()
            acc.update(fp, batch)
            parts.append(fp)
        results[hook] = acc.result()
        dense[hook] = torch.cat(parts)
    return results, dense


def configuration(session: Any, metric: Any, options: dict[str, Any], fp_results: dict[str, Any],
                  compressor: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compress, feed every hook's feature accumulator, restore; per hook the result and dense features."""
    import torch

    from featsurv.capture import capture

    sess = session
    comp = sess.registry.get("compressors", compressor)
    targets = sess.loaded.adapter.compressible_weights(sess.loaded.model, sess.options.scope)
    snapshot = [t.weight.detach().clone() for t in targets]
    accs = {h: metric.feature_accumulator(s.sae.d_sae, options, fp_result=fp_results[h]) for h, s in sess.hooks.items()}
    dense: dict[str, list[Any]] = {h: [] for h in sess.hooks}
    try:
        torch.manual_seed(sess.options.seed)
        comp.compress(targets, dict(params))
        for t in targets:
            t.sync()
        with torch.no_grad(), capture(sess.loaded.adapter, sess.loaded.model, list(sess.hooks)) as acts:
            for (ids, keep, batch), i in zip(batches(sess), range(10**9)):
                sess._forward(ids)
                for hook, state in sess.hooks.items():
                    _, f = sess._encode(state, acts[hook], keep)
                    f = f.detach().float()
                    fp = state.fp_batches[i].to_dense()
                    accs[hook].update(fp, f, batch)
                    dense[hook].append(f)
    finally:
        with torch.no_grad():
            for t, w in zip(targets, snapshot):
                t.weight.copy_(w)
                t.sync()
    return ({h: acc.result(sess.hooks[h].fp_stats) for h, acc in accs.items()},
            {h: torch.cat(v) for h, v in dense.items()})


def run_with_contexts(options: Any, configurations: list[tuple[str, dict[str, Any]]], out_dir: Any,
                      k: int = 5, window: int = 4) -> Any:
    """A whole audit with the contexts metric, written to ``out_dir`` (contexts.parquet included)."""
    import pandas as pd

    from featsurv.audit import AuditSession
    from featsurv.explorer.page import write_explorer
    from featsurv.runs import assemble
    from featsurv.results import write_run
    from featsurv_plugins.metric_contexts import Contexts

    metric = Contexts()
    opts = {"k": k, "window": window, "seed": 0}
    session = AuditSession(options)
    session.prepare()
    fp_results, _ = fp_pass(session, metric, opts)
    outcomes, tables = [], []
    for name, params in configurations:
        outcome = session.run(name, params)
        res, _ = configuration(session, metric, opts, fp_results, name, params)
        for hook, r in res.items():
            outcome.features[hook]["contexts"] = r
            tables.append(r.tables["contexts"].assign(config=outcome.label, hook=hook))
        outcomes.append(outcome)
    result = assemble(session, outcomes, "audit")
    path = write_run(out_dir, result)
    contexts = pd.concat(tables, ignore_index=True)
    contexts.to_parquet(path / "contexts.parquet")
    write_explorer(result, path, contexts=contexts)
    return result, contexts


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
               "options": {"survived_above": 0.9, "damaged_below": 0.5},
               "results": [{"label": c, "hook": hook} for c in configs]}
    return RunResult({"command": "synthetic"}, summary, features), pd.concat(ctx_frames, ignore_index=True)
