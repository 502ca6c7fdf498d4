"""`featsurv plan` and plan files: a verified per-group plan on the embedded default, the budget
search on a fragile model, plan files applied by `featsurv audit --plan`, groups in the host."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from featsurv import Compressor, FeatsurvError, Param, hookimpl
from featsurv.cli import cli

HOOK = "blocks.1.hook_resid_post"


def _summary(path):
    return json.loads((path / "summary.json").read_text())


@pytest.fixture(scope="module")
def embedded_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "run"
    res = CliRunner().invoke(cli, ["plan", "rtn", "--min-survival", "0.9", "--values", "3,4,8", "--by", "layer",
                                   "--tokens", "1024", "--bootstrap", "0", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_plan_on_the_embedded_default_meets_the_target_below_uniform(embedded_plan):
    out, output = embedded_plan
    summary = _summary(out)
    plan = summary["plan"]
    # layer 3 feeds neither audited hook point (blocks.1/2.hook_resid_post), so a plan can beat uniform here
    assert plan["status"] == "mixed", plan["message"]
    assert plan["uniform_best"] == 4 and plan["average"] < plan["uniform_best"]
    assert plan["setting"]["L3"] == 3
    final = [e for e in summary["results"] if e["label"] == plan["final"]["plan"]["label"]]
    assert len(final) == 2 and all(e["survived"] >= 0.9 for e in final)  # the verified audit of the plan
    assert {e["hook"]: e["survived"] for e in final} == plan["final"]["plan"]["survived"]
    assert plan["final"]["uniform"]["average"] == 4  # the uniform value nearest the plan's average
    assert "plan meets survival >= 90.0%" in output and "plan file:" in output


def test_the_search_path_is_recorded_and_every_step_is_a_pass(embedded_plan):
    out, _ = embedded_plan
    summary, run = _summary(out), json.loads((out / "run.json").read_text())
    path = summary["plan"]["path"]
    kinds = [s["kind"] for s in path]
    assert kinds[:3] == ["uniform"] * 3 and kinds[3:7] == ["attribution"] * 4 and set(kinds[7:]) == {"trial"}
    assert run["passes"]["total"] == 1 + len(path) == summary["plan"]["passes"]["total"]
    by = {(e["label"], e["hook"]): e for e in summary["results"]}
    for step in path[:7]:  # uniform and attribution steps are results entries, with the same numbers
        for hook, value in step["survived"].items():
            assert by[(step["label"], hook)]["survived"] == value
    trials = path[7:]
    assert all(isinstance(s["accepted"], bool) and s["accepted"] == s["feasible"] for s in trials)
    accepted = [s for s in trials if s["accepted"]]
    assert accepted[-1]["levels"] == summary["plan"]["setting"]
    assert all(min(s["survived"].values()) < 0.9 for s in trials if not s["accepted"])
    assert summary["attribution"]["rows"] and (out / "fig_attribution.png").is_file()


def test_audit_applies_the_plan_file_with_the_same_values(embedded_plan, tmp_path):
    out, _ = embedded_plan
    plan = _summary(out)["plan"]
    text = (out / "plan.toml").read_text()
    assert 'compressor = "rtn"' in text and '"L3" = { bits = 3 }' in text
    from featsurv.results import RunResult

    assert "plan.toml" in RunResult.load(out).manifest["files"]  # written with the run, verified by readers
    assert plan["plan_files"] == [str((out / "plan.toml").resolve())]
    res = CliRunner().invoke(cli, ["audit", "rtn", "--plan", str(out / "plan.toml"), "--tokens", "1024",
                                   "--bootstrap", "0", "-q", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    entries = _summary(tmp_path / "a")["results"]
    assert {e["label"] for e in entries} == {plan["final"]["plan"]["label"]}
    assert {e["hook"]: e["survived"] for e in entries} == plan["final"]["plan"]["survived"]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["groups"]["groups"]["L3"] == {"bits": 3}


@pytest.fixture(scope="module")
def fragile_args(tiny_models, tiny_sae, tiny_corpus, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_models["gpt_neox"]
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        w = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
        rows = torch.arange(w.shape[0])
        w[rows, rows % w.shape[1]] = 20 * w.abs().amax(dim=1)
    path = tmp_path_factory.mktemp("fragile") / "model"
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return ["--model", str(path), "--sae", str(tiny_sae(path, HOOK)), "--dataset", str(tiny_corpus),
            "--tokens", "512", "--context", "32", "--bootstrap", "0", "-q"]


def test_budget_plan_gives_the_fragile_group_the_bits(fragile_args, tmp_path):
    res = CliRunner().invoke(cli, ["plan", "rtn", "--values", "2,4,8", "--budget", "5", *fragile_args,
                                   "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    plan = _summary(tmp_path / "b")["plan"]
    assert plan["average"] <= 5 + 1e-9 and plan["status"] == "mixed", plan["message"]
    assert plan["setting"]["L0.mlp"] == 8
    uniform4 = next(s for s in plan["path"] if s["kind"] == "uniform" and s["average"] == 4)
    mine, theirs = plan["final"]["plan"], uniform4
    assert min(mine["survived"].values()) >= min(theirs["survived"].values())
    assert (min(mine["survived"].values()), mine["mean_r"][HOOK]) > (min(theirs["survived"].values()), theirs["mean_r"][HOOK])
    raises = [s for s in plan["path"] if s["action"].startswith("raise")]
    assert raises[0]["action"] == "raise L0.mlp 4 -> 8"  # the attribution's most damaging group is tried first
    assert plan["final"]["uniform"]["average"] == 4
    assert all(s["average"] <= 5 + 1e-9 for s in plan["path"] if s["kind"] == "trial")


def test_a_knob_where_more_is_more_compression(fragile_args, tmp_path):
    """Pruning's sparsity: the plan's average is the highest sparsity that meets the target."""
    res = CliRunner().invoke(cli, ["plan", "magnitude", "--values", "0.1,0.3,0.6", "--min-survival", "0.7",
                                   "--by", "layer", *fragile_args, "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    plan = _summary(tmp_path / "s")["plan"]
    assert plan["compressor"] == "pruning" and plan["knob"] == "sparsity" and plan["values"] == [0.1, 0.3, 0.6]
    assert plan["status"] in ("mixed", "uniform_optimal")
    assert plan["average"] >= plan["uniform_best"]
    assert min(plan["final"]["plan"]["survived"].values()) >= 0.7
    uniform = {s["average"]: s for s in plan["path"] if s["kind"] == "uniform"}
    assert plan["uniform_best"] == max(v for v, s in uniform.items() if s["feasible"])
    lowered = [s for s in plan["path"] if s["kind"] == "trial"]
    assert all(s["average"] > plan["uniform_best"] for s in lowered)  # every move compresses harder


class Blur(Compressor):
    """A third-party compressor with no knob declared and no notion of groups: it shrinks every
    weight toward its matrix's mean by a fraction ``amount`` (more is more compression)."""

    name = "blur"
    params = (Param("amount", float, 0.1, "fraction toward the mean", minimum=0.0, maximum=1.0),)

    def compress(self, targets, params):
        with torch.no_grad():
            for t in targets:
                w = t.weight
                w.sub_((w - w.mean()) * params["amount"])


