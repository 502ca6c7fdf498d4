"""Test helpers and pytest fixtures for featsurv and its plugin authors.

Use them from a plugin's tests with ``pytest_plugins = "featsurv.testing"`` in conftest.py:

- ``tiny_corpus``: a small deterministic English-like text file;
- ``tiny_models``: a dict family -> directory of a tiny random model (``gpt_neox``, ``gemma2``,
  ``llama``) saved with ``save_pretrained``, with its own small byte-level BPE tokenizer;
- ``tiny_sae``: a factory ``tiny_sae(model_dir, hook) -> directory`` of a sae-lens SAE that
  reconstructs the hook's activations exactly (so the fit check passes on a random model);
- ``register_plugin``: ``register_plugin(obj, name=...)`` adds a plugin (module, class instance
  or any object with ``@hookimpl`` functions) to the registry for one test only;
- ``clean_plugin_controls``: no FEATSURV_* plugin control variable leaks into a test, and the
  plugin registry is rebuilt around it (use it with ``@pytest.mark.usefixtures``);
- ``run_featsurv(*args, env_extra=...)``: the real `featsurv` command in a fresh process, with
  the plugin control variables cleared (then ``env_extra`` applied).

Everything is built offline from configs; nothing touches the network.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

WORDS = (
    "the a model feature layer token weight value small large quantized pruned returns list of "
    "function string number class module object file path error data result each when if then "
    "because therefore which this that with from into over under between among sparse dense "
    "survives changes measures reads writes keeps drops counts adds compares finds"
).split()

FAMILIES = ("gpt_neox", "gemma2", "llama")
#: the environment variables that control which plugins load
CONTROL_VARS = ("FEATSURV_LOAD_PLUGINS", "FEATSURV_DISABLE_PLUGINS", "FEATSURV_PLUGINS_DIR", "FEATSURV_STRICT_PLUGINS")


def run_featsurv(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run `featsurv ARGS...` in a fresh Python process; returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in CONTROL_VARS}
    env.update(env_extra or {})
    code = "import sys; from featsurv.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def clean_plugin_controls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No plugin control variable leaks in from the environment; no registry leaks out of a test."""
    from .plugins import reset_registry

    for var in CONTROL_VARS:
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    yield
    reset_registry()


def write_corpus(path: Path, n_docs: int = 400, seed: int = 0) -> Path:
    """A deterministic corpus of short English-like documents separated by blank lines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def build_tokenizer(corpus: Path, out_dir: Path, vocab_size: int = 300) -> Any:
    """A byte-level BPE tokenizer with ``<|endoftext|>`` as BOS/EOS, like Pythia's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(corpus)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(family: str, out_dir: Path, tokenizer: Any, seed: int = 0, n_layers: int = 2) -> Path:
    """Save a tiny randomly initialised causal LM of ``family`` with ``tokenizer`` to ``out_dir``."""
    import torch
    from transformers import (AutoModelForCausalLM, Gemma2Config, GPTNeoXConfig, LlamaConfig)

    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                  num_attention_heads=4, max_position_embeddings=256,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if family == "gpt_neox":
        config: Any = GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True)
    elif family == "gemma2":
        config = Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=64,
                              query_pre_attn_scalar=8, pad_token_id=tokenizer.eos_token_id)
    elif family == "llama":
        config = LlamaConfig(**common, num_key_value_heads=2)
    else:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")
    torch.manual_seed(seed)
    config.initializer_range = 0.2  # larger than usual so the random model is not near-linear
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def write_exact_sae(out_dir: Path, d_in: int, hook: str, *, model_name: str = "tiny", context_size: int = 32,
                    prepend_bos: bool = True, seed: int = 0, architecture: str = "standard") -> Path:
    """A sae-lens SAE (``d_sae = 2 * d_in``) that reconstructs its input exactly.

    Features are the positive and negative parts of a random rotation of the input:
    ``f = relu([Q, -Q]^T x)``, decoded by ``[Q^T; -Q^T]``. Written with sae-lens's ``save_model``.
    """
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    if architecture != "standard":
        raise ValueError("only the standard architecture is built here")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen))
    meta = SAEMetadata(hook_name=hook, model_name=model_name, context_size=context_size, prepend_bos=prepend_bos)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=True, metadata=meta)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([q, -q], dim=1))
        sae.W_dec.copy_(torch.cat([q.T, -q.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(out_dir)
    return out_dir


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer(tiny_corpus, root / "tokenizer")
    return {family: build_tiny_model(family, root / family, tokenizer) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_sae(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    root = tmp_path_factory.mktemp("saes")
    made: dict[tuple[str, str], Path] = {}

    def make(model_dir: Path, hook: str = "blocks.1.hook_resid_post", **kwargs: Any) -> Path:
        key = (str(model_dir), hook + json.dumps(kwargs, sort_keys=True))
        if key not in made:
            d_in = json.loads((Path(model_dir) / "config.json").read_text())["hidden_size"]
            out = root / f"{Path(model_dir).name}-{hook}-{len(made)}"
            made[key] = write_exact_sae(out, d_in, hook, **kwargs)
        return made[key]

    return make


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., Any]]:
    """Register a plugin object for the duration of one test."""
    from . import plugins

    plugins.reset_registry()
    registry = plugins.get_registry()
    added: list[str] = []

    def register(obj: Any, name: str = "test-plugin", distribution: str = "test", version: str = "0") -> Any:
        registry.add_plugin(obj, name, distribution, version)
        added.append(name)
        return registry

    yield register
    plugins.reset_registry()
