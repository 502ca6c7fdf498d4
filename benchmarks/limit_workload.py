"""The workload of bench_limit.py, built offline and cached in a work folder.

- ``corpus.txt``: English-like documents (featsurv.testing.write_corpus), blank-line separated;
- ``model/``: a Pythia-70M-shaped GPT-NeoX with random weights (6 layers, d_model 512, 8 heads,
  MLP 2048, vocab 50304, rotary 25%), saved with save_pretrained (safetensors), with the
  embedded featsurv-tiny tokenizer (its ids are a subset of the model's vocabulary);
- ``sae-W/``: a standard ReLU SAE of width W at ``blocks.3.hook_resid_post`` (sae-lens format).
  Random unit encoder directions, decoder = encoder transposed, ``b_dec`` the mean activation,
  and ``b_enc`` set so that each feature fires on ``L0 / W`` of the tokens (L0 = 80, a typical
  value for trained SAEs of any width). A random model has no sparse structure to find, so the
  SAE explains little variance: the audit runs with ``--min-explained-variance 0`` (the fit check
  still computes, only its threshold is off).

``tokens(work, n)`` cuts the audit contexts exactly as ``featsurv audit --dataset corpus.txt``
does (featsurv.tokens.build_tokens with BOS, special tokens excluded).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

VERSION = 2
HOOK = "blocks.3.hook_resid_post"
LAYER = 3
CONTEXT = 128
L0 = 80
WIDTHS = (4096, 8192, 16384, 32768, 65536)
MODEL_SHAPE = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                   intermediate_size=2048, max_position_embeddings=2048)


def documents(work: Path) -> list[str]:
    """The corpus's documents, split as featsurv's file dataset splits them."""
    text = (work / "corpus.txt").read_text(encoding="utf-8")
    return [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]


def tokens(work: Path, n_tokens: int) -> Any:
    from transformers import AutoTokenizer

    from featsurv.tokens import build_tokens

    tok = AutoTokenizer.from_pretrained(work / "model")
    return build_tokens(tok, documents(work), dataset=str(work / "corpus.txt"), n_tokens=n_tokens,
                        context=CONTEXT, prepend_bos=True, exclude_special=True, join="eos")


def _build_model(work: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from featsurv.data_paths import data_root

    tiny = data_root() / "models" / "featsurv-tiny"
    cfg = AutoConfig.from_pretrained(tiny)
    for k, v in MODEL_SHAPE.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    out = work / "model"
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, out / name)


def _calibration_acts(work: Path) -> Any:
    """FP activations at the hook on 16 contexts cut from the corpus's end (not audit tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model").eval()
    docs = documents(work)[-400:]
    ids = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"][: 16 * CONTEXT]
    grab = {}
    handle = model.gpt_neox.layers[LAYER].register_forward_hook(
        lambda m, i, o: grab.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(torch.tensor(ids).view(16, CONTEXT), use_cache=False)
    handle.remove()
    return grab["h"].reshape(-1, model.config.hidden_size)


def _build_sae(work: Path, width: int, acts: Any) -> None:
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in = acts.shape[1]
    gen = torch.Generator().manual_seed(width)
    w_enc = torch.randn(d_in, width, generator=gen)
    w_enc /= w_enc.norm(dim=0, keepdim=True)
    b_dec = acts.mean(0)
    k = max(1, int(round(acts.shape[0] * (1 - L0 / width))))
    thresholds = torch.cat([torch.kthvalue((acts - b_dec) @ w_enc[:, j:j + 4096], k, dim=0).values
                            for j in range(0, width, 4096)])
    meta = SAEMetadata(hook_name=HOOK, model_name="bench-pythia-70m-shaped", context_size=CONTEXT, prepend_bos=True)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=width, apply_b_dec_to_input=True, metadata=meta))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_enc.T)
        sae.b_enc.copy_(-thresholds)
        sae.b_dec.copy_(b_dec)
    sae.save_model(work / f"sae-{width}")


def build(work: Path, widths: tuple[int, ...] = WIDTHS) -> dict[str, Any]:
    """Build (or reuse) the workload in ``work``; returns its manifest."""
    work.mkdir(parents=True, exist_ok=True)
    manifest_path = work / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("version") != VERSION:
        manifest = {"version": VERSION, "widths": []}
        from featsurv.testing import write_corpus

        write_corpus(work / "corpus.txt", n_docs=4000, seed=1)
        _build_model(work)
    missing = [w for w in widths if w not in manifest["widths"]]
    if missing:
        acts = _calibration_acts(work)
        for w in missing:
            _build_sae(work, w, acts)
            manifest["widths"].append(w)
    manifest.update(hook=HOOK, context=CONTEXT, l0=L0, model=MODEL_SHAPE)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest
