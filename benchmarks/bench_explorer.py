"""Cost of the contexts metric and the explorer page: `python benchmarks/bench_explorer.py [--tokens N]`.

For the embedded default (featsurv-tiny, two 1024-feature SAEs) and for one 16384-feature SAE
(a random TopK SAE on featsurv-tiny's blocks.2 residual, built here: the fit check is off), it
runs the same audit (FP pass + one configuration, rtn bits=6) without and with the ``contexts``
metric and reports:
- ``added_wall_pct``: the audit's extra wall time with the metric (noisy on a shared machine);
- ``metric_pct`` / ``metric_cpu_pct``: the wall / CPU time spent inside the metric's
  accumulators over the audit's wall / CPU time without it (the goal: under 10%; CPU time is the
  steadier measure on a shared machine);
- ``explorer_s``: building explorer.html from the finished run; ``explorer_mib``,
  ``contexts_parquet_mib``, ``report_mib`` (report.html + explorer.html): sizes (target: the
  page under 10 MB).
Prints one JSON line per case; exit 1 when the page exceeds 10 MB or ``metric_cpu_pct`` is 10 or more.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


class Timer:
    """Wall and CPU time spent inside the contexts metric's accumulator methods."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu = 0.0
        self.patched: list[tuple[type, str, object]] = []

    def wrap(self, cls: type, name: str) -> None:
        original = getattr(cls, name)
        timer = self

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.cpu += time.process_time() - c0

        self.patched.append((cls, name, original))
        setattr(cls, name, timed)

    def __enter__(self) -> "Timer":
        from featsurv_plugins import metric_contexts as mc

        for cls in (mc.ContextsFPAccumulator, mc.ContextsAccumulator):
            self.wrap(cls, "update")
            self.wrap(cls, "result")
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, name, original in self.patched:
            setattr(cls, name, original)


def random_topk_sae(out: Path, d_sae: int = 16384, d_in: int = 128, k: int = 32, seed: int = 0) -> Path:
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name="blocks.2.hook_resid_post", model_name="featsurv-tiny", context_size=128,
                       prepend_bos=True)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=meta))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae) / d_in ** 0.5)
        sae.W_dec.copy_(sae.W_enc.T / k ** 0.5)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(str(out))
    return out


def audit(options: dict, enabled: bool):
    """(wall and CPU seconds of prepare + one configuration, the metric's timer, result, session)."""
    from featsurv import plugins
    from featsurv.audit import AuditSession
    from featsurv.assembly import assemble
    from featsurv.options import make_options

    if enabled:
        os.environ.pop("FEATSURV_DISABLE_PLUGINS", None)
    else:
        os.environ["FEATSURV_DISABLE_PLUGINS"] = "contexts"
    plugins.reset_registry()
    session = AuditSession(make_options(**options))
    with Timer() as timer:
        t0, c0 = time.perf_counter(), time.process_time()
        session.prepare()
        outcome = session.run("rtn", {p.name: p.default for p in session.compressor("rtn").params} | {"bits": 6})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        result = assemble(session, [outcome], "audit")
    return (wall, cpu), timer, result, session


def case(name: str, options: dict) -> dict:
    from featsurv_plugins.explorer.page import build_explorer
    from featsurv.runs import finish

    (base_wall, base_cpu), _, _, _ = audit(options, False)
    (wall, cpu), timer, result, session = audit(options, True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        finish(session, result, out, "audit")
        t0 = time.perf_counter()
        page, facts = build_explorer(result)
        explorer_s = time.perf_counter() - t0
        sizes = {f: (out / f).stat().st_size for f in ("explorer.html", "contexts.parquet", "report.html")}
    os.environ.pop("FEATSURV_DISABLE_PLUGINS", None)
    n_features = sum(s.sae.d_sae for s in session.hooks.values())
    return {
        "case": name, "tokens": session.tokens.n_tokens, "features": n_features,
        "audit_s_without": round(base_wall, 2), "audit_s_with": round(wall, 2),
        "added_wall_pct": round(100 * (wall - base_wall) / base_wall, 1),
        "audit_cpu_s_without": round(base_cpu, 2), "audit_cpu_s_with": round(cpu, 2),
        "metric_s": round(timer.seconds, 2), "metric_pct": round(100 * timer.seconds / base_wall, 1),
        "metric_cpu_s": round(timer.cpu, 2), "metric_cpu_pct": round(100 * timer.cpu / base_cpu, 1),
        "explorer_s": round(explorer_s, 2), "explorer_mib": round(sizes["explorer.html"] / 2**20, 2),
        "contexts_embedded": f"{facts['contexts_features']}/{facts['contexts_features_total']}",
        "contexts_parquet_mib": round(sizes["contexts.parquet"] / 2**20, 2),
        "report_mib": round((sizes["report.html"] + sizes["explorer.html"]) / 2**20, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--skip-16k", action="store_true", help="Only the embedded default.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import sae_lens  # noqa: F401  (imports paid before any timing)
    import transformers  # noqa: F401

    import featsurv_plugins.metric_contexts  # noqa: F401
    from featsurv.presets import get_preset

    preset = get_preset(None)
    common = {**preset.options, "n_tokens": args.tokens, "bootstrap": 0}
    rows = [case("embedded default (2 x 1024 features)", common)]
    if not args.skip_16k:
        with tempfile.TemporaryDirectory() as tmp:
            sae = random_topk_sae(Path(tmp) / "sae16k")
            rows.append(case("16384-feature TopK SAE", {**common, "saes": [str(sae)], "hooks": None,
                                                        "min_explained_variance": -1e9}))
    ok = True
    for row in rows:
        row["targets"] = {"explorer<10MB": row["explorer_mib"] * 2**20 < 10 * 10**6,
                          "metric_cpu_pct<10": row["metric_cpu_pct"] < 10}
        ok &= all(row["targets"].values())
        print(json.dumps(row))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
