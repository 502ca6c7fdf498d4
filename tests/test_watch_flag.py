"""`--watch FILE` on audit and compare: the watched section in summary.json, the CLI and the report."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.cli.gate import gate_cmd

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def _run(*args: str):
    return CliRunner().invoke(cli, [*args, "--tokens", "2048", "--bootstrap", "0"])


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A compare without a watch list: which features survive, to build a mixed list from."""
    out = tmp_path_factory.mktemp("probe") / "run"
    res = _run("compare", "rtn", "magnitude", "-q", "--out", str(out))
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out / "features.parquet")
    pivot = df[df["active"]].pivot_table(index=["hook", "feature"], columns="config", values="r")
    kept = pivot[(pivot > 0.9).all(axis=1)].index[:3].tolist()
    lost = pivot[(pivot <= 0.9).any(axis=1)].index[:3].tolist()
    assert len(kept) == 3 and len(lost) == 3
    return pivot, kept, lost


def _name(hook: str, feature: int) -> str:
    return f"L{hook.split('.')[1]}f{feature}"


@pytest.fixture(scope="module")
def watched(probe, tmp_path_factory):
    pivot, kept, lost = probe
    root = tmp_path_factory.mktemp("watched")
    wfile = root / "watch.csv"
    wfile.write_text("hook,feature,name\n" + "".join(f"{h},{f},{_name(h, f)}\n" for h, f in kept + lost))
    out = root / "run"
    res = _run("compare", "rtn", "magnitude", "--watch", str(wfile), "--out", str(out))
    assert res.exit_code == 0, res.output
    return out, wfile, res.output


def test_summary_holds_the_watched_section_by_hand(probe, watched):
    pivot, kept, lost = probe
    out, _, _ = watched
    section = json.loads((out / "summary.json").read_text())["watched"]
    assert section["n"] == 6 and section["survived_above"] == 0.9
    assert sorted(c["config"] for c in section["configs"]) == sorted(pivot.columns)
    for c in section["configs"]:
        want = {(h, int(f)) for h, f in kept + lost if not pivot.loc[(h, f), c["config"]] > 0.9}
        assert {(f["hook"], f["feature"]) for f in c["not_survived"]} == want and want
        assert c["n_survived"] == 6 - len(want) and c["survived"] == pytest.approx((6 - len(want)) / 6)
        for f in c["features"]:
            assert f["r"] == pytest.approx(pivot.loc[(f["hook"], f["feature"]), c["config"]], abs=1e-12)


def test_the_cli_and_the_report_show_the_watched_features(watched):
    out, _, output = watched
    assert "watched features (6; survived: r > 0.9):" in output
    html = (out / "report.html").read_text()
    assert "Watched features" in html and html.index("Watched features") < html.index("<h2>Results</h2>")


def test_gate_watch_fails_on_the_run_naming_the_non_survived(probe, watched):
    pivot, kept, lost = probe
    out, wfile, _ = watched
    res = CliRunner().invoke(gate_cmd, [str(out), "--watch", str(wfile), "--min-watched-survival", "1.0"])
    assert res.exit_code == 1, res.output
    for h, f in lost:
        assert f"({_name(h, f)}) r=" in res.output
    for h, f in kept:
        assert f"({_name(h, f)})" not in res.output


def test_unknown_ids_stop_before_any_configuration(tmp_path):
    wfile = tmp_path / "w.txt"
    wfile.write_text(f"{H1},5000\nblocks.7.hook_resid_post,1\n")
    res = _run("audit", "rtn", "-p", "bits=6", "--watch", str(wfile), "--out", str(tmp_path / "r"))
    assert res.exit_code == 2 and "blocks.7.hook_resid_post" in res.output, res.output
    assert "compressing" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_a_missing_or_malformed_file_stops_before_the_model_loads(tmp_path):
    for name, text in (("none.txt", None), ("bad.txt", "a,b,c,d,e\n")):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        res = _run("audit", "rtn", "-p", "bits=6", "--watch", str(path), "--out", str(tmp_path / "r"))
        assert res.exit_code == 2 and name in res.output, res.output
        assert "loading model" not in res.output and "Traceback" not in res.output
        assert not (tmp_path / "r").exists()
