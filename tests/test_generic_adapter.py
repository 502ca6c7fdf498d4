"""The built-in ``generic`` adapter on tiny random Llama and Qwen2 models (``model.layers`` layout).

The hook mapping is checked against what Hugging Face itself reports with
``output_hidden_states``: ``hidden_states[L]`` is the input of decoder layer L (resid_pre) and
``hidden_states[L + 1]`` its output (resid_post), except the last entry, which is after the final
norm.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featsurv import FeatsurvError
from featsurv.audit import AuditSession, make_options
from featsurv.capture import capture
from featsurv.hf import get_path
from featsurv.loading import load_model
from featsurv.plugins import build_registry
from featsurv.progress import Progress
from featsurv.runs import run_audit

LLAMA_ROLES = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
               "mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_in", "mlp.down_proj": "mlp_out"}


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_models, tmp_path_factory) -> Path:
    """A tiny random Qwen2 (q/k/v biases, grouped-query attention) with the tiny tokenizer."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen2Config"):
        pytest.skip("this transformers has no Qwen2Config")
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("qwen2") / "qwen2"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(params=["llama", "qwen2"])
def family_dir(request, tiny_models) -> Path:
    if request.param == "llama":
        return tiny_models["llama"]
    return request.getfixturevalue("tiny_qwen2")


def _ids(model, n: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, model.config.vocab_size, (2, n), generator=gen)


def test_generic_adapter_is_chosen(registry, family_dir):
    loaded = load_model(registry, str(family_dir))
    assert loaded.adapter.name == "generic"
    assert loaded.model.config.model_type in ("llama", "qwen2")


