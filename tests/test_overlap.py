"""Overlap of the damage two configurations do: hand-computed sets and scipy correlations."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from click.testing import CliRunner

try:
    from featsurv_plugins import metric_overlap as mo
except ModuleNotFoundError:  # source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from plugins import metric_overlap as mo

from featsurv import FeatsurvError
from featsurv.results import RunResult, write_run

R_A = np.array([0.95, 0.85, 0.40, 0.20, 0.99, 0.91])
R_B = np.array([0.90, 0.95, 0.45, 0.60, 0.97, 0.30])


def test_hand_computed_sets_and_scipy_correlations():
    s = mo.overlap_stats(R_A, R_B)
    # non-survived (r <= 0.9): A {1, 2, 3}; B {0, 2, 3, 5} (0.90 is not survived: strict >)
    assert (s["n_nonsurvived_a"], s["n_nonsurvived_b"]) == (3, 4)
    assert (s["n_nonsurvived_both"], s["n_nonsurvived_either"]) == (2, 5)
    assert s["jaccard"] == pytest.approx(2 / 5)
    # damaged (r < 0.5): A {2, 3}; B {2, 5}
    assert (s["n_damaged_a"], s["n_damaged_b"], s["n_damaged_both"], s["n_damaged_either"]) == (2, 2, 1, 3)
    assert s["jaccard_damaged"] == pytest.approx(1 / 3)
    sp = scipy.stats.spearmanr(1 - R_A, 1 - R_B)
    pe = scipy.stats.pearsonr(1 - R_A, 1 - R_B)
    assert s["spearman"] == pytest.approx(sp.statistic) and s["spearman_p"] == pytest.approx(sp.pvalue)
    assert s["pearson"] == pytest.approx(pe.statistic) and s["pearson_p"] == pytest.approx(pe.pvalue)
    # the correlation of damage scores equals that of r (d = 1 - r flips both signs)
    assert s["spearman"] == pytest.approx(scipy.stats.spearmanr(R_A, R_B).statistic)
    assert s["n_features"] == 6


def test_custom_thresholds_and_identity():
    s = mo.overlap_stats(R_A, R_B, survived_above=0.5, damaged_below=0.25)
    assert s["n_nonsurvived_a"] == 2 and s["n_nonsurvived_b"] == 2  # {2,3} and {2,5}
    assert s["n_damaged_a"] == 1 and s["n_damaged_b"] == 0
    assert s["jaccard_damaged"] == 0.0
    same = mo.overlap_stats(R_A, R_A)
    assert same["jaccard"] == 1.0 and same["spearman"] == pytest.approx(1.0)


def test_empty_sets_and_degenerate_inputs_are_nan():
    s = mo.overlap_stats([0.99, 0.95, 0.97], [0.98, 0.99, 0.93])
    assert math.isnan(s["jaccard"]) and math.isnan(s["jaccard_damaged"])
    assert s["n_nonsurvived_either"] == 0
    s = mo.overlap_stats([0.5], [0.4])
    assert math.isnan(s["spearman"]) and math.isnan(s["pearson"]) and s["jaccard"] == 1.0
    s = mo.overlap_stats([0.2, 0.2, 0.2], [0.1, 0.5, 0.9])
    assert math.isnan(s["pearson"])
    with pytest.raises(ValueError):
        mo.overlap_stats([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        mo.overlap_stats([0.1, float("nan")], [0.1, 0.2])


def make_run(tmp_path: Path, hooks=("blocks.1.hook_resid_post",)) -> RunResult:
    rows = []
    for hook in hooks:
        for label, r in (("rtn bits=6", R_A), ("magnitude sparsity=0.2", R_B)):
            # feature 6 is inactive (its r must be ignored); features are stored out of order
            rr = np.r_[r, 0.0]
            order = np.array([3, 0, 6, 5, 1, 4, 2])
            for f in order:
                rows.append({"config": label, "compressor": label.split()[0], "hook": hook, "feature": int(f),
                             "active": bool(f != 6), "r": float(rr[f]),
                             "band": "survived" if rr[f] > 0.9 else ("damaged" if rr[f] < 0.5 else "blurred"),
                             "silenced": False, "firing_rate": 0.01, "mean_act": 0.1, "peak_act": 3.0})
    run = RunResult({"command": "compare"}, {"baseline": {"perplexity": 10.0, "n_tokens": 100}, "results": [],
                                             "options": {}}, pd.DataFrame(rows))
    write_run(tmp_path / "run", run)
    return run


def test_overlap_between_aligns_and_uses_active_features(tmp_path):
    run = make_run(tmp_path)
    res = mo.overlap_between(run, "rtn bits=6", "magnitude sparsity=0.2")
    expected = mo.overlap_stats(R_A, R_B)
    assert res["a"] == "rtn bits=6" and res["hook"] == "blocks.1.hook_resid_post"
    for k, v in expected.items():
        assert res[k] == pytest.approx(v), k


def test_overlap_between_errors(tmp_path):
    run = make_run(tmp_path, hooks=("blocks.1.hook_resid_post", "blocks.2.hook_resid_post"))
    with pytest.raises(FeatsurvError) as err:
        mo.overlap_between(run, "rtn bits=5", "rtn bits=6")
    assert "rtn bits=5" in str(err.value) and "magnitude sparsity=0.2" in str(err.value)
    with pytest.raises(FeatsurvError) as err:
        mo.overlap_between(run, "rtn bits=6", "magnitude sparsity=0.2")
    assert "--hook" in str(err.value) and "blocks.2.hook_resid_post" in str(err.value)
    with pytest.raises(FeatsurvError):
        mo.overlap_between(run, "rtn bits=6", "magnitude sparsity=0.2", hook="blocks.9.hook_resid_post")
    res = mo.overlap_between(run, "rtn bits=6", "magnitude sparsity=0.2", hook="blocks.2.hook_resid_post")
    assert res["jaccard"] == pytest.approx(0.4)


def test_analyze_every_pair(tmp_path):
    run = make_run(tmp_path)
    assert mo.Overlap().analyze(run, {"pairs": ""}) is None  # nothing asked for: nothing stored
    out = mo.Overlap().analyze(run, {"pairs": "all"})
    assert list(out) == ["rtn bits=6 vs magnitude sparsity=0.2 @ blocks.1.hook_resid_post"]
    named = mo.Overlap().analyze(run, {"pairs": "rtn bits=6|magnitude sparsity=0.2"})
    assert named == out and mo.Overlap.name == "overlap"


def test_cli_overlap(tmp_path):
    from featsurv_plugins.overlap_command import overlap_cmd

    make_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(overlap_cmd, [str(tmp_path / "run"), "rtn bits=6", "magnitude sparsity=0.2"])
    assert res.exit_code == 0, res.output
    assert "Jaccard 0.400" in res.stdout and "Jaccard 0.333" in res.stdout and "Spearman" in res.stdout
    res = runner.invoke(overlap_cmd, [str(tmp_path / "run"), "rtn bits=6", "magnitude sparsity=0.2", "--json"])
    assert json.loads(res.stdout)["n_damaged_both"] == 1
    res = runner.invoke(overlap_cmd, [str(tmp_path / "run"), "rtn bits=6", "bogus"])
    assert res.exit_code == 2
    assert "bogus" in res.output and "Allowed: magnitude sparsity=0.2, rtn bits=6" in res.output
    res = runner.invoke(overlap_cmd, [str(tmp_path / "missing"), "a", "b"])
    assert res.exit_code == 2
