"""CLI conventions: --json on audit, compare and gate (one document on stdout, progress on stderr);
progress lines with configuration i of n, rate and ETA; every option's help shows its default;
preset overrides said in the progress output; rich tables aligned for long labels; --revision."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from featsurv import FeatsurvError
from featsurv.cli import cli
from featsurv.cli.table import print_summary

BIN = Path(sys.executable).parent
ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/pass|pass/s)\]")


@pytest.fixture(scope="module")
def args(tiny_models, tiny_sae, tiny_corpus):
    model = tiny_models["gpt_neox"]
    return ["--model", str(model), "--sae", str(tiny_sae(model)), "--dataset", str(tiny_corpus),
            "--tokens", "512", "--bootstrap", "0"]


def pipe(command: list[str]) -> subprocess.CompletedProcess:
    """`featsurv ... | python -c 'import json,sys; json.load(sys.stdin)'`, as a shell runs it."""
    shell = (" ".join(f"'{a}'" for a in [str(BIN / "featsurv"), *command])
             + f" | '{sys.executable}' -c 'import json,sys; d = json.load(sys.stdin); print(json.dumps(d))'")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def audited(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("json") / "audit"
    res = pipe(["audit", "rtn", "-p", "bits=8,4", *args, "--json", "--out", str(out)])
    assert res.returncode == 0, res.stderr
    return out, json.loads(res.stdout), res.stderr


def test_audit_json_is_one_document_and_progress_shows_i_of_n_and_an_eta(audited):
    out, doc, stderr = audited
    assert doc["path"] == str(out) and doc["schema_version"] == 2
    assert doc["run_id"] == json.loads((out / "run.json").read_text())["run_id"]
    assert doc["summary"] == json.loads((out / "summary.json").read_text())
    assert "features.parquet" in doc["files"] and "report.html" in doc["files"]
    lines = stderr.splitlines()
    for i in (1, 2):
        started = [line for line in lines if f"configuration {i} of 2: rtn int{8 if i == 1 else 4}" in line]
        assert started and all(ETA.search(line) for line in started), started
    assert "\r" not in stderr  # stderr is not a terminal: whole lines only


def test_compare_json(args, tmp_path):
    res = pipe(["compare", "rtn", "pruning", "-p", "bits=4", *args, "--steps", "2", "--json", "--out",
                str(tmp_path / "c")])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    (c,) = doc["summary"]["comparisons"]
    assert c["a"] == "rtn int4" and "jaccard" in c and doc["path"] == str(tmp_path / "c")
    assert "configuration 1 of" in res.stderr and "matching pruning sparsity" in res.stderr


def test_gate_json_keeps_the_exit_code(audited):
    out, _, _ = audited
    ok = pipe(["gate", str(out), "--min-survival", "0", "--json"])
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["passed"] is True and doc["n_configurations"] == doc["n_passed"] == 2
    assert [c["label"] for c in doc["configurations"]] == ["rtn int8", "rtn int4"]
    fail = CliRunner().invoke(cli, ["gate", str(out), "--max-ppl-change", "-0.99", "--json"])
    assert fail.exit_code == 1
    doc = json.loads(fail.stdout)
    assert doc["passed"] is False and doc["n_passed"] == 0 and doc["max_ppl_change"] == -0.99
    assert doc["configurations"][1]["reasons"][1].startswith("perplexity change")


def test_no_table_in_json_mode(args, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=4", *args, "-q", "--json", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["results"][0]["label"] == "rtn int4"


def test_attribute_and_plan_json_are_one_document(args, tmp_path):
    res = pipe(["attribute", "rtn", "-p", "bits=3", "--by", "layer", "--no-complements", *args, "--json",
                "--out", str(tmp_path / "a")])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    groups = [g["name"] for g in doc["summary"]["attribution"]["groups"]]
    assert len(groups) == 2 and doc["run_id"] == json.loads((tmp_path / "a" / "run.json").read_text())["run_id"]
    assert "configuration 2 of 2" in res.stderr  # one pass per group, counted
    res = pipe(["plan", "rtn", "--values", "3,8", "--min-survival", "0", "--by", "layer", *args, "--json",
                "--out", str(tmp_path / "p")])
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["summary"]["plan"]["status"] and "plan.toml" in doc["files"]


def test_gate_watch_json(audited, tmp_path):
    out, _, _ = audited
    watch = tmp_path / "watch.txt"
    watch.write_text("0\n1\n")
    res = CliRunner().invoke(cli, ["gate", str(out), "--watch", str(watch), "--min-watched-survival", "0", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["watch"] == str(watch) and doc["min_survival"] is None and doc["min_watched_survival"] == 0
    assert [c["label"] for c in doc["configurations"]] == ["rtn int8 [watched]", "rtn int4 [watched]"]


@pytest.mark.parametrize("command", ["audit", "compare", "gate", "attribute", "plan"])
def test_every_option_has_help_that_shows_its_default(command):
    # the help option's names as the real command line has them: click caches a command's help option
    # on first use, so a context without them would change what docs/cli.md's check renders later
    ctx = click.Context(cli, info_name="featsurv", help_option_names=["-h", "--help"])
    cmd = cli.get_command(ctx, command)
    for param in cmd.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        shows = "[default: " in (param.help or "") or (param.show_default is True and param.default is not None)
        assert param.help and shows, f"{command} {param.opts}"
    assert "--json" in cmd.get_help(click.Context(cmd, info_name=command, parent=ctx))


def test_a_preset_override_of_a_default_is_said_in_the_progress_output(tmp_path):
    blocker = tmp_path / "busy"
    blocker.mkdir()
    (blocker / "x").write_text("x")  # --out holds other files: the run stops after the notes, before loading
    res = CliRunner().invoke(cli, ["compare", "rtn", "magnitude", "--out", str(blocker)])
    assert res.exit_code == 2
    assert "preset featsurv-tiny runs A as rtn bits=3 (rtn's own compare default: bits=6)" in res.stderr
    assert "--batch-size 16 (default 8)" in res.stderr
    res = CliRunner().invoke(cli, ["audit", "rtn", "--out", str(blocker)])
    assert "preset featsurv-tiny runs rtn bits=8,7,6,5,4,3 (declared default bits=8)" in res.stderr


def test_long_labels_keep_the_columns_aligned():
    base = {"compressor": "rtn", "hook": "blocks.1.hook_resid_post", "perplexity": 40.0, "perplexity_change": 0.004,
            "survived": 0.6, "blurred": 0.3, "damaged": 0.1, "mean_r": 0.8}
    labels = ["rtn int8", "rtn int4 granularity=group:32 symmetric=false arith=native", "rtn int6 granularity=tl"]
    summary = {"baseline": {"n_tokens": 10, "saes": {}},
               "results": [{**base, "label": lab, "perplexity_misses_damage": i == 1} for i, lab in enumerate(labels)]}

    @click.command()
    def show():
        print_summary(summary, None)

    out = CliRunner().invoke(show, []).output.splitlines()
    header = next(line for line in out if line.startswith("configuration"))
    rows = [next(line for line in out if line.startswith(lab + " ")) for lab in labels]
    for column in ("hook point", "survived", "mean r"):
        end = header.index(column) + len(column)
        for row in rows:  # right-aligned numbers end under their header; the hook column starts under its own
            if column == "hook point":
                assert row[header.index(column):].startswith("blocks.1"), row
            else:
                assert row[end - 1] != " " and (len(row) == end or row[end] == " "), (column, row)
    assert "<< PERPLEXITY MISSES DAMAGE" in rows[1]


class Legacy:
    """A third-party adapter's load() written before --revision existed."""

    name = "legacy"

    def load(self, source, *, dtype="float32", device="cpu", trust_remote_code=False):
        raise AssertionError("not reached")


