"""The `act` compressor against torchao's quantizers and on TransformerLens components."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from featsurv.base import WeightTarget
from featsurv_plugins.compress_act import ActQuant
from test_act import _hook_count, _token_set, act, params


# --------------------------------------------------------------------------- torchao oracle
def _torchao_missing():
    try:
        import torchao.quantization  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return str(exc)
    return None


needs_torchao = pytest.mark.skipif(_torchao_missing() is not None and not os.environ.get("CI"),
                                   reason="torchao is not installed (make install adds it with featsurv-torchao)")


def _ours_on_linear(lin, x, p):
    lin = copy.deepcopy(lin)
    target = WeightTarget("lin", lin, "mlp_in", 0)
    compressor = act()
    compressor.compress([target], p)
    with torch.no_grad(), compressor.transform(None, [target], p):
        return lin(x)


def _torchao_on_linear(lin, x, config):
    from torchao.quantization import quantize_

    lin = copy.deepcopy(lin)
    quantize_(lin, config)
    with torch.no_grad():
        return lin(x)


@pytest.fixture(scope="module")
def linear_case():
    torch.manual_seed(0)
    return torch.nn.Linear(128, 96), torch.randn(4, 16, 128)


@needs_torchao
@pytest.mark.parametrize("act_mapping", ["SYMMETRIC", "ASYMMETRIC"])
def test_w8a8_matches_torchao_int8_dynamic_activation(linear_case, act_mapping):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, MappingType

    lin, x = linear_case
    config = Int8DynamicActivationInt8WeightConfig(act_mapping_type=getattr(MappingType, act_mapping),
                                                   set_inductor_config=False)
    theirs = _torchao_on_linear(lin, x, config)
    if act_mapping == "SYMMETRIC":
        p = params(recipe="w8a8", int_range="full")  # torchao's INT grid
    else:
        p = params(bits=8, symmetric=False, weight_bits=8, int_range="full")
    ours = _ours_on_linear(lin, x, p)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (lin(x) - theirs).abs().max() > 1e-3  # the comparison is not FP against FP


@needs_torchao
def test_w8a8_default_grid_is_within_torchaos_quantization_error(linear_case):
    """The default (rtn's restricted grid, scale absmax/127) differs from torchao's (absmax/127.5) by
    less than one quantization step; its error against torchao is of the size of W8A8's error itself."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    lin, x = linear_case
    theirs = _torchao_on_linear(lin, x, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    ours = _ours_on_linear(lin, x, params(recipe="w8a8"))
    with torch.no_grad():
        fp = lin(x)
    gap = (ours - theirs).norm() / fp.norm()
    assert gap < 0.01
    assert gap < 2 * (theirs - fp).norm() / fp.norm()


@needs_torchao
def test_w4a8_matches_torchao_8da4w(linear_case):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, MappingType
    from torchao.quantization.granularity import PerGroup

    lin, x = linear_case
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32),
                                                   weight_mapping_type=MappingType.SYMMETRIC,
                                                   act_mapping_type=MappingType.ASYMMETRIC)
    theirs = _torchao_on_linear(lin, x, config)
    ours = _ours_on_linear(lin, x, params(bits=8, symmetric=False, weight_bits=4, weight_granularity="group:32",
                                          int_range="full"))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- TransformerLens components
tl_quiet = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


