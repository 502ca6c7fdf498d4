"""The `act` compressor: activation and KV-cache fake quantization against hand computations (torchao and TransformerLens: test_act_backends.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featsurv.base import LoadedModel, WeightTarget
from featsurv.errors import FeatsurvError
from featsurv.plugins import get_registry
from featsurv.tokens import TokenSet
from featsurv_plugins.compress_act import ActQuant, QuantSpec, fake_quant

INT4 = QuantSpec("int", 4, True, "restricted")


def act() -> ActQuant:
    return get_registry().get("compressors", "act")


def params(**kw):
    """A full parameter set (defaults plus ``kw``), as the host hands it to a compressor."""
    return {**act().defaults(), **kw}


# --------------------------------------------------------------------------- hand computations
def test_per_token_symmetric_by_hand():
    # 4 bits, qmax 7. Row 0: absmax 0.875, scale 0.125 -> [7, -3.5 -> -4 (half to even), 1, 0]
    # Row 1: absmax 1.75, scale 0.25 -> [-7, 1.2 -> 1, 4, 2.4 -> 2]
    x = torch.tensor([[0.875, -0.4375, 0.125, 0.0], [-1.75, 0.3, 1.0, 0.6]])
    out = fake_quant(x, INT4, (-1,))
    torch.testing.assert_close(out, torch.tensor([[0.875, -0.5, 0.125, 0.0], [-1.75, 0.25, 1.0, 0.5]]))


def test_per_token_asymmetric_by_hand():
    # 4 bits, 15 levels: lo -0.375, hi 3.375, scale 0.25, zero round(1.5) = 2
    # q = clamp(round(x/0.25) + 2, 0, 15): [2, 8, -2+2=0, 14+2=16 -> 15]; (q - 2) * 0.25
    x = torch.tensor([[0.0, 1.5, -0.375, 3.375]])
    out = fake_quant(x, QuantSpec("int", 4, False), (-1,))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.5, -0.5, 3.25]]))


def test_full_int_range_by_hand():
    # torchao's grid: 4 bits -> levels -8..7, scale absmax / 7.5. absmax 1.875 -> scale 0.25
    # x*4 = [7.5 -> 8 -> clamp 7, -7.5 -> -8, 2.2 -> 2]
    x = torch.tensor([[1.875, -1.875, 0.55]])
    out = fake_quant(x, QuantSpec("int", 4, True, "full"), (-1,))
    torch.testing.assert_close(out, torch.tensor([[1.75, -2.0, 0.5]]))


# A tiny "model": token ids pick input vectors (an embedding), one linear layer reads them.
CALIBRATION_ROWS = [[-0.875, 3.5], [0.5, -1.0], [0.1, 0.2], [0.0, 0.0]]  # ids 0-3
AUDIT_ROWS = [[0.875, -0.4375], [-1.75, 1.0], [0.4375, 0.0625]]  # ids 4-6


class _EmbedAdapter:
    def forward(self, model, ids):
        return model(ids)


def _token_set(rows):
    ids = torch.tensor([rows])
    return TokenSet(ids, torch.ones_like(ids, dtype=torch.bool), ids.flatten(), ids.shape[1], False, None, "test")


def _embed_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(7, 2), torch.nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(CALIBRATION_ROWS + AUDIT_ROWS))
    loaded = LoadedModel(model, None, _EmbedAdapter(), "embed", "float32", "cpu")
    return loaded, [WeightTarget("linear", model[1], "mlp_in", 0)]


def _quantized_input(loaded, targets, compressor, p):
    """What the linear layer receives on the audit rows while the configuration is active."""
    seen = {}
    with compressor.transform(loaded, targets, p):
        handle = targets[0].module.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0].clone()))
        try:
            loaded.model(torch.tensor([[4, 5, 6]]))
        finally:
            handle.remove()
    return seen["x"][0]


@pytest.mark.parametrize("granularity, expected", [
    # dynamic: each token's own absmax (rows as in test_per_token_symmetric_by_hand)
    ("token", [[0.875, -0.5], [-1.75, 1.0], [0.4375, 0.0625]]),
    # static per tensor: calibrated absmax 3.5 -> scale 0.5 shared by every token
    # x/0.5 = [[1.75->2, -0.875->-1], [-3.5->-4, 2], [0.875->1, 0.125->0]]
    ("tensor", [[1.0, -0.5], [-2.0, 1.0], [0.5, 0.0]]),
    # static per channel: calibrated absmax [0.875, 3.5] -> scales [0.125, 0.5]
    # channel 0: [7, -14 -> clamp -7, 3.5 -> 4]; channel 1: [-0.875 -> -1, 2, 0.125 -> 0]
    ("channel", [[0.875, -0.5], [-0.875, 1.0], [0.5, 0.0]]),
])
def test_granularities_by_hand_through_the_hooks(granularity, expected):
    loaded, targets = _embed_model()
    compressor = ActQuant()
    p = params(bits=4, granularity=granularity)
    assert compressor.needs_calibration_for(p) == (granularity != "token")
    compressor.calibrate(loaded, targets, _token_set([0, 1, 2, 3]))
    torch.testing.assert_close(_quantized_input(loaded, targets, compressor, p), torch.tensor(expected))


def test_static_scales_come_from_the_calibration_tokens_only():
    loaded, targets = _embed_model()
    compressor = ActQuant()
    compressor.calibrate(loaded, targets, _token_set([0, 1, 2, 3]))
    lo, hi = compressor.static["linear"]
    torch.testing.assert_close(lo, torch.tensor([-0.875, -1.0]))
    torch.testing.assert_close(hi, torch.tensor([0.5, 3.5]))
    p = params(bits=4, granularity="tensor")
    before = _quantized_input(loaded, targets, compressor, p)
    # audit passes do not move the static ranges
    torch.testing.assert_close(compressor.static["linear"][1], torch.tensor([0.5, 3.5]))
    # another calibration set (rows 1-3: absmax 1.0 -> scale 1/7) gives other scales; audit values
    # beyond the calibrated range clamp: x*7 = [[6.125->6, -3.0625->-3], [-12.25->-7, 7], [3.0625->3, 0.4375->0]]
    compressor.calibrate(loaded, targets, _token_set([1, 2, 3]))
    after = _quantized_input(loaded, targets, compressor, p)
    torch.testing.assert_close(after, torch.tensor([[6.0, -3.0], [-7.0, 7.0], [3.0, 0.0]]) / 7)
    assert not torch.equal(before, after)


def test_static_granularity_without_calibration_is_an_error():
    loaded, targets = _embed_model()
    with pytest.raises(FeatsurvError, match="calibrat"):
        ActQuant().transform(loaded, targets, params(granularity="tensor"))


# --------------------------------------------------------------------------- FP8 by hand
def _fp8_grid(exp_bits: int, man_bits: int, bias: int, finite_top: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every non-negative value of a float format (and whether its mantissa code is even), from the bit layout."""
    values, even = [], []
    for e in range(2 ** exp_bits):
        for m in range(2 ** man_bits):
            if e == 2 ** exp_bits - 1 and (not finite_top or m == 2 ** man_bits - 1):
                continue  # e5m2: inf/NaN exponent; e4m3fn: only S.1111.111 is NaN
            frac = m / 2 ** man_bits
            values.append((frac if e == 0 else 1 + frac) * 2.0 ** ((1 if e == 0 else e) - bias))
            even.append(m % 2 == 0)
    return np.array(values), np.array(even)


