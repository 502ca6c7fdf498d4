"""What the two reference-reproduction test files share: the featsurv CLI on the offline hub,
lookups in a finished run, and the check that a configuration's r and bands are the reference's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hub_cache import offline_env


def _featsurv(home: Path, *args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("featsurv")), *args]
    proc = subprocess.run(cmd, env=offline_env(home), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]


def _rows(run, compressor: str, **params) -> pd.DataFrame:
    labels = [e["label"] for e in run.summary["results"] if e["compressor"] == compressor
              and all(e["params"].get(k) == v for k, v in params.items())]
    assert len(labels) == 1, labels
    return run.features[run.features["config"] == labels[0]].sort_values("feature")


def _entry(run, compressor: str, **params) -> dict:
    (entry,) = [e for e in run.summary["results"] if e["compressor"] == compressor
                and all(e["params"].get(k) == v for k, v in params.items())]
    return entry


def _matches(rows: pd.DataFrame, cond: dict, entry: dict) -> None:
    active = np.asarray(cond["active"])
    clamped = np.flatnonzero(active & np.asarray(cond["clamped"]))
    # the reference clamps var(x) * var(y) at 1e-12, which decides r for features that barely fire;
    # featsurv computes Pearson's r as it is (hub_cache's SAE gain keeps features clear of this)
    assert clamped.size == 0, f"features {clamped[:10]} fall under the reference's 1e-12 clamp"
    assert np.array_equal(rows["active"].to_numpy(bool), active), "active sets differ"
    r_fs, r_ref = rows["r"].to_numpy(), np.asarray(cond["corr"])
    assert np.abs(r_fs[active] - r_ref[active]).max() < 1e-4
    assert entry["n_active"] == cond["n_active"]
    assert entry["survived"] == pytest.approx(cond["survived"], abs=1e-12)
    assert entry["damaged"] == pytest.approx(cond["damaged"], abs=1e-12)
    assert entry["blurred"] == pytest.approx(1 - cond["survived"] - cond["damaged"], abs=1e-12)


def _xfail_unless(supported: bool, reason: str, check) -> None:
    """Run ``check``; where the feature it needs is not on this branch yet, a failure is an xfail."""
    if supported:
        check()
        return
    try:
        check()
    except AssertionError:
        pytest.xfail(reason)
