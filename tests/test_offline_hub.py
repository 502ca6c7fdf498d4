"""`featsurv audit rtn --preset pythia-70m` end to end with HF_HUB_OFFLINE=1, as a user's machine sees it.

``hub_cache.py`` lays out an HF_HOME the way the hub and the datasets library leave it (model repo,
sae-lens release repo, prepared WikiText-2 cache); every command here runs in a fresh process
pointed at it, so the real ``HookedTransformer.from_pretrained``, ``SAE.from_pretrained`` and
``load_dataset`` code paths resolve everything, and nothing else is reachable.

Gemma-2-2B is not laid out here: TransformerLens builds Gemma-2 configs from the model's name
(26 layers, d_model 2304, vocab 256000), so a reduced Gemma-2 cannot pose as ``google/gemma-2-2b``;
the adapter's Gemma-2 path is tested on a reduced local directory instead
(tests/test_transformer_lens_adapter.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub_cache import PYTHIA, SAE_RELEASE, SAE_ID, WIKITEXT, WIKITEXT_CONFIG, hub_home, offline_env  # noqa: F401

FEATSURV = str(Path(sys.executable).with_name("featsurv"))

LOADERS = r"""
import json, sys
import torch
from datasets import load_dataset
from sae_lens import SAE
from transformer_lens import HookedTransformer
from featsurv.loading import load_model
from featsurv.plugins import get_registry

ds = load_dataset("%(wikitext)s", "%(config)s", split="train")
sae = SAE.from_pretrained(release="%(release)s", sae_id="%(sae_id)s", device="cpu")
by_alias = HookedTransformer.from_pretrained("pythia-70m-deduped", device="cpu")
hub = load_model(get_registry(), "%(model)s", adapter="transformer_lens")
snapshot = sys.argv[1]
local = load_model(get_registry(), snapshot, adapter="transformer_lens")
a, b, c = by_alias.state_dict(), hub.model.state_dict(), local.model.state_dict()
print(json.dumps({
    "rows": len(ds), "first": ds[1]["text"], "d_sae": sae.cfg.d_sae, "hook": sae.cfg.metadata.hook_name,
    "keys_equal": sorted(a) == sorted(b) == sorted(c),
    "hub_vs_alias": max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()),
    "local_vs_hub": max(float((b[k].double() - c[k].double()).abs().max()) for k in b if b[k].numel()),
    "normalization": hub.model.cfg.normalization_type, "n_layers": hub.model.cfg.n_layers,
    "d_vocab": hub.model.cfg.d_vocab,
}))
"""


def _snapshot(home: Path, repo_id: str, kind: str = "models") -> Path:
    repo = home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"
    return repo / "snapshots" / (repo / "refs" / "main").read_text()


def test_the_cache_is_laid_out_as_the_hub_leaves_it(hub_home):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_home / "hub")
    assert not info.warnings
    repos = {(r.repo_type, r.repo_id): r for r in info.repos}
    assert set(repos) == {("model", PYTHIA), ("model", "ctigges/pythia-70m-deduped__res-sm_processed"),
                          ("dataset", WIKITEXT)}
    for repo in repos.values():
        (rev,) = repo.revisions
        assert rev.refs == frozenset({"main"})
        for f in rev.files:
            assert f.file_path.is_symlink() and f.blob_path.parent.name == "blobs"
    pythia = {f.file_name for f in next(iter(repos[("model", PYTHIA)].revisions)).files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= pythia
    config = json.loads((_snapshot(hub_home, PYTHIA) / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (6, 512, 50304)
    prepared = list((hub_home / "datasets" / "Salesforce___wikitext" / WIKITEXT_CONFIG / "0.0.0").glob("*/dataset_info.json"))
    assert len(prepared) == 1 and {"wikitext-train.arrow", "wikitext-test.arrow"} <= {
        p.name for p in prepared[0].parent.iterdir()}


def test_the_real_loaders_find_everything_offline(hub_home):
    """load_dataset, SAE.from_pretrained and HookedTransformer.from_pretrained resolve the cache; the
    adapter gives the same processed model from the hub id and from the snapshot directory."""
    code = LOADERS % {"wikitext": WIKITEXT, "config": WIKITEXT_CONFIG, "release": SAE_RELEASE, "sae_id": SAE_ID,
                      "model": PYTHIA}
    proc = subprocess.run([sys.executable, "-c", code, str(_snapshot(hub_home, PYTHIA))], env=offline_env(hub_home),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] > 100 and out["first"].startswith(" = ")
    assert out["d_sae"] == 2048 and out["hook"] == SAE_ID
    assert out["keys_equal"] and out["hub_vs_alias"] == 0.0 and out["local_vs_hub"] == 0.0
    assert (out["normalization"], out["n_layers"], out["d_vocab"]) == ("LNPre", 6, 50304)  # fold_ln applied


def test_audit_with_the_pythia_preset_offline(hub_home, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([FEATSURV, "audit", "rtn", "--preset", "pythia-70m", "--tokens", "512", "--bootstrap", "0",
                           "--out", str(out)], env=offline_env(hub_home), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Published figures (arXiv 2606.03002)" in proc.stdout and "rtn int8 granularity=tl" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run.json").read_text())
    base = summary["baseline"]
    assert (base["n_tokens"], base["n_contexts"], base["context"], base["prepend_bos"]) == (512, 1, 512, False)
    assert run["adapter"] == "transformer_lens" and run["options"]["dataset"].endswith(":train")
    assert run["options"]["adapter_options"] == {"fold_ln": True, "center_writing_weights": True,
                                                 "center_unembed": True, "fold_value_biases": True}
    results = summary["results"]
    assert [e["params"]["bits"] for e in results] == [8, 7, 6, 5, 4]
    assert {e["params"]["granularity"] for e in results} == {"tl"} and {e["hook"] for e in results} == {SAE_ID}
    assert results[0]["mean_r"] > results[-1]["mean_r"]  # a random model: perplexity need not rise
    assert base["saes"][SAE_ID]["d_sae"] == 2048 and results[0]["n_active"] > 100


def test_without_the_cache_the_preset_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([FEATSURV, "audit", "rtn", "--preset", "pythia-70m", "--tokens", "512", "--out", str(out)],
                          env=offline_env(tmp_path / "empty-home"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"Cannot load model '{PYTHIA}'" in proc.stderr and "HF_HUB_OFFLINE=1" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
