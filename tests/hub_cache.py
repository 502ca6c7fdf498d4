"""A Hugging Face home laid out as the hub and the datasets library leave it, built offline.

- ``hub/models--EleutherAI--pythia-70m-deduped``: ``refs/main``, ``blobs/`` and
  ``snapshots/<commit>/`` symlinks, holding Pythia-70M-deduped's real ``config.json`` (6 layers,
  d_model 512, vocab 50304) with random weights and a small byte-level BPE tokenizer;
- ``hub/models--ctigges--pythia-70m-deduped__res-sm_processed``: the repo sae-lens's
  ``pythia-70m-deduped-res-sm`` release resolves to, with ``4-res-sm/{cfg.json,
  sae_weights.safetensors, sparsity.safetensors}``: a ReLU SAE (pre-6.0 sae-lens config, fewer
  features than the real 32768) whose biases are calibrated so features fire at spread-out rates
  on the TransformerLens-centred residual stream of block 4;
- ``datasets/Salesforce___wikitext/wikitext-2-raw-v1/0.0.0/<commit>/``: WikiText-2-shaped splits
  prepared by the datasets library's packaged parquet builder from ``wikitext-2-raw-v1/*.parquet``
  split files, as ``load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1")`` leaves them.

Only the weights' and texts' values (and the tokenizer, and the SAE's width) differ from a real
run. ``hub_home`` builds it once per session; ``offline_env(home)`` is the environment a
subprocess needs to use it with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

PYTHIA = "EleutherAI/pythia-70m-deduped"
SAE_REPO = "ctigges/pythia-70m-deduped__res-sm_processed"
SAE_RELEASE, SAE_ID = "pythia-70m-deduped-res-sm", "blocks.4.hook_resid_post"
WIKITEXT, WIKITEXT_CONFIG = "Salesforce/wikitext", "wikitext-2-raw-v1"
D_SAE = 2048
# Pythia-70M-deduped's config.json as the hub serves it
PYTHIA_CONFIG = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
    "hidden_size": 512, "initializer_range": 0.02, "intermediate_size": 2048, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "gpt_neox", "num_attention_heads": 8,
    "num_hidden_layers": 6, "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
    "use_parallel_residual": True, "vocab_size": 50304,
}
WORDS = ("the of and in to a was is for on as by with that from at his an were which are it its "
         "album song game city river war army ship team season league film series station line "
         "built played released recorded named found moved became won lost began ended opened").split()


def _commit(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def write_snapshot(hub: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> Path:
    """``{hub}/{type}s--ORG--NAME`` with blobs, a snapshot of symlinks and ``refs/main``."""
    repo = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = _commit(repo_id)
    snap = repo / "snapshots" / commit
    for rel, data in files.items():
        if rel.endswith((".safetensors", ".parquet", ".bin")):  # LFS files: named by sha256
            blob_id = hashlib.sha256(data).hexdigest()
        else:  # git objects: sha1 of the blob
            blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = repo / "blobs" / blob_id
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def wikitext_rows(n_articles: int, seed: int) -> list[str]:
    """WikiText-2-raw-shaped rows: ' = Title = \\n', paragraphs ending in ' \\n', and empty rows."""
    rng = random.Random(seed)
    rows: list[str] = []
    for _ in range(n_articles):
        title = " ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 3)))
        rows += ["", f" = {title} = \n", ""]
        for _ in range(rng.randint(2, 4)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(40, 90))]
            if rng.random() < 0.3:
                words.insert(rng.randint(0, len(words)), f"{rng.randint(1800, 2015)}")
            rows += [" " + " ".join(words).capitalize() + " . \n", ""]
    return rows


def _parquet_bytes(rows: list[str], path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows}), path)
    return path.read_bytes()


def write_wikitext(home: Path, work: Path) -> dict[str, list[str]]:
    """The split files as the hub repo holds them, prepared into the datasets cache by the parquet builder."""
    from datasets.load import configure_builder_class, create_builder_configs_from_metadata_configs
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    from datasets.utils.metadata import MetadataConfigs

    splits = {"train": wikitext_rows(60, 1), "validation": wikitext_rows(6, 2), "test": wikitext_rows(10, 3)}
    repo = work / "wikitext-repo"
    files = {}
    for split, rows in splits.items():
        rel = f"{WIKITEXT_CONFIG}/{split}-00000-of-00001.parquet"
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        files[rel] = _parquet_bytes(rows, repo / rel)
    snap = write_snapshot(home / "hub", WIKITEXT, files, repo_type="dataset")
    module_path, _ = _PACKAGED_DATASETS_MODULES["parquet"]
    metadata = MetadataConfigs({WIKITEXT_CONFIG: {"data_files": [
        {"split": s, "path": f"{WIKITEXT_CONFIG}/{s}-*"} for s in splits]}})
    configs, default = create_builder_configs_from_metadata_configs(module_path, metadata, base_path=str(snap))
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder_cls = configure_builder_class(Parquet, configs, default, dataset_name="wikitext")
    # load_dataset would pass repo_id and hf:// data files; with local files the builder writes
    # wikitext/... and the folder is then named as the hub flow names it, NAMESPACE___NAME
    staging = work / "datasets-staging"
    builder = builder_cls(cache_dir=str(staging), dataset_name="wikitext", config_name=WIKITEXT_CONFIG,
                          hash=snap.name, base_path=str(snap))
    builder.download_and_prepare()
    target = home / "datasets" / WIKITEXT.replace("/", "___")
    target.parent.mkdir(parents=True, exist_ok=True)
    (staging / "wikitext").rename(target)
    return splits


def _tokenizer_files(rows: list[str], work: Path) -> dict[str, bytes]:
    from featsurv.testing import build_tokenizer

    corpus = work / "tokenizer-corpus.txt"
    corpus.write_text("\n".join(rows), encoding="utf-8")
    out = work / "tokenizer"
    build_tokenizer(corpus, out, vocab_size=1500)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _pythia_weights(seed: int) -> dict[str, Any]:
    """Random weights for every tensor of GPTNeoXForCausalLM with Pythia-70M's config."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(**{k: v for k, v in PYTHIA_CONFIG.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("layernorm.weight") or key.endswith("layer_norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            t = 0.05 * torch.randn(shape, generator=gen)
        out[key] = t.to(torch.float16)
    return out


