"""Throughput and memory of an audit: `python benchmarks/bench_audit.py [--preset NAME] [--tokens N]`.

Targets (checked here, never by timed tests):
- the FP pass and each configuration process at least 5,000 tokens/s on 2 CPU cores for the
  embedded default (featsurv-tiny, two SAEs);
- peak resident memory stays under 2 GiB for the embedded default at 32k tokens;
- the FP feature cache stays far below a dense [N, d_sae] array (ratio printed).
Prints a JSON line with the measurements and whether each target held; exit 1 if one did not.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default=None)
    parser.add_argument("--tokens", type=int, default=32768)
    args = parser.parse_args()

    from featsurv.audit import AuditSession, make_options
    from featsurv.presets import get_preset

    preset = get_preset(args.preset)
    opts = make_options(**{**preset.options, "n_tokens": args.tokens, "bootstrap": 0})
    session = AuditSession(opts)
    t0 = time.perf_counter()
    session.prepare()
    t_fp = time.perf_counter() - t0
    t1 = time.perf_counter()
    session.run("rtn", {"bits": 6, "symmetric": True, "granularity": "channel"})
    t_cfg = time.perf_counter() - t1
    n = session.tokens.n_contexts * session.tokens.context
    cache = sum(p.numel() * p.element_size() for s in session.hooks.values() for b in s.fp_batches
                for p in (b.values(), b.col_indices(), b.crow_indices()))
    dense = sum(session.tokens.n_tokens * s.sae.d_sae * 4 for s in session.hooks.values())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out = {
        "preset": preset.name, "tokens": n, "prepare_s (load + FP pass)": round(t_fp, 2), "config_s": round(t_cfg, 2),
        "config_tokens_per_s": round(n / t_cfg),
        "fp_cache_mib": round(cache / 2**20, 1), "dense_equivalent_mib": round(dense / 2**20, 1),
        "peak_rss_gib": round(peak_gib, 2),
    }
    targets = {"config_tokens_per_s>=5000": out["config_tokens_per_s"] >= 5000,
               "peak_rss_gib<2": peak_gib < 2, "cache<dense/2": cache < dense / 2}
    out["targets"] = targets
    print(json.dumps(out))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
