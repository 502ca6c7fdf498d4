"""The bnb compressor through the featsurv host: `featsurv compare bnb rtn` on the embedded default, then `gate`."""
from __future__ import annotations

import json

from click.testing import CliRunner

from featsurv.cli import cli


def test_compare_bnb_rtn_on_the_embedded_default_passes_gate(bnb_registry, tmp_path):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "bnb", "rtn", "--tokens", "2048", "--bootstrap", "0", "--steps", "3",
                                   "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    nf4, rtn = summary["results"][0], summary["results"][-1]
    assert nf4["compressor"] == "bnb" and nf4["label"] == "bnb nf4" and rtn["compressor"] == "rtn"
    assert nf4["params"] == {"mode": "nf4", "threshold": 6.0, "double_quant": False, "blocksize": 64}
    assert 0.0 < nf4["survived"] <= 1.0
    assert any(p["name"] == "bnb" for p in json.loads((out / "run.json").read_text())["plugins"])
    floor = min(r["survived"] for r in summary["results"])
    passed = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", f"{max(floor - 1e-3, 0):.4f}"])
    assert passed.exit_code == 0 and "gate: PASS" in passed.output, passed.output
    assert floor < 0.999  # 4-bit damages some features on the embedded model
    failed = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", f"{floor + 1e-3:.4f}"])
    assert failed.exit_code == 1 and "gate: FAIL" in failed.output


def test_bad_mode_is_an_exit_2_error_before_any_work(bnb_registry, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "bnb", "-p", "mode=int4", "-q", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "Bad value 'int4' for parameter 'mode' of bnb" in res.output and "int8, nf4, fp4" in res.output
    assert not (tmp_path / "bad").exists()