def _round_to_grid(v: np.ndarray, grid: np.ndarray, even: np.ndarray) -> np.ndarray:
    """Round to the nearest grid value, ties to the even mantissa code, saturating at the top."""
    a = np.minimum(np.abs(v).astype(np.float64), grid[-1])
    dist = np.abs(a[:, None] - grid[None, :])
    best = dist.min(1, keepdims=True)
    candidates = np.isclose(dist, best, rtol=0, atol=0)
    pick = np.where(candidates.sum(1) > 1, np.argmax(candidates & even[None, :], 1), np.argmin(dist, 1))
    return np.sign(v) * grid[pick]


@pytest.mark.parametrize("fmt, layout, fmax", [("e4m3", (4, 3, 7, True), 448.0), ("e5m2", (5, 2, 15, False), 57344.0)])
def test_fp8_per_token_by_hand(fmt, layout, fmax):
    grid, even = _fp8_grid(*layout)
    assert grid.max() == fmax
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 24, generator=gen) * torch.logspace(-3, 2, 16).unsqueeze(1)
    x[0, :4] = torch.tensor([1.0, -1.0 - 1 / 16, 0.5 + 1 / 32, 448.0 / 64])  # ties and exact values
    out = fake_quant(x, QuantSpec(fmt), (-1,))
    # by hand: scale = absmax / fmax per token (float32), round x / scale onto the format's grid
    scale = (x.abs().amax(-1, keepdim=True) / fmax).numpy()
    scaled = (x.numpy() / scale).astype(np.float32)
    expected = (_round_to_grid(scaled.reshape(-1), grid, even).reshape(x.shape).astype(np.float32) * scale)
    np.testing.assert_array_equal(out.numpy(), expected.astype(np.float32))
    assert not torch.equal(out, x)


