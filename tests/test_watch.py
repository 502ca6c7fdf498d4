"""Watch lists: parsing, checking against a run, the watched section, and `featsurv gate --watch`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv import FeatsurvError
from featsurv.cli.gate import gate_cmd
from featsurv.results import RunResult, write_run
from featsurv.watch import WatchItem, gate_lines, load_watch, parse_watch, resolve_watch, watched_section

H1, H2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def features(hooks=(H1, H2), configs=("rtn int6", "rtn int3"), d=6):
    """r per (config, hook, feature) chosen by hand: feature f at config c has r = 1 - 0.1 f (c + 1)."""
    rows = []
    for ci, config in enumerate(configs):
        for hook in hooks:
            for f in range(d):
                r = 1 - 0.1 * f * (ci + 1)
                band = "survived" if r > 0.9 else ("damaged" if r < 0.5 else "blurred")
                rows.append({"config": config, "hook": hook, "feature": f, "r": r, "band": band,
                             "active": f != d - 1})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- parsing
def test_parse_the_accepted_formats():
    text = """# my circuit
12
 40 77
blocks.1.hook_resid_post,5,induction head,"copies, then moves"
blocks.2.hook_resid_post\t9\tname9
3,name three,a note

12
"""
    items = parse_watch(text)
    assert items == [WatchItem(12), WatchItem(40), WatchItem(77),
                     WatchItem(5, H1, "induction head", "copies, then moves"), WatchItem(9, H2, "name9"),
                     WatchItem(3, None, "name three", "a note")]  # the second 12 is a duplicate
    csv = "name,feature,hook,extra\nfirst,1,blocks.1.hook_resid_post,x\n,2,blocks.2.hook_resid_post,y\n"
    assert parse_watch(csv) == [WatchItem(1, H1, "first"), WatchItem(2, H2, "")]


@pytest.mark.parametrize("text, needle", [
    ("12\nabc\n", "line 2: 'abc' is not a feature id"),
    ("blocks.1.hook_resid_post,x\n", "line 1: 'x' is not a feature id"),
    ("-3\n", "feature id -3 is negative"),
    ("# nothing\n\n", "names no features"),
    ("hook,feature\nblocks.1.hook_resid_post,\n", "no value in the feature column"),
    ("1,a,b,c\n", "4 fields after a bare feature id"),
    ("onlyahook\n", "line 1: 'onlyahook' is not a feature id"),
    ("a,1,b,c,d\n", "line 1: 5 fields"),
])
def test_bad_lines_name_the_line(text, needle):
    with pytest.raises(FeatsurvError) as err:
        parse_watch(text, "watch file 'w.txt'")
    assert needle in str(err.value) and err.value.exit_code == 2


def test_missing_file(tmp_path):
    with pytest.raises(FeatsurvError, match="does not exist"):
        load_watch(tmp_path / "nope.txt")


# --------------------------------------------------------------------------- against a run
def test_unknown_hooks_and_ids_are_named():
    df = features()
    with pytest.raises(FeatsurvError) as err:
        resolve_watch(df, [WatchItem(1, "blocks.9.hook_mlp_out"), WatchItem(2, "blocks.7.hook_resid_pre"), WatchItem(1, H1)])
    assert "blocks.7.hook_resid_pre, blocks.9.hook_mlp_out" in str(err.value) and H1 in str(err.value)
    with pytest.raises(FeatsurvError) as err:
        resolve_watch(df, [WatchItem(99, H1), WatchItem(2, H1), WatchItem(6, H2)])
    assert "99 @ blocks.1.hook_resid_post, 6 @ blocks.2.hook_resid_post" in str(err.value)
    with pytest.raises(FeatsurvError, match="bare feature ids"):
        resolve_watch(df, [WatchItem(1)])
    one = features(hooks=(H1,))
    assert resolve_watch(one, [WatchItem(1), WatchItem(1, H1)]) == [WatchItem(1, H1)]


def test_watched_section_against_a_hand_computation():
    df = features()
    watch = [WatchItem(0, H1, "zero"), WatchItem(1, H2), WatchItem(2, H1, "two"), WatchItem(5, H2)]
    sec = watched_section(df, watch, survived_above=0.9)
    assert sec["n"] == 4 and sec["survived_above"] == 0.9
    assert [c["config"] for c in sec["configs"]] == ["rtn int6", "rtn int3"]
    # r = 1 - 0.1 f (c+1): int6 -> 1.0, 0.9, 0.8, 0.5; int3 -> 1.0, 0.8, 0.6, 0.0
    int6, int3 = sec["configs"]
    assert [f["r"] for f in int6["features"]] == pytest.approx([1.0, 0.9, 0.8, 0.5])
    assert [f["survived"] for f in int6["features"]] == [True, False, False, False]  # 0.9 is not > 0.9
    assert int6["n_survived"] == 1 and int6["survived"] == 0.25
    assert [f["band"] for f in int3["features"]] == ["survived", "blurred", "blurred", "damaged"]
    assert int3["not_survived"] == [{"hook": H2, "feature": 1, "name": ""}, {"hook": H1, "feature": 2, "name": "two"},
                                    {"hook": H2, "feature": 5, "name": ""}]
    assert int3["features"][3]["active"] is False
    looser = watched_section(df, watch, survived_above=0.7)
    assert looser["configs"][0]["n_survived"] == 3
    json.dumps(sec)  # JSON-ready for summary.json
    lines = gate_lines(sec, 1.0)
    assert [line.passed for line in lines] == [False, False]
    assert "not survived: 1 @ blocks.2.hook_resid_post r=0.9000 blurred" in lines[0].text()
    assert [line.passed for line in gate_lines(sec, 0.25)] == [True, True]  # 1 of 4 each
    assert [line.passed for line in gate_lines(sec, 0.26)] == [False, False]


# --------------------------------------------------------------------------- gate --watch
def write(tmp_path: Path, df: pd.DataFrame) -> Path:
    results = [{"label": c, "hook": h, "survived": 0.5, "perplexity_change": 0.0}
               for c in df["config"].unique() for h in df["hook"].unique()]
    run = RunResult({"command": "audit"}, {"baseline": {}, "metric_options": {"survival": {"survived_above": 0.9}},
                                           "results": results}, df)
    return write_run(tmp_path / "run", run)


def named(output: str) -> dict[str, set[tuple[str, int]]]:
    """config -> the (hook, feature) pairs a gate --watch line names as not survived."""
    out = {}
    for line in output.splitlines():
        m = re.match(r"(PASS|FAIL)  (.+) \[watched\]: (.*)", line)
        if m:
            lost = m.group(3).split("not survived: ")[1] if "not survived: " in m.group(3) else ""
            out[m.group(2)] = {(h, int(f)) for f, h in re.findall(r"(\d+) @ (\S+)", lost)}
    return out


def test_gate_watch_cli(tmp_path):
    d = str(write(tmp_path, features()))
    w = tmp_path / "w.csv"
    w.write_text(f"hook,feature,name\n{H1},0,keeps\n{H2},2,loses\n")
    res = CliRunner().invoke(gate_cmd, [d, "--watch", str(w), "--min-watched-survival", "1.0"])
    assert res.exit_code == 1, res.output
    assert named(res.output) == {"rtn int6": {(H2, 2)}, "rtn int3": {(H2, 2)}}
    assert "(loses)" in res.output and "survived 50.00%" not in res.output  # only the watch list is gated
    ok = CliRunner().invoke(gate_cmd, [d, "--watch", str(w), "--min-watched-survival", "0.5"])
    assert ok.exit_code == 0 and "gate: PASS" in ok.output
    both = CliRunner().invoke(gate_cmd, [d, "--watch", str(w), "--min-watched-survival", "0.5", "--min-survival", "0.9"])
    assert both.exit_code == 1 and "survived 50.00% < 90.00%" in both.output
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{H1},999\nblocks.5.hook_attn_out,1\n")
    err = CliRunner().invoke(gate_cmd, [d, "--watch", str(bad)])
    assert err.exit_code == 2 and "blocks.5.hook_attn_out" in err.output
    assert CliRunner().invoke(gate_cmd, [d, "--watch", str(tmp_path / "none.txt")]).exit_code == 2


# --------------------------------------------------------------------------- the embedded default
@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """`featsurv compare rtn magnitude` on the embedded default, 4096 tokens."""
    from featsurv.cli import cli

    out = tmp_path_factory.mktemp("compare") / "run"
    res = CliRunner().invoke(cli, ["compare", "rtn", "magnitude", "--tokens", "4096", "--bootstrap", "0", "-q",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, pd.read_parquet(out / "features.parquet")


def test_gate_watch_on_the_embedded_default(compared, tmp_path):
    out, df = compared
    active = df[df["active"]]
    configs = list(dict.fromkeys(active["config"]))
    assert len(configs) == 2
    pivot = active.pivot_table(index=["hook", "feature"], columns="config", values="r")
    kept = pivot[(pivot > 0.9).all(axis=1)].index[:4].tolist()
    lost = pivot[(pivot <= 0.9).any(axis=1)].sort_values(configs[0]).index[:4].tolist()
    assert len(kept) == 4 and len(lost) == 4
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("hook,feature\n" + "".join(f"{h},{f}\n" for h, f in kept + lost))
    res = CliRunner().invoke(gate_cmd, [str(out), "--watch", str(mixed), "--min-watched-survival", "1.0"])
    assert res.exit_code == 1, res.output
    got = named(res.output)
    for config in configs:  # exactly the watched features that did not survive under each configuration
        want = {(h, int(f)) for h, f in kept + lost if not pivot.loc[(h, f), config] > 0.9}
        assert got[config] == want and want
    good = tmp_path / "good.csv"
    good.write_text("".join(f"{h},{f}\n" for h, f in kept))
    res = CliRunner().invoke(gate_cmd, [str(out), "--watch", str(good), "--min-watched-survival", "1.0"])
    assert res.exit_code == 0, res.output
    assert res.output.count("PASS  ") == 2 and "gate: PASS" in res.output
    summary = json.loads((out / "summary.json").read_text())
    from featsurv.watch import thresholds

    sec = watched_section(df, str(mixed), thresholds(summary)["survived_above"])
    assert [c["n"] for c in sec["configs"]] == [8, 8]
    assert np.isclose(sec["configs"][0]["survived"], 1 - len(got[sec["configs"][0]["config"]]) / 8)
