"""`featsurv attribute`: a deliberately fragile group ranks first, per-group numbers equal separate
hand-restricted audits and an independent compressor, passes are counted, third-party compressors work."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from featsurv import Compressor, Param, hookimpl
from featsurv.cli import cli

HOOK = "blocks.1.hook_resid_post"
FIELDS = ("survived", "blurred", "damaged", "mean_r", "median_r", "n_active", "perplexity", "perplexity_change")


@pytest.fixture(scope="module")
def fragile_model(tiny_models, tmp_path_factory):
    """The tiny GPT-NeoX with layer 0's MLP input matrix made fragile under RTN: one weight per row is
    20x the row's largest, so a per-row absmax scale at 4 bits rounds every other weight of the row to 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_models["gpt_neox"]
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        w = model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
        rows = torch.arange(w.shape[0])
        w[rows, rows % w.shape[1]] = 20 * w.abs().amax(dim=1)
    out = tmp_path_factory.mktemp("fragile") / "model"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fragile_args(fragile_model, tiny_sae, tiny_corpus):
    return ["--model", str(fragile_model), "--sae", str(tiny_sae(fragile_model, HOOK)), "--dataset", str(tiny_corpus),
            "--tokens", "512", "--context", "32", "--bootstrap", "0", "-q"]


@pytest.fixture(scope="module")
def attributed(fragile_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("attr") / "run"
    res = CliRunner().invoke(cli, ["attribute", "rtn", "-p", "bits=4", "--by", "layer,type", *fragile_args,
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def _entry(summary, label, hook=HOOK):
    return next(e for e in summary["results"] if e["label"] == label and e["hook"] == hook)


def test_the_fragile_group_ranks_first(attributed):
    out, output = attributed
    attr = _summary(out)["attribution"]
    assert [g["name"] for g in attr["groups"]] == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
    assert attr["ranking"][HOOK][0] == "L0.mlp" and attr["overall_ranking"][0] == "L0.mlp"
    rows = {r["group"]: r for r in attr["rows"]}
    assert rows["L0.mlp"]["lost"] > 2 * max(r["lost"] for g, r in rows.items() if g != "L0.mlp")
    assert "Attribution by layer,type" in output and "L0.mlp" in output
    html = (out / "report.html").read_text()
    assert "Where the damage comes from" in html and (out / "fig_attribution.png").stat().st_size > 1000


def test_per_group_numbers_equal_separate_hand_restricted_audits(attributed, fragile_args, tmp_path):
    out, _ = attributed
    summary = _summary(out)
    rows = {r["group"]: r for r in summary["attribution"]["rows"]}
    alone, rest = tmp_path / "alone", tmp_path / "rest"
    for groups, path in (("L0.mlp", alone), ("L0.attn,L1.attn,L1.mlp", rest)):
        res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=4", "--groups", groups, *fragile_args,
                                       "--out", str(path)])
        assert res.exit_code == 0, res.output
    single = _summary(alone)["results"][0]
    assert single["label"] == "rtn int4 [L0.mlp]"
    mine = _entry(summary, "rtn int4 [L0.mlp]")
    for key in FIELDS:
        assert single[key] == mine[key], key  # a separate session, its own FP pass: the same values
    for key in ("survived", "mean_r", "damaged", "perplexity_change"):
        assert rows["L0.mlp"][key] == single[key]
    complement = _summary(rest)["results"][0]
    for key in ("survived", "mean_r", "damaged", "perplexity_change"):
        assert rows["L0.mlp"][f"complement_{key}"] == complement[key], key
    everything = _entry(summary, "rtn int4")
    assert rows["L0.mlp"]["marginal_lost"] == pytest.approx(complement["survived"] - everything["survived"])
    assert rows["L0.mlp"]["interaction"] == pytest.approx(rows["L0.mlp"]["marginal_lost"] - (1 - single["survived"]))
    a = pd.read_parquet(out / "features.parquet")
    b = pd.read_parquet(alone / "features.parquet")
    ra = a[a.config == "rtn int4 [L0.mlp]"].sort_values("feature").r.to_numpy()
    assert np.array_equal(ra, b.sort_values("feature").r.to_numpy())


class OnlyLayer0MLP(Compressor):
    """An independent oracle: symmetric per-row 4-bit RTN written out by hand, on layer 0's MLP only."""

    name = "only_l0_mlp"
    params = (Param("bits", int, 4, "bit-width", minimum=2, maximum=8),)

    def compress(self, targets, params):
        qmax = 2 ** (params["bits"] - 1) - 1
        with torch.no_grad():
            for t in targets:
                if t.layer == 0 and t.role.startswith("mlp"):
                    w = t.weight
                    scale = w.abs().amax(dim=1, keepdim=True) / qmax
                    w.copy_(torch.clamp(torch.round(w / scale), -qmax, qmax) * scale)


class Oracle:
    @hookimpl
    def register_compressors(self, register):
        register(OnlyLayer0MLP())


def test_group_alone_equals_an_independent_compressor(attributed, fragile_args, register_plugin, tmp_path):
    register_plugin(Oracle(), name="oracle")
    res = CliRunner().invoke(cli, ["audit", "only_l0_mlp", *fragile_args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    oracle = _summary(tmp_path / "o")["results"][0]
    mine = _entry(_summary(attributed[0]), "rtn int4 [L0.mlp]")
    for key in FIELDS:
        assert oracle[key] == pytest.approx(mine[key], rel=1e-9, abs=1e-12), key


def test_per_feature_attribution_names_the_worst_group(attributed):
    out, _ = attributed
    f = pd.read_parquet(out / "features.parquet")
    assert {"attribution.group", "attribution.damage", "attribution.share", "attribution.damaged_all"} <= set(f.columns)
    alone = f[f.config.str.match(r"^rtn int4 \[L\d\.\w+\]$")]
    r = alone.pivot(index="feature", columns="config", values="r")
    rows = f[f.config == "rtn int4"].set_index("feature").loc[r.index]
    active = rows.active.to_numpy(bool)
    expected = r.idxmin(axis=1).str.extract(r"\[(.*)\]")[0].to_numpy()
    damage = (1 - r.min(axis=1)).clip(lower=0).to_numpy()
    hurt = active & (damage > 0)
    assert active.sum() > 10 and hurt.sum() > 10
    assert list(rows["attribution.group"].to_numpy()[hurt]) == list(expected[hurt])
    np.testing.assert_allclose(rows["attribution.damage"].to_numpy()[active], damage[active])
    assert rows["attribution.group"][~hurt].isna().all()  # inactive, or damaged by no group
    share = rows["attribution.share"].to_numpy()[active]
    assert ((share > 0) & (share <= 1 + 1e-12) | (rows["attribution.damage"].to_numpy()[active] == 0)).all()
    assert (rows["attribution.group"][hurt] == "L0.mlp").mean() > 0.5


def test_one_fp_pass_and_one_pass_per_configuration(fragile_model, tiny_sae, tiny_corpus, monkeypatch, tmp_path):
    from featsurv.attribution import run_attribution
    from featsurv.audit import AuditSession, make_options
    from featsurv.plugins import get_registry

    opts = make_options(model=str(fragile_model), saes=[str(tiny_sae(fragile_model, HOOK))], dataset=str(tiny_corpus),
                        n_tokens=512, context=32, bootstrap=0)
    adapter = get_registry().get("model_adapters", "gpt_neox")
    calls = {"n": 0}
    original = adapter.forward

    def counting(model, ids):
        calls["n"] += 1
        return original(model, ids)

    monkeypatch.setattr(adapter, "forward", counting)
    session = AuditSession(opts, get_registry())
    result = run_attribution(opts, "rtn", {"bits": 4, "symmetric": True, "granularity": "channel", "arith": "fp32"},
                             by="layer", out_dir=tmp_path / "r", session=session)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["passes"] == {"fp": 1, "group": 2, "complement": 2, "all": 1, "total": 6, "calibration": 0}
    assert calls["n"] == run["passes"]["total"] * session.tokens.n_batches(opts.batch_size)
    labels = [c["label"] for c in run["configurations"]]
    assert labels == ["rtn int4 [L0]", "rtn int4 [L1]", "rtn int4 [all but L0]", "rtn int4 [all but L1]", "rtn int4"]
    # with two groups, "all but L0" is L1 alone: the same weights, the same numbers
    by = {(e["label"], e["hook"]): e for e in result.summary["results"]}
    assert by[("rtn int4 [all but L0]", HOOK)]["survived"] == by[("rtn int4 [L1]", HOOK)]["survived"]
    fresh = _state(fragile_model)
    assert all(torch.equal(fresh[k], v) for k, v in session.loaded.model.state_dict().items())


def _state(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


class Jitter(Compressor):
    """A third-party compressor that knows nothing of groups (the docs' noise example)."""

    name = "jitter"
    params = (Param("scale", float, 0.1, "noise std relative to the matrix's std", minimum=0.0),)

    def compress(self, targets, params):
        with torch.no_grad():
            for t in targets:
                w = t.weight
                w.add_(torch.randn_like(w) * w.std() * params["scale"])


class ThirdParty:
    @hookimpl
    def register_compressors(self, register):
        register(Jitter())


def test_a_third_party_compressor_is_attributed_unchanged(fragile_args, register_plugin, tmp_path):
    register_plugin(ThirdParty(), name="third")
    res = CliRunner().invoke(cli, ["attribute", "jitter", "-p", "scale=0.5", "--by", "type", "--no-complements",
                                   *fragile_args, "--out", str(tmp_path / "j")])
    assert res.exit_code == 0, res.output
    summary = _summary(tmp_path / "j")
    assert [r["group"] for r in summary["attribution"]["rows"]] == ["attn", "mlp"]
    assert all(r["mean_r"] < 1.0 for r in summary["attribution"]["rows"])
    assert json.loads((tmp_path / "j" / "run.json").read_text())["passes"]["total"] == 3


@pytest.mark.parametrize("args, needle", [
    (["--by", "head"], "'head'"),
    (["-p", "bits=4,3"], "not a sweep"),
])
def test_bad_attribute_input(fragile_args, tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["attribute", "rtn", *args, *fragile_args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_unknown_group_names_the_groups(fragile_args, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=4", "--groups", "L9.mlp", *fragile_args,
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "'L9.mlp'" in res.output and "L0.attn" in res.output
    assert not (tmp_path / "r").exists()


def test_attribute_on_the_embedded_default_costs_one_pass_per_group(monkeypatch, tmp_path):
    from featsurv.plugins import get_registry

    adapter = get_registry().get("model_adapters", "gpt_neox")
    calls = {"n": 0}
    original = adapter.forward

    def counting(model, ids):
        calls["n"] += 1
        return original(model, ids)

    monkeypatch.setattr(adapter, "forward", counting)
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["attribute", "rtn", "-p", "bits=4", "--by", "layer", "--no-complements",
                                   "--tokens", "1024", "--bootstrap", "0", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    n_groups = len(_summary(out)["attribution"]["groups"])
    assert n_groups == 4
    assert run["passes"]["total"] == 1 + n_groups == run["passes"]["fp"] + run["passes"]["group"]
    assert calls["n"] == run["passes"]["total"] * 1  # 1024 tokens: 8 contexts of 128, one batch of 8
