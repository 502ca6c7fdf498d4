"""Compare two audits of the same inputs run on different devices (or dtypes): how far apart are they?

    python benchmarks/compare_devices.py RUN_A RUN_B [--max-r-diff 1e-4]

Prints one JSON line: per-feature r (max and 99.9th percentile of |r_a - r_b| over active
features), the share of features whose band differs, perplexity and survival of each
configuration side by side. Exits 1 when the largest r difference exceeds ``--max-r-diff``
(float32 on a CPU and on a GPU sum in different orders: differences of about 1e-6 are round-off;
a bf16 model differs by much more and is compared for information only, ``--max-r-diff 1``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(run: Path):
    import pandas as pd

    f = pd.read_parquet(run / "features.parquet", columns=["config", "hook", "feature", "r", "band", "active"])
    s = json.loads((run / "summary.json").read_text())
    return f, {f"{e['label']} @ {e['hook']}": e for e in s["results"]}, s


def main() -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--max-r-diff", type=float, default=1e-4)
    args = p.parse_args()
    fa, ra, _ = load(args.a)
    fb, rb, _ = load(args.b)
    m = fa.merge(fb, on=["config", "hook", "feature"], suffixes=("_a", "_b"))
    if len(m) != len(fa) or len(m) != len(fb):
        print(f"the two runs hold different features ({len(fa)} vs {len(fb)} rows, {len(m)} in common)")
        return 1
    act = m[m.active_a & m.active_b]
    d = np.abs(act.r_a.to_numpy() - act.r_b.to_numpy())
    out = {"rows": len(m), "active_both": int(len(act)), "active_differs": int((m.active_a != m.active_b).sum()),
           "max_abs_r_diff": float(np.nanmax(d)) if len(d) else 0.0,
           "p999_abs_r_diff": float(np.nanquantile(d, 0.999)) if len(d) else 0.0,
           "band_differs": float((act.band_a != act.band_b).mean()) if len(act) else 0.0,
           "configs": {c: {k: [ra[c].get(k), rb.get(c, {}).get(k)] for k in ("perplexity", "survived")} for c in ra}}
    print(json.dumps(out))
    return 0 if out["max_abs_r_diff"] <= args.max_r_diff and out["active_differs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