def test_hooks_match_output_hidden_states(registry, family_dir):
    loaded = load_model(registry, str(family_dir))
    adapter, model = loaded.adapter, loaded.model
    n_layers = len(adapter.layers(model))
    assert n_layers == model.config.num_hidden_layers
    hooks = [f"blocks.{L}.{kind}" for L in range(n_layers)
             for kind in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")]
    ids = _ids(model)
    with torch.no_grad(), capture(adapter, model, hooks) as acts:
        out = model(ids, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == n_layers + 1
    for L in range(n_layers):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"], hs[L])
        if L < n_layers - 1:
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hs[L + 1])
        # Llama-style blocks: resid_post = resid_pre + attn_out + mlp_out
        torch.testing.assert_close(
            acts[f"blocks.{L}.hook_resid_post"],
            acts[f"blocks.{L}.hook_resid_pre"] + acts[f"blocks.{L}.hook_attn_out"] + acts[f"blocks.{L}.hook_mlp_out"],
            rtol=1e-5, atol=1e-5)
    last = acts[f"blocks.{n_layers - 1}.hook_resid_post"]
    # the last hidden state is after the final norm, so it is *not* the last layer's resid_post
    assert not torch.allclose(last, hs[-1])
    torch.testing.assert_close(model.model.norm(last), hs[-1])


def test_hook_points_name_the_modules(registry, tiny_models):
    loaded = load_model(registry, str(tiny_models["llama"]))
    adapter, model = loaded.adapter, loaded.model
    block = model.model.layers[1]
    assert adapter.hook_point(model, "blocks.1.hook_resid_post") == (block, "output")
    assert adapter.hook_point(model, "blocks.1.hook_resid_pre") == (block, "input")
    assert adapter.hook_point(model, "blocks.1.hook_attn_out") == (block.self_attn, "output")
    assert adapter.hook_point(model, "blocks.1.hook_mlp_out") == (block.mlp, "output")
    with pytest.raises(FeatsurvError, match="names layer 2, but the model has 2 layers"):
        adapter.hook_point(model, "blocks.2.hook_resid_post")
    with pytest.raises(FeatsurvError, match="Unsupported hook"):
        adapter.hook_point(model, "blocks.0.hook_resid_mid")


def test_compressible_weights_with_roles(registry, family_dir):
    loaded = load_model(registry, str(family_dir))
    adapter, model = loaded.adapter, loaded.model
    cfg = model.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    targets = adapter.compressible_weights(model)
    n_layers = cfg.num_hidden_layers
    assert len(targets) == 7 * n_layers
    expected = [(f"model.layers.{L}.{path}", role, L) for L in range(n_layers) for path, role in LLAMA_ROLES.items()]
    assert [(t.name, t.role, t.layer) for t in targets] == expected
    for t in targets:
        module = get_path(model, t.name)
        assert t.module is module and t.weight is module.weight
        assert isinstance(module, torch.nn.Linear)
    layouts = {t.role: t.head_layout for t in targets if t.layer == 0}
    assert layouts["q"] == (cfg.num_attention_heads, 1, d_head)
    assert layouts["k"] == layouts["v"] == (cfg.num_key_value_heads, 1, d_head)
    assert layouts["o"] is None and layouts["mlp_in"] is None
    # the q rows really are laid out as (n_heads, 1, d_head)
    assert targets[0].weight.shape[0] == cfg.num_attention_heads * d_head


def test_weight_scopes(registry, tiny_models):
    loaded = load_model(registry, str(tiny_models["llama"]))
    adapter, model = loaded.adapter, loaded.model
    attn = adapter.compressible_weights(model, ("attn",))
    mlp = adapter.compressible_weights(model, ("mlp",))
    assert {t.role for t in attn} == {"q", "k", "v", "o"}
    assert {t.role for t in mlp} == {"mlp_gate", "mlp_in", "mlp_out"}
    full = adapter.compressible_weights(model, ("embed", "attn", "mlp", "lm_head"))
    assert full[0].role == "embed" and full[0].module is model.model.embed_tokens
    head = [t for t in full if t.role == "lm_head"]
    if model.config.tie_word_embeddings:
        assert not head  # tied to the embedding: compressed once
    else:
        assert head[0].module is model.lm_head
    with pytest.raises(FeatsurvError, match="Unknown weight scope"):
        adapter.compressible_weights(model, ("attn", "norms"))


def test_generic_matches_decoder_configs_only(registry):
    from transformers import LlamaConfig, T5Config

    generic = registry.get("model_adapters", "generic")
    assert generic.matches(LlamaConfig())
    assert not generic.matches(T5Config())


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.hook_resid_pre"])
def test_short_audit(registry, family_dir, tiny_sae, tiny_corpus, tmp_path, hook):
    options = make_options(model=str(family_dir), saes=[str(tiny_sae(family_dir, hook))], dataset=str(tiny_corpus),
                           n_tokens=384, bootstrap=0)
    session = AuditSession(options, registry, Progress(quiet=True))
    run_audit(options, [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"}),
                        ("rtn", {"bits": 3, "symmetric": True, "granularity": "channel"})],
              out_dir=tmp_path / "run", session=session)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["baseline"]["saes"][hook]["explained_variance"] > 0.99
    int8, int3 = summary["results"]
    assert int8["hook"] == hook and int8["n_active"] > 0
    assert int8["mean_r"] > 0.99 and int8["mean_r"] >= int3["mean_r"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["adapter"] == "generic"


class _Packed(torch.nn.Module):
    """A linear map whose weight is not a 2-D [out, in] matrix (as a packed or per-head layout would be)."""

    def __init__(self, n_heads: int, d_in: int, d_head: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_heads, d_in, d_head))

    def forward(self, x):
        return torch.einsum("...i,hid->...hd", x, self.weight).flatten(-2)


def test_generic_refuses_weights_that_are_not_linear(registry, tiny_models):
    """A Conv1D ([in, out]) or any other non-Linear weight is refused, never compressed along the wrong axis."""
    from transformers.pytorch_utils import Conv1D

    loaded = load_model(registry, str(tiny_models["llama"]))
    adapter, model = loaded.adapter, loaded.model
    attn = model.model.layers[1].self_attn
    attn.v_proj = Conv1D(attn.v_proj.out_features, attn.v_proj.in_features)
    with pytest.raises(FeatsurvError) as err:
        adapter.compressible_weights(model)
    text = err.value.message
    for needle in ("'generic'", "'model.layers.1.self_attn.v_proj'", "Conv1D", "not a torch.nn.Linear", "[in, out]",
                   "input dimension", "--adapter gpt2", "conv1d_targets", "docs/plugins/adapters.md"):
        assert needle in text, text
    cfg = model.config
    attn.v_proj = _Packed(cfg.num_key_value_heads, cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads)
    with pytest.raises(FeatsurvError) as err:
        adapter.compressible_weights(model, ("attn",))
    text = err.value.message
    for needle in ("'model.layers.1.self_attn.v_proj'", "_Packed", "[2, 32, 8]", "tensor=", "write_back=",
                   "docs/plugins/adapters.md"):
        assert needle in text, text
    assert adapter.compressible_weights(model, ("mlp",))  # the MLP is still plain nn.Linear


def test_generic_refusal_stops_the_cli_before_any_work(tiny_models, tiny_sae, tiny_corpus, tmp_path, monkeypatch):
    """Loading a model with a Conv1D where generic expects a Linear ends in exit 2, not a traceback."""
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from featsurv.cli import cli

    real = AutoModelForCausalLM.from_pretrained

    def patched(*args, **kwargs):
        model = real(*args, **kwargs)
        mlp = model.model.layers[0].mlp
        mlp.up_proj = Conv1D(mlp.up_proj.out_features, mlp.up_proj.in_features)
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", patched)
    out = tmp_path / "run"
    model = tiny_models["llama"]
    res = CliRunner().invoke(cli, ["audit", "rtn", "--model", str(model), "--sae", str(tiny_sae(model)),
                                   "--dataset", str(tiny_corpus), "--tokens", "256", "-q", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "model.layers.0.mlp.up_proj" in res.output and "Conv1D" in res.output and "Traceback" not in res.output
    assert not out.exists()
