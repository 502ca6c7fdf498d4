"""The Python API: featsurv.audit / compare / load_run fill the CLI's defaults, return a Run, write a
result directory only with out=, report progress through logging or a callback; docs/python-api.md's
examples run."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import featsurv
from featsurv.cli import cli
from featsurv.cli.common import flag_of
from featsurv.defaults import audit_configurations, compare_setup, option_notes
from featsurv.plugins import get_registry
from featsurv.presets import get_preset
from featsurv.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def user_files(tiny_models, tiny_sae, tiny_corpus):
    """A user's model, SAE (contexts of 256, so 32768 tokens are 128 contexts) and text file."""
    model = tiny_models["gpt_neox"]
    return model, tiny_sae(model, context_size=256), tiny_corpus


def cli_summary(args: list[str], out: Path) -> dict:
    res = CliRunner().invoke(cli, [*args, "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text())


def assert_bands_match(run: featsurv.Run, summary: dict) -> None:
    """run.bands() holds exactly the CLI's counts and fractions, and features.parquet agrees."""
    bands = run.bands()
    entries = {(e["label"], e["hook"]): e for e in summary["results"]}
    assert len(bands) == 3 * len(entries) > 0
    for row in bands.itertuples():
        entry = entries[(row.config, row.hook)]
        assert row.count == entry["counts"][row.band]
        assert row.fraction == pytest.approx(entry[row.band], abs=1e-12)
        assert row.n_active == entry["n_active"]
        active = run.features(config=row.config, hook=row.hook, active=True)
        assert int((active["band"] == row.band).sum()) == row.count


def test_import_and_help_stay_light():
    code = ("import sys, featsurv; f = featsurv.audit, featsurv.compare, featsurv.load_run, featsurv.Run;"
            "heavy = [m for m in ('torch', 'transformers', 'sae_lens', 'pandas') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_api_functions_are_not_replaced_by_the_modules_of_the_same_name():
    import featsurv.audit
    import featsurv.compare
    from featsurv.audit import AuditSession  # the modules still import

    assert AuditSession and callable(featsurv.audit) and callable(featsurv.compare)
    assert featsurv.audit.__module__ == "featsurv.api" and featsurv.compare.__module__ == "featsurv.api"


def test_notebook_style_audit_of_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = featsurv.audit("rtn", params={"bits": 3}, n_tokens=2048, bootstrap=0, out="api", progress=False)
    summary = cli_summary(["audit", "rtn", "-p", "bits=3", "--tokens", "2048", "--bootstrap", "0"], tmp_path / "cli")
    assert_bands_match(run, summary)
    loaded = featsurv.load_run("api")
    assert loaded.path == (tmp_path / "api").resolve() == run.path and loaded.id == run.id
    assert run.id == json.loads((tmp_path / "api" / "run.json").read_text())["run_id"] != summary["run_id"]
    assert loaded.bands().equals(run.bands())
    assert_bands_match(loaded, summary)
    # the preset's values, as the CLI fills them
    assert run.record["options"]["preset"] == "featsurv-tiny" and run.record["options"]["batch_size"] == 16
    assert run.hooks() == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def test_notebook_style_audit_of_a_user_model(tmp_path, user_files):
    model, sae, corpus = user_files
    run = featsurv.audit("rtn", model=model, saes=sae, dataset=corpus, out=tmp_path / "api")
    summary = cli_summary(["audit", "rtn", "--model", str(model), "--sae", str(sae), "--dataset", str(corpus)],
                          tmp_path / "cli")
    loaded = featsurv.load_run(tmp_path / "api")
    assert_bands_match(loaded, summary)
    assert loaded.labels() == ["rtn int8"]  # every parameter at its declared default
    opts = loaded.record["options"]
    assert opts["n_tokens"] == 32768 and opts["preset"] is None and opts["device"] == "cpu"
    assert loaded.summary["baseline"]["context"] == 256  # the SAE's context_size
    assert "ci" in loaded.summary["results"][0]  # the default bootstrap ran
    assert loaded.results()["survived"].tolist() == [e["survived"] for e in summary["results"]]


def test_nothing_is_written_without_out_and_progress_goes_to_logging(tmp_path, monkeypatch, user_files, caplog):
    model, sae, corpus = user_files
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="featsurv"):
        run = featsurv.audit("rtn", {"bits": [8, 4]}, model=model, saes=[sae], dataset=corpus, n_tokens=1024,
                             bootstrap=0)
    assert list(tmp_path.iterdir()) == [] and run.path is None
    messages = [r.getMessage() for r in caplog.records if r.name == "featsurv"]
    assert any(m.startswith("loading model") for m in messages)
    starts = [m for m in messages if m.startswith("configuration ")]
    assert starts[0].startswith("configuration 1 of 2: rtn int8") and starts[-1].startswith("configuration 2 of 2: rtn int4")
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/pass|pass/s)\]", starts[-1]), starts[-1]  # elapsed<ETA, rate
    assert run.features(config="rtn int4", active=False).shape[0] + run.features(config="rtn int4", active=True).shape[0] == 64


