"""The shipped default model, SAEs and corpus load through the user-facing code paths and audit."""
import json
from pathlib import Path

from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.data_paths import data_root, resolve
from featsurv.loading import load_model, load_sae
from featsurv.plugins import get_registry
from featsurv.presets import get_preset


def test_shipped_artefacts_are_safetensors_and_small():
    root = data_root()
    model_dir = root / "models" / "featsurv-tiny"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    assert not list(root.rglob("*.bin")) and not list(root.rglob("*.pt"))
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 12 * 2**20


def test_default_preset_loads_model_and_saes():
    preset = get_preset(None)
    registry = get_registry()
    loaded = load_model(registry, preset.options["model"])
    assert loaded.adapter.name == "gpt_neox"
    assert loaded.tokenizer.bos_token_id is not None
    for spec in preset.options["saes"]:
        sae = load_sae(registry, resolve(spec))
        meta = json.loads((Path(resolve(spec)) / "cfg.json").read_text())["metadata"]
        assert sae.hook_name == meta["hook_name"] and sae.d_in == loaded.model.config.hidden_size
        assert sae.prepend_bos is True and sae.context_size == 128


def test_short_audit_on_the_embedded_default(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=8,3", "--tokens", "4096", "--bootstrap", "0",
                                      "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    for hook, info in summary["baseline"]["saes"].items():
        assert info["explained_variance"] > 0.8, hook  # the shipped SAEs fit the shipped model
    by = {(e["label"], e["hook"]): e for e in summary["results"]}
    for hook in summary["baseline"]["saes"]:
        assert by[("rtn int8", hook)]["survived"] > 0.95
        assert by[("rtn int3", hook)]["survived"] < by[("rtn int8", hook)]["survived"]
    assert 10 < summary["baseline"]["perplexity"] < 200
