"""The torchao compressor through the featsurv host: an audit, `featsurv compare`, the entry point."""
from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner

from featsurv.audit import AuditSession, make_options
from featsurv.cli import cli
from featsurv.progress import Progress
from featsurv.runs import run_audit


def _options(tiny_models, tiny_sae, tiny_corpus, **kw):
    model = tiny_models["llama"]
    return make_options(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus),
                        n_tokens=512, bootstrap=0, **kw)


def test_tiny_audit_runs_through_the_host(torchao_registry, tiny_models, tiny_sae, tiny_corpus, tmp_path):
    options = _options(tiny_models, tiny_sae, tiny_corpus)
    session = AuditSession(options, torchao_registry, Progress(quiet=True))
    configs = [("torchao", {"bits": 8, "granularity": "axis", "mapping": "symmetric", "algorithm": "affine"}),
               ("torchao", {"bits": 2, "granularity": "group:16", "mapping": "asymmetric", "algorithm": "affine"})]
    result = run_audit(options, configs, out_dir=tmp_path / "run", session=session)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    labels = [r["label"] for r in summary["results"]]
    assert labels == ["torchao int8", "torchao int2 granularity=group:16 mapping=asymmetric"]
    int8, int2 = summary["results"]
    assert int8["survived"] >= int2["survived"]
    assert int8["mean_r"] > int2["mean_r"]
    assert abs(int8["perplexity_change"]) < abs(int2["perplexity_change"])
    assert int8["mean_r"] > 0.99
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any(p["name"] == "torchao" for p in run["plugins"])
    assert result.features["config"].nunique() == 2


def test_fp_weights_are_restored_after_each_configuration(torchao_registry, tiny_models, tiny_sae, tiny_corpus):
    session = AuditSession(_options(tiny_models, tiny_sae, tiny_corpus), torchao_registry, Progress(quiet=True))
    session.prepare()
    before = {n: p.detach().clone() for n, p in session.loaded.model.named_parameters()}
    out = session.run("torchao", {"bits": 3, "granularity": "axis", "mapping": "symmetric", "algorithm": "affine"},
                      features=False)
    assert out.model_metrics["perplexity"]["perplexity"] > 0 and out.target == out.model_metrics["perplexity"]["perplexity"]
    after = dict(session.loaded.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_cli_compare_torchao_rtn(torchao_registry, tiny_models, tiny_sae, tiny_corpus, tmp_path):
    model = tiny_models["llama"]
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "torchao", "rtn", "--model", str(model), "--sae", str(tiny_sae(model)),
                                   "--dataset", str(tiny_corpus), "--tokens", "512", "--bootstrap", "0",
                                   "--steps", "4", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    (comparison,) = summary["comparisons"]
    assert comparison["a"] == "torchao int4"  # the compressor's compare_default
    assert comparison["b"].startswith("rtn int") and comparison["knob"] == "bits"
    assert 2 <= comparison["matched_params"]["bits"] <= 8


def test_cli_rejects_bad_parameters(torchao_registry, tiny_models, tiny_sae, tiny_corpus, tmp_path):
    model = tiny_models["llama"]
    res = CliRunner().invoke(cli, ["audit", "torchao", "-p", "bits=9", "--model", str(model),
                                   "--sae", str(tiny_sae(model)), "--dataset", str(tiny_corpus), "-q",
                                   "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2
    assert "Bad value '9' for parameter 'bits' of torchao" in res.output and "int in [2, 8]" in res.output


def _installed() -> metadata.Distribution | None:
    try:
        return metadata.distribution("featsurv-torchao")
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(_installed() is None, reason="featsurv-torchao is not pip-installed "
                    "(pip install -e ./distributions/featsurv-torchao)")
def test_entry_point_is_declared_and_listed():
    dist = _installed()
    eps = [ep for ep in dist.entry_points if ep.group == "featsurv"]
    assert [(ep.name, ep.value) for ep in eps] == [("torchao", "featsurv_torchao")]
    res = CliRunner().invoke(cli, ["plugins", "--json"])
    assert res.exit_code == 0, res.output
    listed = {p["name"]: p for p in json.loads(res.output)}
    assert listed["torchao"]["distribution"] == "featsurv-torchao"
    assert listed["torchao"]["provides"] == {"compressors": ["torchao"]}
