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