class BlurPlugin:
    @hookimpl
    def register_compressors(self, register):
        register(Blur())


def test_plan_with_a_third_party_compressor(fragile_args, register_plugin, tmp_path):
    register_plugin(BlurPlugin(), name="blur")
    res = CliRunner().invoke(cli, ["plan", "blur", "--knob", "amount", "--values", "0.02,0.2,0.6",
                                   "--min-survival", "0.5", "--by", "layer", *fragile_args, "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    plan = _summary(tmp_path / "t")["plan"]
    assert plan["knob"] == "amount" and plan["values"] == [0.02, 0.2, 0.6]
    assert min(plan["final"]["plan"]["survived"].values()) >= 0.5
    assert set(plan["setting"]) == {"L0", "L1"} and plan["average"] >= plan["uniform_best"]
    text = (tmp_path / "t" / "plan.toml").read_text()
    res = CliRunner().invoke(cli, ["audit", "blur", "--plan", str(tmp_path / "t" / "plan.toml"), *fragile_args,
                                   "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    again = {e["hook"]: e["survived"] for e in _summary(tmp_path / "a")["results"]}
    assert again == plan["final"]["plan"]["survived"] and "amount = " in text


def test_an_unreachable_target_writes_no_plan_and_exits_1(fragile_args, tmp_path):
    res = CliRunner().invoke(cli, ["plan", "rtn", "--values", "2,3", "--min-survival", "1.0", *fragile_args,
                                   "--out", str(tmp_path / "u")])
    assert res.exit_code == 1, res.output
    plan = _summary(tmp_path / "u")["plan"]
    assert plan["status"] == "unreachable" and plan["setting"] is None and "No setting reaches" in plan["message"]
    assert not (tmp_path / "u" / "plan.toml").exists()


@pytest.mark.parametrize("args, needle", [
    (["--values", "3,4", "--min-survival", "0.9", "--budget", "4"], "exactly one"),
    (["--values", "3,4"], "exactly one"),
    (["--values", "3,4", "--budget", "2"], "--budget 2"),
    (["--values", "4", "--min-survival", "0.9"], "two values"),
    (["--values", "3,99", "--min-survival", "0.9"], "'99'"),
    (["--knob", "symmetric", "--values", "1,0", "--min-survival", "0.9"], "'symmetric'"),
    (["-p", "bits=4", "--values", "3,4", "--min-survival", "0.9"], "set by the plan"),
    (["--values", "3,4", "--min-survival", "1.5"], "1.5"),
    (["--values", "3,4", "--min-survival", "0.9", "--by", "head"], "'head'"),
])
def test_bad_plan_input_stops_before_any_work(fragile_args, tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["plan", "rtn", *args, *fragile_args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_plan_files_round_trip_and_bad_files_are_refused(tmp_path):
    from featsurv.plan_file import Plan, plan_toml, read_plan
    from featsurv.plugins import get_registry

    registry = get_registry()
    plan = Plan("rtn", "layer,type", {"symmetric": False, "granularity": "group:8", "arith": "fp32"},
                {"L0.attn": {"bits": 6}, "L0.mlp": {"bits": 3, "symmetric": True}}, "bits", 4.5, notes=["a note"])
    path = tmp_path / "p.toml"
    path.write_text(plan_toml(plan))
    back = read_plan(path, registry, "rtn")
    assert back.groups == plan.groups and back.by == "layer,type" and back.average == 4.5
    assert back.params == plan.params  # every group sets bits: no shared default
    bare = tmp_path / "bare.toml"
    bare.write_text('featsurv_plan = 1\ncompressor = "rtn"\nby = "type"\n[groups]\nattn = 4\nmlp = 6\n')
    assert read_plan(bare, registry, "rtn").groups == {"attn": {"bits": 4}, "mlp": {"bits": 6}}
    bad = {
        "featsurv_plan = 2\n": "featsurv_plan = 2",
        'featsurv_plan = 1\ncompressor = "pruning"\n[groups]\nattn = 0.5\n': "plan for 'pruning'",
        'featsurv_plan = 1\ncompressor = "rtn"\n[groups]\nattn = { bitz = 4 }\n': "'bitz'",
        'featsurv_plan = 1\ncompressor = "rtn"\n[groups]\nattn = { bits = 99 }\n': "99",
        'featsurv_plan = 1\ncompressor = "rtn"\n': "no [groups]",
        "featsurv_plan = = 1\n": "not valid TOML",
    }
    for text, needle in bad.items():
        path.write_text(text)
        with pytest.raises(FeatsurvError, match=None) as info:
            read_plan(path, registry, "rtn")
        assert needle in str(info.value), (text, str(info.value))
    with pytest.raises(FeatsurvError, match="does not exist"):
        read_plan(tmp_path / "missing.toml", registry, "rtn")


def test_audit_refuses_plan_with_p_or_groups(fragile_args, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "rtn", "--plan", str(tmp_path / "x.toml"), "-p", "bits=4", *fragile_args])
    assert res.exit_code == 2 and "--plan" in res.output


class Recorder(Compressor):
    """Records each compress call (targets, params) and scales the weights by k."""

    name = "recorder"
    params = (Param("k", int, 1, "a number", minimum=0),)
    calls: list = []

    def compress(self, targets, params):
        Recorder.calls.append((sorted(t.name for t in targets), dict(params)))
        with torch.no_grad():
            for t in targets:
                t.weight.mul_(params["k"])


class RecorderPlugin:
    @hookimpl
    def register_compressors(self, register):
        register(Recorder())


def test_groups_call_compress_once_per_group_with_its_own_parameters(tiny_models, tiny_sae, tiny_corpus,
                                                                     register_plugin):
    from featsurv.attribution import session_groups, select
    from featsurv.audit import AuditSession, make_options
    from featsurv.configuration import Group

    registry = register_plugin(RecorderPlugin(), name="recorder")
    model = tiny_models["gpt_neox"]
    opts = make_options(model=str(model), saes=[str(tiny_sae(model, HOOK))], dataset=str(tiny_corpus),
                        n_tokens=256, context=32, bootstrap=0)
    session = AuditSession(opts, registry)
    session.prepare()
    before = {k: v.clone() for k, v in session.loaded.model.state_dict().items()}
    groups = session_groups(session, "layer")
    plan = select(groups, ["L0"], {"k": 0}, "L0") + select(groups, ["L1"], {"k": 2}, "L1")
    Recorder.calls.clear()
    out = session.run("recorder", {"k": 1}, groups=plan, label="two groups")
    assert [c[1] for c in Recorder.calls] == [{"k": 0}, {"k": 2}]
    assert Recorder.calls[0][0] == sorted(groups[0].targets) and Recorder.calls[1][0] == sorted(groups[1].targets)
    assert out.label == "two groups"
    after = session.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # restored
    Recorder.calls.clear()
    session.run("recorder", {"k": 1})  # no groups: one call with every matrix, as before
    assert len(Recorder.calls) == 1 and len(Recorder.calls[0][0]) == sum(len(g.targets) for g in groups)
    overlap = [Group("a", frozenset(groups[0].targets)), Group("b", frozenset(groups[0].targets[:1]))]
    with pytest.raises(FeatsurvError, match="in two groups"):
        session.run("recorder", {"k": 1}, groups=overlap)
    assert all(torch.equal(before[k], v) for k, v in session.loaded.model.state_dict().items())


def test_group_keys_of_every_grouping():
    from featsurv.attribution import group_key, parse_by, weight_groups
    from featsurv.base import WeightTarget

    class M:
        def __init__(self, n):
            self.weight = torch.zeros(n, 2)

    targets = [WeightTarget("a.qkv", M(3), "qkv", 0), WeightTarget("a.o", M(1), "o", 0),
               WeightTarget("a.up", M(4), "mlp_in", 0), WeightTarget("b.q", M(1), "q", 1),
               WeightTarget("emb", M(5), "embed")]
    assert [group_key(t, "layer,type") for t in targets] == ["L0.attn", "L0.attn", "L0.mlp", "L1.attn", "embed"]
    assert [group_key(t, "layer") for t in targets] == ["L0", "L0", "L0", "L1", "embed"]
    assert [group_key(t, "type") for t in targets] == ["attn", "attn", "mlp", "attn", "embed"]
    assert [group_key(t, "matrix") for t in targets] == ["L0.qkv", "L0.o", "L0.mlp_in", "L1.q", "embed"]
    groups = weight_groups(targets, "type,layer")
    assert [(g.name, g.n_params) for g in groups] == [("L0.attn", 8), ("L0.mlp", 8), ("L1.attn", 2), ("embed", 10)]
    assert parse_by("type, layer") == "layer,type"
    with pytest.raises(FeatsurvError, match="'head'"):
        parse_by("head")


# --------------------------------------------------------------------------- watch-list targets
@pytest.fixture(scope="module")
def watched_plan(fragile_args, tmp_path_factory):
    """Watch features that survive uniform bits=8 but not bits=2; plan with a target every setting meets
    (--min-survival 0) and --min-watched-survival 1.0."""
    import pandas as pd

    root = tmp_path_factory.mktemp("wplan")
    probe = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=2,8", *fragile_args, "--out", str(root / "probe")])
    assert probe.exit_code == 0, probe.output
    df = pd.read_parquet(root / "probe" / "features.parquet")
    r = df[df["active"]].pivot_table(index="feature", columns="config", values="r")
    chosen = r[(r["rtn int8"] > 0.9) & (r["rtn int2"] <= 0.9)].index[:3].tolist()
    assert len(chosen) == 3
    wfile = root / "watch.txt"
    wfile.write_text("".join(f"{HOOK},{f}\n" for f in chosen))
    res = CliRunner().invoke(cli, ["plan", "rtn", "--values", "2,4,8", "--min-survival", "0", "--by", "layer",
                                   "--watch", str(wfile), "--min-watched-survival", "1.0", *fragile_args,
                                   "--out", str(root / "plan")])
    assert res.exit_code == 0, res.output
    return root / "plan", chosen


def test_a_watched_target_keeps_every_watched_feature(watched_plan):
    out, chosen = watched_plan
    summary = _summary(out)
    plan = summary["plan"]
    assert plan["goal"]["min_watched_survival"] == 1.0
    assert plan["final"]["plan"]["watched_survived"] == 1.0 and plan["average"] > 2
    for step in plan["path"]:
        if step["kind"] != "attribution":
            assert step["feasible"] == (step["watched_survived"] >= 1.0), step
    assert "of the watched features survive (target 100.0%)" in plan["message"]


def test_each_steps_watched_count_equals_the_features_table(watched_plan):
    """The per-entry counts the search reads (metric watch's entry) against the watched section
    computed from features.parquet (featsurv.watch.watched_section), configuration by configuration."""
    out, chosen = watched_plan
    summary = _summary(out)
    by_config = {c["config"]: c for c in summary["watched"]["configs"]}
    entries = [e for e in summary["results"] if e["hook"] == HOOK]
    assert entries and all(e["label"] in by_config for e in entries)
    for e in entries:
        c = by_config[e["label"]]
        assert (e["watched_n"], e["watched_survived_n"]) == (c["n"], c["n_survived"]) == (3, c["n_survived"])


def test_a_watched_target_without_a_watch_list_is_refused(fragile_args, tmp_path):
    res = CliRunner().invoke(cli, ["plan", "rtn", "--values", "2,8", "--min-survival", "0", "--by", "layer",
                                   "--min-watched-survival", "1.0", *fragile_args, "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "--watch FILE" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "p").exists()
    bad = CliRunner().invoke(cli, ["plan", "rtn", "--values", "2,8", "--min-survival", "0",
                                   "--min-watched-survival", "1.5", *fragile_args, "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "--min-watched-survival 1.5" in bad.output, bad.output
