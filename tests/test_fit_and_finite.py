"""Nothing wrong that looks right: a mis-paired SAE and a non-finite FP model stop the audit."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from featsurv.cli import cli
from featsurv.data_paths import resolve

SAES = "featsurv:saes/featsurv-tiny"


def audit(*args: str, out) -> object:
    return CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=8", "--tokens", "2048", "--bootstrap", "0", "-q",
                                    *args, "--out", str(out)])


@pytest.mark.parametrize("sae,hook,better", [
    ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "blocks.1.hook_resid_post"),  # EV 0.79 passes 0.5
    ("blocks.1.hook_resid_post", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"),  # EV 0.89
    ("blocks.2.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"),  # EV 0.85
])
def test_a_mis_paired_sae_stops_the_audit(sae, hook, better, tmp_path):
    res = audit("--model", "featsurv:models/featsurv-tiny", "--sae", f"{SAES}/{sae}", "--hook", hook, out=tmp_path / "r")
    assert res.exit_code == 2, res.output
    assert f"at {better}" in res.output and "fits a neighbouring hook point better" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


def test_the_shipped_pairings_pass_and_record_the_evidence(tmp_path):
    import json

    res = audit(out=tmp_path / "r")
    assert res.exit_code == 0, res.output
    saes = json.loads((tmp_path / "r" / "summary.json").read_text())["baseline"]["saes"]
    for hook, info in saes.items():
        fit = info["fit"]
        assert fit["neighbours"] and all(v < fit["explained_variance_subset"] for v in fit["neighbours"].values())


def _broken_model(tmp_path, where: str):
    src = resolve("featsurv:models/featsurv-tiny")
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        if where == "lm_head":
            model.get_output_embeddings().weight[0, 0] = float("nan")
        else:
            model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight[0, 0] = float("inf")
    out = tmp_path / f"model-{where}"
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).write_bytes((__import__("pathlib").Path(src) / f).read_bytes())
    return out


@pytest.mark.parametrize("where,needle", [("lm_head", "perplexity is nan"), ("layer", "not finite")])
def test_a_non_finite_fp_model_stops_before_any_configuration(where, needle, tmp_path):
    model = _broken_model(tmp_path, where)
    res = audit("--model", str(model), "--sae", f"{SAES}/blocks.1.hook_resid_post", out=tmp_path / "r")
    assert res.exit_code == 2 and needle in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()
