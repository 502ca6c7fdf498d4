"""Hook mapping of the built-in adapters against output_hidden_states and residual arithmetic."""
import pytest
import torch

from featsurv.capture import capture
from featsurv.errors import FeatsurvError
from featsurv.loading import load_model
from featsurv.plugins import get_registry


@pytest.mark.parametrize("family,adapter", [("gpt_neox", "gpt_neox"), ("gemma2", "gemma2")])
def test_hooks_match_hidden_states(tiny_models, family, adapter):
    loaded = load_model(get_registry(), str(tiny_models[family]))
    assert loaded.adapter.name == adapter
    model = loaded.model
    n = len(loaded.adapter.layers(model))
    hooks = [f"blocks.{L}.hook_{k}" for L in range(n) for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad(), capture(loaded.adapter, model, hooks) as acts:
        out = model(ids, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == n + 1
    for L in range(n):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"], hs[L])
        if L < n - 1:  # the last hidden state is after the final norm, not resid_post
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hs[L + 1])
        # every block adds its attention and MLP outputs to the residual stream
        torch.testing.assert_close(
            acts[f"blocks.{L}.hook_resid_post"],
            acts[f"blocks.{L}.hook_resid_pre"] + acts[f"blocks.{L}.hook_attn_out"] + acts[f"blocks.{L}.hook_mlp_out"],
            rtol=1e-4, atol=1e-5)
    assert not torch.allclose(acts[f"blocks.{n - 1}.hook_resid_post"], hs[n])


def test_compressible_weights_scope_and_roles(tiny_models):
    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    roles = sorted({t.role for t in targets})
    assert roles == ["mlp_in", "mlp_out", "o", "qkv"]
    assert len(targets) == 4 * 2
    qkv = next(t for t in targets if t.role == "qkv")
    assert qkv.head_layout == (4, 3, 8)
    names = {t.name for t in loaded.adapter.compressible_weights(loaded.model, ("attn", "mlp", "embed", "lm_head"))}
    assert "gpt_neox.embed_in" in names and len(names) == 4 * 2 + 2
    g = load_model(get_registry(), str(tiny_models["gemma2"]))
    roles = {t.role: t.head_layout for t in g.adapter.compressible_weights(g.model)}
    assert roles["q"] == (4, 1, 8) and roles["k"] == (2, 1, 8) and roles["mlp_gate"] is None


@pytest.mark.parametrize("hook", ["blocks.7.hook_resid_post", "blocks.0.hook_z", "resid_post"])
def test_bad_hook_names(tiny_models, hook):
    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    with pytest.raises(FeatsurvError, match="hook|layer"):
        loaded.adapter.hook_point(loaded.model, hook)
