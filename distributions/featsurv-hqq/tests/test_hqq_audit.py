"""The hqq compressor through the featsurv host: `featsurv compare hqq rtn` on the embedded default, then `gate`."""
from __future__ import annotations

import json

from click.testing import CliRunner

from featsurv.cli import cli


def test_compare_hqq_rtn_on_the_embedded_default_passes_gate(hqq_registry, tmp_path):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "hqq", "rtn", "--tokens", "2048", "--bootstrap", "0", "--steps", "3",
                                   "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    hqq, rtn = summary["results"][0], summary["results"][-1]
    assert hqq["compressor"] == "hqq" and hqq["label"] == "hqq int4" and rtn["compressor"] == "rtn"
    assert hqq["params"] == {"bits": 4, "group_size": 64, "axis": 1, "optimize": True, "round_zero": "auto",
                             "quant_zero": False, "quant_scale": False}
    assert 0.0 < hqq["survived"] <= 1.0 and hqq["perplexity"] > summary["baseline"]["perplexity"] * 0.9
    run = json.loads((out / "run.json").read_text())
    assert any(p["name"] == "hqq" for p in run["plugins"])
    # gate reads the result: it passes at a survival floor every configuration meets, and fails above it
    floor = min(r["survived"] for r in summary["results"])
    passed = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", f"{max(floor - 1e-3, 0):.4f}"])
    assert passed.exit_code == 0, passed.output
    assert "gate: PASS" in passed.output
    assert floor < 0.999  # int4 damages some features on the embedded model
    failed = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", f"{floor + 1e-3:.4f}"])
    assert failed.exit_code == 1 and "gate: FAIL" in failed.output


def test_bad_bits_is_an_exit_2_error_before_any_work(hqq_registry, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "hqq", "-p", "bits=7", "-q", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "Bad value '7' for parameter 'bits' of hqq" in res.output and "no 7-bit format" in res.output
    assert not (tmp_path / "bad").exists()