def test_fp8_static_range_clamps():
    lo, hi = torch.tensor(-1.0), torch.tensor(448.0 / 256)  # scale 1/256 for e4m3
    out = fake_quant(torch.tensor([10.0, -3.0, 0.5]), QuantSpec("e4m3"), lo=lo, hi=hi)
    torch.testing.assert_close(out, torch.tensor([1.75, -1.75, 0.5]))


# --------------------------------------------------------------------------- composition with rtn
def test_weight_bits_use_rtns_quantizer_and_compose_with_activations(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["llama"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    fp = [t.weight.detach().clone() for t in targets]
    rtn = get_registry().get("compressors", "rtn")
    rtn.compress(targets, {"bits": 4, "symmetric": True, "granularity": "channel"})
    want = [t.weight.detach().clone() for t in targets]
    with torch.no_grad():
        for t, w in zip(targets, fp):
            t.weight.copy_(w)
    act().compress(targets, params(bits=8, weight_bits=4))
    for t, w in zip(targets, want):
        assert torch.equal(t.weight, w), t.name
    # weights only (bits=0) installs no hooks: W4 alone is rtn int4
    assert act().transform(loaded, targets, params(bits=0, weight_bits=4)) is None


def test_fp8_recipe_weights_per_channel_e4m3():
    w = torch.tensor([[448.0, 1.0 + 1 / 16, -3.0], [0.5, 0.25, 0.2]])
    target = WeightTarget("w", torch.nn.Linear(3, 2), "mlp_in", 0)
    with torch.no_grad():
        target.module.weight.copy_(w)
    act().compress([target], params(recipe="fp8"))
    # row 0: scale 1 -> e4m3 grid: 1.0625 is a tie between 1.0 and 1.125 -> even mantissa 1.0; -3 exact
    # row 1: scale 0.5/448; 0.25 and 0.2 in units of the scale: 224 exact, 179.2 -> 176 (step 16 in [128, 256))
    s = 0.5 / 448
    expected = torch.tensor([[448.0, 1.0, -3.0], [0.5, 0.25, 176 * s]])
    torch.testing.assert_close(target.module.weight.detach(), expected)


# --------------------------------------------------------------------------- KV cache
def _capture_projection(module, store):
    """Record a projection's input and (quantized) output; registered after the transform's hooks."""
    h1 = module.register_forward_pre_hook(lambda _m, a: store.setdefault("x", a[0].detach().clone()))
    h2 = module.register_forward_hook(lambda _m, _a, out: store.setdefault("y", out.detach().clone()))
    return h1, h2


def _by_head(y, n_heads, parts, d_head, bits):
    """Hand computation: per (token, head, part) symmetric absmax scale over d_head, restricted grid."""
    v = y.reshape(*y.shape[:-1], n_heads, parts, d_head)
    qmax = 2 ** (bits - 1) - 1
    scale = v.abs().amax(-1, keepdim=True) / qmax
    return torch.clamp(torch.round(v / scale), -qmax, qmax) * scale


def test_kv_fake_quant_of_fused_qkv_by_hand(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    qkv = next(t for t in targets if t.role == "qkv" and t.layer == 1)
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    p = params(bits=0, kv=4)
    compressor = act()
    store = {}
    with torch.no_grad():
        fp_logits = loaded.model(ids).logits
        with compressor.transform(loaded, targets, p):
            handles = _capture_projection(qkv.module, store)
            logits = loaded.model(ids).logits
            for h in handles:
                h.remove()
    n_heads, parts, d_head = qkv.head_layout
    assert parts == 3
    y = torch.nn.functional.linear(store["x"], qkv.module.weight, qkv.module.bias)  # the FP projection
    got = store["y"].reshape(*y.shape[:-1], n_heads, 3, d_head)
    want = _by_head(y, n_heads, 3, d_head, 4)
    torch.testing.assert_close(got[..., 0, :], y.reshape(got.shape)[..., 0, :], atol=0, rtol=0)  # Q untouched
    torch.testing.assert_close(got[..., 1:, :], want[..., 1:, :])  # K and V per head
    assert not torch.equal(logits, fp_logits)


def test_kv_fake_quant_of_separate_projections_by_hand(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["llama"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    by_role = {t.role: t for t in targets if t.layer == 0}
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    stores = {role: {} for role in ("q", "k", "v")}
    with torch.no_grad(), act().transform(loaded, targets, params(bits=0, kv=8)):
        handles = [h for role in stores for h in _capture_projection(by_role[role].module, stores[role])]
        loaded.model(ids)
        for h in handles:
            h.remove()
    for role in ("k", "v"):
        t, s = by_role[role], stores[role]
        n_kv, parts, d_head = t.head_layout
        assert n_kv == 2  # grouped-query attention: the cache holds the KV heads
        y = torch.nn.functional.linear(s["x"], t.module.weight, t.module.bias)
        torch.testing.assert_close(s["y"], _by_head(y, n_kv, 1, d_head, 8).reshape(y.shape))
        assert not torch.equal(s["y"], y)
    q = stores["q"]
    assert torch.equal(q["y"], torch.nn.functional.linear(q["x"], by_role["q"].module.weight))


def test_kv_of_a_fused_projection_split_into_q_k_v_targets():
    """GPT-2's c_attn (output columns [Q | K | V]) handed out as three targets sharing one module."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4)).eval()
    c_attn = model.transformer.h[0].attn.c_attn
    targets = [WeightTarget(f"c_attn[{role}]", c_attn, role, 0, (4, 1, 8), tensor=c_attn.weight.T[i * 32:(i + 1) * 32])
               for i, role in enumerate(("q", "k", "v"))]
    fp, quantized = {}, {}
    before = c_attn.register_forward_hook(lambda _m, _a, out: fp.setdefault("y", out.detach().clone()))
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), act().transform(None, targets, params(bits=0, kv=4)):
        after = c_attn.register_forward_hook(lambda _m, _a, out: quantized.setdefault("y", out.detach().clone()))
        model(ids)
        after.remove()
    before.remove()
    y, got = fp["y"], quantized["y"]
    assert torch.equal(got[..., :32], y[..., :32])  # Q untouched
    for part in (1, 2):  # K, V: per (token, head) over d_head
        cols = slice(part * 32, (part + 1) * 32)
        torch.testing.assert_close(got[..., cols], _by_head(y[..., cols], 4, 1, 8, 4).reshape(y[..., cols].shape))


# --------------------------------------------------------------------------- hooks come off
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_a_configuration_even_when_it_raises(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    ids = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    base = _hook_count(loaded.model)
    with torch.no_grad():
        fp = loaded.model(ids).logits
        ctx = act().transform(loaded, targets, params(bits=6, kv=4))
        with ctx:
            assert _hook_count(loaded.model) > base
            assert not torch.equal(loaded.model(ids).logits, fp)
        assert _hook_count(loaded.model) == base
        with pytest.raises(RuntimeError, match="midway"):
            with act().transform(loaded, targets, params(bits=4, format="int")):
                loaded.model(ids)
                raise RuntimeError("failed midway")
        assert _hook_count(loaded.model) == base
        assert torch.equal(loaded.model(ids).logits, fp)


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kw, match", [
    (dict(recipe="w8a8", bits=6), "recipe=w8a8 fixes bits"),
    (dict(recipe="w4a8", weight_granularity="group:32"), "weight_granularity"),
    (dict(format="e4m3", bits=6), "8-bit format"),
    (dict(format="e4m3", symmetric=False), "symmetric"),
    (dict(weight_format="e5m2"), "weight bits are 0"),
    (dict(bits=0), "quantizes nothing"),
    (dict(weight_bits=4, weight_granularity="tl", int_range="full"), "tl"),
])
def test_bad_combinations_are_user_errors(kw, match):
    with pytest.raises(FeatsurvError, match=match):
        act().label(params(**kw))


def test_bad_single_values_are_user_errors():
    spec = {p.name: p for p in act().params}
    for name, value in (("bits", "3"), ("bits", "9"), ("kv", "1"), ("weight_bits", "1"),
                        ("weight_granularity", "group:x"), ("scope", "attn,mlp"), ("format", "fp4")):
        with pytest.raises(FeatsurvError, match=name):
            spec[name].parse(value, "act")


def test_scope_and_kv_need_targets(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    mlp_only = loaded.adapter.compressible_weights(loaded.model, ("mlp",))
    with pytest.raises(FeatsurvError, match="selects no linear layer"):
        act().transform(loaded, mlp_only, params(scope="attn"))
    with pytest.raises(FeatsurvError, match="K and V"):
        act().transform(loaded, mlp_only, params(bits=0, kv=8))
    with pytest.raises(FeatsurvError, match="does not divide"):
        act().compress(mlp_only, params(recipe="w4a8"))  # groups of 128 on a 32-wide tiny model


def test_scope_limits_the_quantized_inputs(tiny_models):
    from featsurv.loading import load_model

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    targets = loaded.adapter.compressible_weights(loaded.model)
    base = _hook_count(loaded.model)
    for scope, n in (("attn", 4), ("mlp", 4), ("attn+mlp", 8)):  # 2 layers: qkv + dense, h_to_4h + 4h_to_h
        with act().transform(loaded, targets, params(scope=scope)):
            assert _hook_count(loaded.model) - base == n, scope


def test_labels_and_search_knob():
    c = act()
    assert c.label(params()) == "act A8"
    assert c.label(params(bits=4, weight_bits=4)) == "act W4A4"
    assert c.label(params(recipe="w8a8")) == "act w8a8"
    assert c.label(params(recipe="fp8", kv=8)) == "act fp8 KV8"
    assert c.label(params(bits=0, weight_bits=8, weight_format="e4m3")) == "act Wfp8-e4m3"
    assert c.label(params(granularity="tensor", symmetric=False)) == "act A8 symmetric=False granularity=tensor"
    assert c.search_knob(params(bits=6)) == "bits"
    assert c.search_knob(params(format="e4m3", weight_bits=4)) == "weight_bits"
    assert c.search_knob(params(bits=0, kv=4)) == "kv"
    assert c.search_knob(params(recipe="w4a8")) is None
    assert c.knob_increases_compression is False


def test_dtype_is_kept():
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    for spec in (QuantSpec("int", 8), QuantSpec("e4m3"), QuantSpec("int", 4, False, "full")):
        assert fake_quant(x, spec, (-1,)).dtype == torch.bfloat16


# --------------------------------------------------------------------------- through the host
class _Boom(ActQuant):
    """act, plus a hook that raises on the second forward pass of the configuration (mid-audit)."""

    name = "act_boom"

    def transform(self, model, targets, p):
        return _BoomContext(super().transform(model, targets, p), model.adapter.layers(model.model)[-1])


class _BoomContext:
    """A plain context manager (no generator, so nothing but the host's exit removes its hooks)."""

    def __init__(self, inner, layer):
        self.inner, self.layer, self.calls = inner, layer, 0

    def _boom(self, *_):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("failed midway")

    def __enter__(self):
        self.inner.__enter__()
        self.handle = self.layer.register_forward_hook(self._boom)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return self.inner.__exit__(*exc)


class _BoomPlugin:
    from featsurv import hookimpl

    @hookimpl
    def register_compressors(self, register):
        register(_Boom())


def _session(tiny_models, tiny_sae, tiny_corpus, **kw):
    from featsurv.audit import AuditSession, make_options

    model = tiny_models["gpt_neox"]
    opts = make_options(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus), n_tokens=512,
                        context=32, batch_size=8, bootstrap=0, calibration_tokens=256, **kw)
    return AuditSession(opts, get_registry())


def test_weights_and_hooks_restored_after_every_configuration_even_one_that_raises(
        tiny_models, tiny_sae, tiny_corpus, register_plugin):
    register_plugin(_BoomPlugin(), name="act-boom")
    session = _session(tiny_models, tiny_sae, tiny_corpus)
    session.prepare(needs_calibration=True)
    model = session.loaded.model
    ids = session.tokens.contexts[:4]

    def state():
        with torch.no_grad():
            logits = model(ids).logits
        return {k: v.clone() for k, v in model.state_dict().items()}, _hook_count(model), logits

    weights, hooks, logits = state()
    outcomes = [session.run("act", params(**kw)) for kw in (
        dict(bits=8), dict(bits=4, weight_bits=4), dict(bits=6, granularity="tensor"),
        dict(format="e4m3", kv=4, granularity="channel"), dict(bits=0, kv=2))]
    fp = session.baseline["perplexity"]
    assert all(o.target != fp for o in outcomes)  # each configuration changed the compressed pass (perplexity)
    w, h, out = state()
    assert h == hooks and torch.equal(out, logits)
    assert all(torch.equal(w[k], weights[k]) for k in weights)
    with pytest.raises(RuntimeError, match="midway"):
        session.run("act_boom", params(bits=4, weight_bits=4, kv=4))
    w, h, out = state()
    assert h == hooks, "act hooks left on the model after a configuration that raised"
    assert all(torch.equal(w[k], weights[k]) for k in weights)
    assert torch.equal(out, logits)  # the FP forward after the failure is bit-identical


def test_audit_act_sweep_and_recipes_beside_rtn_on_the_embedded_default(tmp_path):
    import json

    from click.testing import CliRunner

    from featsurv.audit import make_options
    from featsurv.cli import cli
    from featsurv.cli.table import print_summary
    from featsurv.runs import run_audit

    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, ["audit", "act", "-p", "bits=8,6,4", "--tokens", "1024", "--bootstrap", "0",
                                      "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    by = {(e["label"], e["hook"]): e for e in summary["results"]}
    hooks = list(summary["baseline"]["saes"])
    for hook in hooks:
        a8, a4 = by[("act A8", hook)], by[("act A4", hook)]
        assert a4["perplexity"] != summary["baseline"]["perplexity"]
        assert a8["survived"] > 0.9 and a4["survived"] < a8["survived"]
    assert "act A6" in result.output

    # the W8A8 and W4A8 recipes beside weight-only RTN with the same weights, in one audit
    from featsurv.data_paths import resolve

    saes = [resolve(f"featsurv:saes/featsurv-tiny/blocks.{i}.hook_resid_post") for i in (1, 2)]
    opts = make_options(model="featsurv:models/featsurv-tiny", saes=saes, context=128, batch_size=16,
                        n_tokens=1024, bootstrap=0)
    configs = [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"}), ("act", params(recipe="w8a8")),
               ("rtn", {"bits": 4, "symmetric": True, "granularity": "group:128"}), ("act", params(recipe="w4a8"))]
    run = run_audit(opts, configs, out_dir=tmp_path / "recipes")
    by = {(e["label"], e["hook"]): e for e in run.summary["results"]}
    for hook in hooks:
        assert by[("act w4a8", hook)]["perplexity"] != by[("rtn int4 granularity=group:128", hook)]["perplexity"]
        assert by[("act w8a8", hook)]["survived"] > 0.9
    print_summary(run.summary, run.path)


def test_compare_bisects_activation_bits_or_a_weight_knob_with_activations_fixed(tiny_models, tiny_sae, tiny_corpus):
    from featsurv.compare import run_compare

    rtn = ("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})
    session = _session(tiny_models, tiny_sae, tiny_corpus)
    result = run_compare(session.options, rtn, ("act", params()), steps=3, session=session)
    (entry, *_) = result.summary["comparisons"]
    assert entry["knob"] == "bits" and 4 <= entry["matched_params"]["bits"] <= 8
    assert [step["params"]["bits"] for step in entry["path"]] and entry["b"].startswith("act A")
    # weight bits searched with A8 fixed
    session = _session(tiny_models, tiny_sae, tiny_corpus)
    result = run_compare(session.options, rtn, ("act", params(bits=8)), knob="weight_bits", steps=3, session=session)
    (entry, *_) = result.summary["comparisons"]
    assert entry["knob"] == "weight_bits" and entry["matched_params"]["bits"] == 8
    assert entry["b"] == f"act W{entry['matched_params']['weight_bits']}A8"
    # a recipe leaves nothing to search: measured as given
    session = _session(tiny_models, tiny_sae, tiny_corpus)
    result = run_compare(session.options, rtn, ("act", params(recipe="w8a8")), steps=3, session=session)
    assert result.summary["comparisons"][0]["knob"] is None


def test_gradients_pass_straight_through():
    x = torch.tensor([[0.3, -1.2, 0.05]], requires_grad=True)
    y = fake_quant(x, INT4, (-1,))
    torch.testing.assert_close(y.detach(), fake_quant(x.detach(), INT4, (-1,)))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    # dims=None: one scale for the whole tensor, 2/7: -0.5 * 3.5 = -1.75 -> -2
    torch.testing.assert_close(fake_quant(torch.tensor([2.0, -0.5]), INT4), torch.tensor([2.0, -4 / 7]))