def _calibrated_sae(acts: Any, seed: int, gain: float = 30.0) -> dict[str, Any]:
    """A ReLU SAE on ``acts`` [N, 512] whose features fire at rates spread from 0.05% to 20%.

    Encoder columns have norm ``gain``: activations well above the reference's 1e-12 clamp of
    the product of variances, which would otherwise change r for features that barely fire.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    unit = torch.randn(d_in, D_SAE, generator=gen)
    unit /= unit.norm(dim=0, keepdim=True)
    w_enc = gain * unit
    b_dec = acts.mean(0)
    pre = (acts - b_dec) @ w_enc
    rates = torch.logspace(-3.3, -0.7, D_SAE)[torch.randperm(D_SAE, generator=gen)]
    b_enc = -torch.quantile(pre, 1 - rates, dim=0).diagonal()  # column j at its own rate
    w_dec = unit.T.clone() * (d_in / D_SAE) ** 0.5 / gain
    return {"W_enc": w_enc.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": w_dec.contiguous(),
            "b_dec": b_dec.contiguous()}


def _centred_block4_acts(snapshot: Path, rows: list[str]) -> Any:
    """Block 4's output of the HF model, centred per token (TransformerLens's convention), on some text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(snapshot)
    model = AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32).eval()
    ids = tok("\n\n".join(r for r in rows if r.strip()), add_special_tokens=False)["input_ids"][:1024]
    with torch.no_grad():
        hidden = model.gpt_neox(torch.tensor(ids).view(4, -1), output_hidden_states=True).hidden_states[5]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    return hidden - hidden.mean(-1, keepdim=True)


def build_hf_home(home: Path, work: Path, seed: int = 0) -> Path:
    """Lay out models, SAE and dataset under ``home`` (a fresh HF_HOME)."""
    import torch
    from safetensors.torch import save, save_file

    work.mkdir(parents=True, exist_ok=True)
    splits = write_wikitext(home, work)
    files = {"config.json": json.dumps(PYTHIA_CONFIG, indent=2).encode(), **_tokenizer_files(splits["train"], work)}
    files["model.safetensors"] = save(_pythia_weights(seed), metadata={"format": "pt"})
    model_snap = write_snapshot(home / "hub", PYTHIA, files)
    sae = _calibrated_sae(_centred_block4_acts(model_snap, splits["validation"] + splits["test"]), seed)
    cfg = {"model_name": "pythia-70m-deduped", "hook_point": SAE_ID, "hook_point_layer": 4,
           "hook_point_head_index": None, "dataset_path": "EleutherAI/the_pile_deduplicated",
           "is_dataset_tokenized": False, "context_size": 128, "use_cached_activations": False, "d_in": 512,
           "d_sae": D_SAE, "b_dec_init_method": "geometric_median", "expansion_factor": D_SAE // 512,
           "activation_fn_str": "relu", "normalize_sae_decoder": False, "noise_scale": 0.0,
           "apply_b_dec_to_input": True, "prepend_bos": True, "dtype": "float32", "device": "cpu",
           "sae_lens_training_version": None}
    sparsity = {"sparsity": torch.log10(torch.full((D_SAE,), 1e-2))}
    save_file(sae, str(work / "sae.safetensors"))
    write_snapshot(home / "hub", SAE_REPO, {
        "4-res-sm/cfg.json": json.dumps(cfg, indent=2).encode(),
        "4-res-sm/sae_weights.safetensors": (work / "sae.safetensors").read_bytes(),
        "4-res-sm/sparsity.safetensors": save(sparsity, metadata={"format": "pt"}),
    })
    return home


def offline_env(home: Path) -> dict[str, str]:
    """The environment of a process that finds only ``home`` and never touches the network."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    return env


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HF_HOME above, built once per session (shared by every module that imports this fixture)."""
    root = tmp_path_factory.getbasetemp() / "offline-hub"
    home = root / "hf-home"
    if not (root / "done").exists():
        build_hf_home(home, root / "work")
        (root / "done").write_text("ok")
    return home
