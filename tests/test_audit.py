"""End-to-end audits on tiny random models, in process."""
import json

import numpy as np
import pytest
import torch

from featsurv.audit import AuditSession, make_options
from featsurv.plugins import get_registry
from featsurv.runs import run_audit

SPEC_RESULT_KEYS = {"label", "compressor", "params", "hook", "perplexity", "perplexity_change", "n_features",
                    "n_active", "survived", "blurred", "damaged", "mean_r", "median_r", "perplexity_misses_damage"}


def options(tiny_models, tiny_sae, tiny_corpus, family="gpt_neox", hooks=("blocks.1.hook_resid_post",), **kw):
    saes = [str(tiny_sae(tiny_models[family], h)) for h in hooks]
    base = dict(model=str(tiny_models[family]), saes=saes, dataset=str(tiny_corpus), n_tokens=1024, context=32,
                batch_size=8, bootstrap=0)
    base.update(kw)
    return make_options(**base)


def r_of(result, label, hook="blocks.1.hook_resid_post"):
    f = result.features
    rows = f[(f.config == label) & (f.hook == hook)].sort_values("feature")
    return rows


@pytest.mark.parametrize("family", ["gpt_neox", "gemma2"])
def test_fp_vs_fp_gives_r_one_and_int8_beats_int3(tiny_models, tiny_sae, tiny_corpus, tmp_path, family):
    opts = options(tiny_models, tiny_sae, tiny_corpus, family)
    result = run_audit(opts, [("magnitude", {"sparsity": 0.0, "scope": "matrix"}),
                              ("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"}),
                              ("rtn", {"bits": 3, "symmetric": True, "granularity": "channel"})],
                       out_dir=tmp_path / "run")
    by_label = {e["label"]: e for e in result.summary["results"]}
    fp = by_label["pruning s=0"]
    assert fp["survived"] == 1.0 and fp["perplexity_change"] == pytest.approx(0.0, abs=1e-6)
    rows = r_of(result, "pruning s=0")
    assert np.allclose(rows[rows.active].r, 1.0)
    int8, int3 = by_label["rtn int8"], by_label["rtn int3"]
    assert int8["mean_r"] > int3["mean_r"]
    assert int8["survived"] >= int3["survived"]
    assert int8["survived"] > 0.9
    for e in result.summary["results"]:
        assert SPEC_RESULT_KEYS <= set(e)


def test_result_directory_contents(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    opts = options(tiny_models, tiny_sae, tiny_corpus)
    out = tmp_path / "run"
    result = run_audit(opts, [("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})], out_dir=out)
    summary = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert summary["baseline"]["n_tokens"] == result.summary["baseline"]["n_tokens"] > 0
    assert summary["baseline"]["perplexity"] > 1
    assert run["options"]["seed"] == 0 and run["versions"]["torch"] and 0 < run["timings"]["fp_pass"] < 600
    assert any(p["name"] == "rtn" for p in run["plugins"])
    import pandas as pd

    features = pd.read_parquet(out / "features.parquet")
    d_sae = 64
    assert len(features) == d_sae
    assert {"config", "hook", "feature", "r", "band", "active", "silenced", "firing_rate", "mean_act",
            "peak_act", "decoder_norm", "encoder_norm"} <= set(features.columns)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left behind


def test_same_seed_gives_identical_results(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    cfg = [("rtn", {"bits": 4, "symmetric": False, "granularity": "group:8"})]
    a = run_audit(options(tiny_models, tiny_sae, tiny_corpus), cfg, out_dir=tmp_path / "a")
    b = run_audit(options(tiny_models, tiny_sae, tiny_corpus), cfg, out_dir=tmp_path / "b")
    assert a.summary["results"] == b.summary["results"]
    assert np.array_equal(a.features.r.to_numpy(), b.features.r.to_numpy())


def test_one_fp_pass_all_hooks_in_one_forward_and_weights_restored(tiny_models, tiny_sae, tiny_corpus, monkeypatch):
    hooks = ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out")
    opts = options(tiny_models, tiny_sae, tiny_corpus, hooks=hooks)
    session = AuditSession(opts, get_registry())
    calls = {"n": 0}
    adapter = get_registry().get("model_adapters", "gpt_neox")
    original = adapter.forward

    def counting(model, ids):
        calls["n"] += 1
        return original(model, ids)

    monkeypatch.setattr(adapter, "forward", counting)
    session.prepare()
    fp_batches = session.tokens.n_batches(opts.batch_size)
    assert calls["n"] == fp_batches  # one FP pass, every hook point read in it
    model = session.loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = session.run("magnitude", {"sparsity": 0.5, "scope": "matrix"})
    session.run("rtn", {"bits": 3, "symmetric": True, "granularity": "tensor"})
    assert calls["n"] == 3 * fp_batches  # one pass per configuration, both hooks read in it
    assert set(out.features) == set(hooks)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(session.hooks["blocks.0.hook_resid_post"].fp_batches) == fp_batches


def test_bootstrap_intervals_do_not_depend_on_the_batch_size(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    cis = []
    for batch in (2, 16):
        opts = make_options(model=str(tiny_models["gpt_neox"]), saes=[str(tiny_sae(tiny_models["gpt_neox"]))],
                            dataset=str(tiny_corpus), n_tokens=1024, context=32, batch_size=batch, bootstrap=200)
        result = run_audit(opts, [("rtn", {"bits": 3, "symmetric": True, "granularity": "channel"})],
                           out_dir=tmp_path / f"b{batch}")
        cis.append(result.summary["results"][0]["ci"])
    assert cis[0]["n_blocks"] == cis[1]["n_blocks"] == 32
    assert cis[0]["survived"] == pytest.approx(cis[1]["survived"])

