"""`featsurv gate`: exit 0 when every configuration passes, 1 when one fails, 2 for a bad directory."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv import FeatsurvError
from featsurv.cli.gate import gate_cmd
from featsurv.gate import evaluate_gate
from featsurv.results import RunResult, write_run


def result(label, survived, ppl_change, misses=False, hook="blocks.4.hook_resid_post"):
    return {"label": label, "compressor": "rtn", "params": {}, "hook": hook, "perplexity": 10.0,
            "perplexity_change": ppl_change, "n_features": 100, "n_active": 80, "survived": survived,
            "blurred": 1 - survived if survived == survived else float("nan"), "damaged": 0.0,
            "perplexity_misses_damage": misses}


def write(tmp_path: Path, results) -> Path:
    run = RunResult({"command": "audit"}, {"baseline": {"perplexity": 10.0, "n_tokens": 10}, "results": results},
                    pd.DataFrame({"config": ["x"], "feature": [0], "r": [1.0]}))
    return write_run(tmp_path / "run", run)


RESULTS = [result("rtn bits=8", 0.98, 0.010), result("rtn bits=6", 0.62, 0.004, misses=True)]


def test_exit_codes(tmp_path):
    d = str(write(tmp_path, RESULTS))
    runner = CliRunner()
    ok = runner.invoke(gate_cmd, [d, "--min-survival", "0.5"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.count("PASS  ") == 2 and "gate: PASS (2 of 2" in ok.stdout

    bad = runner.invoke(gate_cmd, [d, "--min-survival", "0.9"])
    assert bad.exit_code == 1
    lines = bad.stdout.splitlines()
    assert lines[0].startswith("PASS  rtn bits=8")
    assert lines[1].startswith("FAIL  rtn bits=6") and "survived 62.00% < 90.00%" in lines[1]
    assert "perplexity misses damage" in lines[1]
    assert "gate: FAIL (1 of 2" in bad.stdout

    ppl = runner.invoke(gate_cmd, [d, "--min-survival", "0.5", "--max-ppl-change", "0.005"])
    assert ppl.exit_code == 1
    assert "FAIL  rtn bits=8" in ppl.stdout and "perplexity change +1.00% > +0.50%" in ppl.stdout
    assert "PASS  rtn bits=6" in ppl.stdout

    default = runner.invoke(gate_cmd, [d])  # --min-survival defaults to 0.9
    assert default.exit_code == 1

    missing = runner.invoke(gate_cmd, [str(tmp_path / "nowhere"), "--min-survival", "0.9"])
    assert missing.exit_code == 2 and "not a featsurv result directory" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(gate_cmd, [str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "missing" in empty.output
    out_of_range = runner.invoke(gate_cmd, [d, "--min-survival", "1.5"])
    assert out_of_range.exit_code == 2


def test_missing_values_fail(tmp_path):
    lines = evaluate_gate({"results": [result("a", float("nan"), 0.0), result("b", 0.95, None)]},
                          0.9, max_ppl_change=0.01)
    assert [line.passed for line in lines] == [False, False]
    assert "unknown" in lines[0].text() and "not measured" in lines[1].text()
    # without a perplexity gate, a missing perplexity is fine
    assert evaluate_gate({"results": [result("b", 0.95, None)]}, 0.9)[0].passed
    # null in JSON (NaN written by the run) fails through the CLI too
    d = str(write(tmp_path, [result("a", float("nan"), 0.0)]))
    assert CliRunner().invoke(gate_cmd, [d, "--min-survival", "0.1"]).exit_code == 1


def test_no_results_is_a_user_error(tmp_path):
    with pytest.raises(FeatsurvError):
        evaluate_gate({"results": []})
    d = str(write(tmp_path, []))
    assert CliRunner().invoke(gate_cmd, [d]).exit_code == 2


def test_several_hooks_named(tmp_path):
    d = str(write(tmp_path, [result("rtn bits=8", 0.98, 0.0, hook="blocks.1.hook_resid_post"),
                             result("rtn bits=8", 0.97, 0.0, hook="blocks.2.hook_resid_post")]))
    out = CliRunner().invoke(gate_cmd, [d])
    assert out.exit_code == 0
    assert "rtn bits=8 @ blocks.1.hook_resid_post" in out.stdout
    assert "rtn bits=8 @ blocks.2.hook_resid_post" in out.stdout