def _tl_model_and_targets():
    """A tiny HookedTransformer and targets as a TransformerLens adapter hands them out (module = component)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=64,
                                  act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                                  rotary_dim=8, seed=0)
    model = HookedTransformer(cfg).eval()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    targets = [WeightTarget(f"blocks.0.attn.W_{r.upper()}", attn, r, 0, (4, 1, 8),
                            tensor=getattr(attn, f"W_{r.upper()}").detach().permute(0, 2, 1).reshape(32, 32).clone())
               for r in ("q", "k", "v")]
    targets.append(WeightTarget("blocks.0.attn.W_O", attn, "o", 0, None,
                                tensor=attn.W_O.detach().reshape(32, 32).T.contiguous()))
    targets += [WeightTarget("blocks.0.mlp.W_in", mlp, "mlp_in", 0, None, tensor=mlp.W_in.detach().T.contiguous()),
                WeightTarget("blocks.0.mlp.W_out", mlp, "mlp_out", 0, None, tensor=mlp.W_out.detach().T.contiguous())]
    return model, targets


def _tl_run(model, targets, p, names):
    """Activations at TransformerLens hook points: (FP-side values before our hooks, values after them)."""
    before, after = {}, {}
    points = {n: model.hook_dict[n] for n in names}
    handles = [pt.register_forward_hook(lambda _m, _a, out, n=n: before.setdefault(n, out.detach().clone()))
               for n, pt in points.items()]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), act().transform(None, targets, p):
        handles += [pt.register_forward_hook(lambda _m, _a, out, n=n: after.setdefault(n, out.detach().clone()))
                    for n, pt in points.items()]
        model(ids)
        for h in handles:
            h.remove()
    return before, after


def _per_token(x, bits=8):
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True) / qmax
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


@tl_quiet
def test_transformer_lens_components_quantize_each_linear_input():
    model, targets = _tl_model_and_targets()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    names = ["blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q", "blocks.0.attn.hook_z",
             "blocks.0.hook_attn_out", "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre",
             "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out"]
    fp, seen = _tl_run(model, targets, params(bits=8), names)
    # W_Q reads the per-token quantized attention input
    x = _per_token(fp["blocks.0.ln1.hook_normalized"])
    q = torch.einsum("bpd,hdk->bphk", x, attn.W_Q) + attn.b_Q
    torch.testing.assert_close(seen["blocks.0.attn.hook_q"], q, atol=1e-5, rtol=1e-5)
    # W_O reads z quantized per token over all heads' d_head values together
    z = seen["blocks.0.attn.hook_z"]
    zf = fp["blocks.0.attn.hook_z"]
    torch.testing.assert_close(z, _per_token(zf.reshape(2, 12, 32)).reshape(zf.shape))
    out = torch.einsum("bphk,hkd->bpd", z, attn.W_O) + attn.b_O
    torch.testing.assert_close(seen["blocks.0.hook_attn_out"], out, atol=1e-5, rtol=1e-5)
    # W_in reads the quantized MLP input, W_out the quantized hook_post
    pre = _per_token(fp["blocks.0.ln2.hook_normalized"]) @ mlp.W_in + mlp.b_in
    torch.testing.assert_close(seen["blocks.0.mlp.hook_pre"], pre, atol=1e-5, rtol=1e-5)
    post = seen["blocks.0.mlp.hook_post"]
    torch.testing.assert_close(post, _per_token(fp["blocks.0.mlp.hook_post"]))
    torch.testing.assert_close(seen["blocks.0.hook_mlp_out"], post @ mlp.W_out + mlp.b_out, atol=1e-5, rtol=1e-5)


@tl_quiet
def test_transformer_lens_kv_per_head():
    model, targets = _tl_model_and_targets()
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v"]
    fp, seen = _tl_run(model, targets, params(bits=0, kv=4), names)
    for n in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v"):  # [batch, pos, head, d_head]
        torch.testing.assert_close(seen[n], _per_token(fp[n], bits=4))
        assert not torch.equal(seen[n], fp[n])
    assert torch.equal(seen["blocks.0.attn.hook_q"], fp["blocks.0.attn.hook_q"])


@tl_quiet
def test_transformer_lens_calibration_and_hooks_removed():
    from featsurv.base import LoadedModel

    model, targets = _tl_model_and_targets()

    class Adapter:
        def forward(self, m, ids):
            return m(ids)

    loaded = LoadedModel(model, None, Adapter(), "tl", "float32", "cpu")
    compressor = ActQuant()
    compressor.calibrate(loaded, targets, _token_set(list(range(10))))
    # W_Q, W_K, W_V read one input each (the same tensor), W_O z flattened to heads*d_head, MLP in and post
    widths = {k: v[0].shape[0] for k, v in compressor.static.items()}
    assert widths == {"blocks.0.attn.W_Q": 32, "blocks.0.attn.W_K": 32, "blocks.0.attn.W_V": 32,
                      "blocks.0.attn.W_O": 32, "blocks.0.mlp.W_in": 32, "blocks.0.mlp.W_out": 64}
    ids = torch.arange(10).unsqueeze(0)
    base = _hook_count(model)
    with torch.no_grad():
        fp = model(ids)
        with compressor.transform(loaded, targets, params(bits=6, granularity="channel", kv=8)):
            assert not torch.equal(model(ids), fp)
        assert _hook_count(model) == base and torch.equal(model(ids), fp)