def test_compare_through_the_api(user_files):
    model, sae, corpus = user_files
    events = []
    pair = featsurv.compare("rtn", "pruning", a_params={"bits": 4}, model=model, saes=sae, dataset=corpus,
                            n_tokens=1024, steps=2, rtol=0.0, bootstrap=0, progress=events.append)
    (c,) = pair.comparisons
    assert c["a"] == "rtn int4" and c["hook"] == "blocks.1.hook_resid_post" and 0 <= c["matched_params"]["sparsity"] <= 0.8
    assert pair.labels() == ["rtn int4", pair.summary["results"][1]["label"]]
    starts = [e for e in events if e.kind == "start"]
    assert [e.configuration for e in starts] == [1, 2, 3, 4], "\n".join(e.message for e in events)  # A, two bisection steps, B
    assert starts[0].configurations == 4 and starts[-1].configurations == 4 and starts[-1].fraction < 1


def test_bad_input_fails_before_any_work(tmp_path):
    with pytest.raises(featsurv.FeatsurvError, match="'nope'.*bootstrap"):
        featsurv.audit("rtn", nope=1)
    with pytest.raises(featsurv.FeatsurvError, match="Bad value 1 for parameter 'bits'"):
        featsurv.audit("rtn", {"bits": 1}, out=tmp_path / "r")
    with pytest.raises(featsurv.FeatsurvError, match="Bad n_tokens 0"):
        featsurv.audit("rtn", n_tokens=0)
    with pytest.raises(featsurv.FeatsurvError, match="without an SAE"):
        featsurv.audit("rtn", model="some/model", preset="featsurv-tiny")
    with pytest.raises(featsurv.FeatsurvError, match="Bad progress"):
        featsurv.audit("rtn", progress=3)
    with pytest.raises(featsurv.FeatsurvError, match="not a complete featsurv result directory.*missing manifest.json"):
        featsurv.load_run(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_defaults_the_cli_and_the_api_share():
    registry, preset = get_registry(), get_preset(None)
    configs, notes = audit_configurations(registry, "rtn", {}, preset)
    assert [p["bits"] for _, p in configs] == [8, 7, 6, 5, 4, 3]
    assert "bits=8,7,6,5,4,3" in notes[0] and "declared default bits=8" in notes[0]
    (only,), notes = audit_configurations(registry, "rtn", {"granularity": ["tensor"]}, None)
    assert only[1] == {**{p.name: p.default for p in registry.get("compressors", "rtn").params}, "granularity": "tensor"}
    assert notes == []
    setup = compare_setup(registry, "rtn", "magnitude", {}, {}, preset)
    assert setup.a[1]["bits"] == 3 and setup.knob_range == (0.0, 0.8) and setup.steps == 8
    assert "bits=3" in setup.notes[0] and "own compare default: bits=6" in setup.notes[0]
    plain = compare_setup(registry, "rtn", "pruning", {}, {}, None)
    assert plain.a[1]["bits"] == 6 and plain.notes == [] and plain.knob_range is None
    (line,) = option_notes(preset, {}, flag_of)
    assert "--batch-size 16 (default 8)" in line and "--context 128" in line
    assert option_notes(preset, {"batch_size": 4, "context": 64, "prepend_bos": True}, flag_of) == []


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_meter_throttles_and_estimates(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("featsurv.progress.time.perf_counter", clock)
    events = []
    p = Progress(mode=events.append)
    p.plan(2)
    p.step("FP pass", 0, 10)
    for i in range(1, 11):  # ten batches in 1 s: one progress event, and the last
        clock.t = i / 10
        p.step("FP pass", i, 10)
    progress = [e for e in events if e.kind == "progress"]
    assert len(progress) == 2 and progress[-1].fraction == pytest.approx(1 / 3)
    assert progress[-1].eta == pytest.approx(2.0)  # 1 s per pass, two passes left
    p.configuration("rtn int8")
    assert events[-1].kind == "start" and events[-1].message.startswith("configuration 1 of 2: rtn int8:  33%")
    p("hello")
    assert str(events[-1]) == "hello" and events[-1].kind == "message"
    quiet = []
    q = Progress(quiet=True, mode=quiet.append)
    q("x"), q.configuration("y"), q.step("y", 1, 1)
    assert quiet == []


def test_progress_on_a_stream_that_is_not_a_terminal(monkeypatch):
    import io

    clock = Clock()
    monkeypatch.setattr("featsurv.progress.time.perf_counter", clock)
    out = io.StringIO()
    p = Progress(stream=out)
    p.plan(1)
    p.step("FP pass", 0, 100)
    for i in range(1, 101):  # 100 batches over 5 s: at most one line a second, plus the last
        clock.t = i / 20
        p.step("FP pass", i, 100)
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 6 and "\r" not in out.getvalue()
    assert lines[-1].endswith("] FP pass:  50% [00:05<00:05,  5.00s/pass]"), lines[-1]


def test_the_documented_examples_run(tmp_path, monkeypatch, user_files):
    model, sae, corpus = user_files
    for name, target in (("my-model", model), ("my-sae", sae), ("corpus.txt", corpus)):
        (tmp_path / name).symlink_to(target)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