def test_revision_reaches_adapters_that_take_it_and_is_refused_by_those_that_do_not():
    from featsurv.hf import HFDecoderAdapter
    from featsurv.loading import load_keywords
    from featsurv.options import make_options

    assert load_keywords(Legacy(), revision=None) == {}
    with pytest.raises(FeatsurvError, match="'legacy' does not take revision"):
        load_keywords(Legacy(), revision="v2")
    assert load_keywords(HFDecoderAdapter(), revision="v2") == {"revision": "v2"}
    with pytest.raises(FeatsurvError, match="Bad revision 'a b'"):
        make_options(model="m", saes=["s"], revision="a b").validate()


def test_revision_selects_the_hub_snapshot(tmp_path, tiny_models):
    """A hub cache laid out as the hub delivers it, two revisions of one model: --revision picks one."""
    import shutil

    repo = tmp_path / "hub" / "models--org--tiny"
    for ref, commit, seed in (("main", "a" * 40, 0), ("v2", "b" * 40, 1)):
        snap = repo / "snapshots" / commit
        shutil.copytree(tiny_models["gpt_neox"], snap)
        if seed:
            from featsurv.testing import build_tiny_model
            from transformers import AutoTokenizer

            build_tiny_model("gpt_neox", snap, AutoTokenizer.from_pretrained(snap), seed=seed)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    code = ("import sys; from featsurv.loading import load_model; from featsurv.plugins import get_registry;"
            "m = load_model(get_registry(), 'org/tiny', revision=sys.argv[1] or None).model;"
            "print(float(m.gpt_neox.embed_in.weight.sum()))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    sums = [float(subprocess.run([sys.executable, "-c", code, rev], capture_output=True, text=True, env=env,
                                 check=True).stdout.split()[-1]) for rev in ("", "main", "v2")]
    assert sums[0] == sums[1] != sums[2]


def test_device_auto_picks_cuda_then_mps_then_cpu_and_an_unavailable_mps_is_a_clean_error(monkeypatch):
    import torch

    from featsurv.options import OptionError, resolve_device

    mps = torch.backends.mps
    for cuda, has_mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(mps, "is_available", lambda has_mps=has_mps: has_mps)
        assert resolve_device("auto") == expected
    with pytest.raises(OptionError) as err:
        resolve_device("mps")  # MPS unavailable (the last setting above)
    shown = err.value.shown_as("--device")
    assert "Bad --device 'mps'" in shown.message and "MPS is not available" in shown.message
    res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=4", "--device", "mps", "--tokens", "512", "-q"])
    assert res.exit_code == 2 and "MPS is not available" in res.output and "Traceback" not in res.output
