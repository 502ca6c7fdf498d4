"""The hqq compressor on single weight matrices, checked against hqq itself and a hand computation."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import featsurv_hqq
from featsurv import FeatsurvError, WeightTarget
from featsurv.params import expand_grid, parse_assignments
from featsurv.plugins import Registry
from featsurv_hqq import HQQ, quant_config, quantize_weight

COMP = HQQ()
DEFAULTS = {p.name: p.default for p in COMP.params}


def _linear(out_features: int = 48, in_features: int = 64, seed: int = 0, dtype=torch.float32, bias=False):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        layer.weight[0, 0] = 0.4  # an outlier, as real weights have
    return layer.to(dtype)


def _compress(layer, **params):
    COMP.compress([WeightTarget("layer", layer, "mlp_in", 0)], {**DEFAULTS, **params})
    return layer.weight.detach()


def _codes(qlayer) -> torch.Tensor:
    """hqq's integer codes, unpacked, as the ``[groups, group_size]`` (axis 1) or ``[group_size, groups]`` (axis 0)
    matrix its zero points and scales apply to (3-bit packing pads rows; drop them as hqq does)."""
    meta = qlayer.meta
    codes = qlayer.unpack(dtype=torch.float64)
    rows = meta["group_size"] if meta["axis"] == 0 else meta["shape"][0] * meta["shape"][1] // meta["group_size"]
    return codes[:rows]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("group_size", [16, 0])
def test_written_weights_are_hqqs_codes_times_its_scales(bits, axis, group_size):
    """By hand from hqq's own integer codes: W = (code - zero) * scale, codes in [0, 2^b - 1]."""
    layer = _linear()
    fp = layer.weight.detach().clone()
    config = quant_config(bits, group_size, axis)
    q = quantize_weight(layer.weight, config)
    assert torch.equal(layer.weight.detach(), fp)  # quantize_weight works on a copy
    codes = _codes(q)
    assert codes.min() >= 0 and codes.max() <= 2 ** bits - 1
    assert torch.equal(codes, codes.round())
    by_hand = ((codes - q.meta["zero"].double()) * q.meta["scale"].double()).reshape(fp.shape)
    w = _compress(layer, bits=bits, group_size=group_size, axis=axis)
    assert torch.allclose(w.double(), by_hand, atol=1e-6)
    assert torch.equal(w, q.dequantize())


@pytest.mark.parametrize("quant_zero,quant_scale", [(False, False), (True, False), (True, True)])
def test_matches_the_output_of_hqqs_own_layer(quant_zero, quant_scale):
    """HQQLinear (the deployed layer) on random input equals x @ W_dequant.T + b with the audited weights."""
    layer = _linear(64, 256, bias=True)
    config = quant_config(4, 64, 1, quant_zero=quant_zero, quant_scale=quant_scale)
    deployed = quantize_weight(layer.weight, config)
    deployed.bias = layer.bias.detach().clone()
    w = _compress(layer, bits=4, group_size=64, quant_zero=quant_zero, quant_scale=quant_scale)
    x = torch.randn(7, 256)
    with torch.no_grad():
        assert torch.allclose(deployed(x), x @ w.T + layer.bias, atol=1e-5)
        assert torch.allclose(deployed(x), layer(x), atol=1e-5)


def test_without_optimisation_it_is_hqqs_min_max_rounding():
    """optimize=false: per group, scale = (max - min) / (2^b - 1), zero = -min / scale, as hqq writes it."""
    layer = _linear()
    fp = layer.weight.detach().double().reshape(-1, 16)  # axis 1, groups of 16 consecutive input weights
    lo, hi = fp.min(1, keepdim=True).values, fp.max(1, keepdim=True).values
    inv = 15 / (hi - lo)
    zero = -lo * inv
    expected = (((fp * inv + zero).round().clamp(0, 15) - zero) / inv).reshape(layer.weight.shape)
    w = _compress(layer, bits=4, group_size=16, optimize=False, round_zero="false")
    assert torch.allclose(w.double(), expected, atol=1e-5)


def test_hqq_optimisation_changes_the_weights():
    plain = _compress(_linear(), bits=3, group_size=16, optimize=False)
    hqq = _compress(_linear(), bits=3, group_size=16)
    assert not torch.equal(plain, hqq)
    assert (hqq - _linear().weight.detach()).abs().max() < 0.2


def test_more_bits_is_closer_to_fp():
    fp = _linear().weight.detach().clone()
    errors = {b: (_compress(_linear(), bits=b) - fp).pow(2).mean().item() for b in (1, 2, 3, 4, 5, 6, 8)}
    ordered = [errors[b] for b in (1, 2, 3, 4, 5, 6, 8)]
    assert all(a > b for a, b in zip(ordered, ordered[1:])), errors
    assert errors[8] < 1e-4 * fp.pow(2).mean().item()


def test_weight_parameter_is_changed_in_place_in_its_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        layer = _linear(dtype=dtype)
        param = layer.weight
        fp = param.detach().clone()
        _compress(layer, bits=4)
        assert layer.weight is param and type(layer.weight) is torch.nn.Parameter
        assert layer.weight.dtype == dtype and not torch.equal(layer.weight.detach(), fp)


def test_parameters_are_validated():
    grid = expand_grid(COMP.params, parse_assignments(["bits=8,4", "group_size=32", "axis=0"]), "hqq")
    assert [c["bits"] for c in grid] == [8, 4] and grid[0]["group_size"] == 32 and grid[0]["axis"] == 0
    for bad in (["bits=7"], ["bits=0"], ["bits=9"], ["group_size=12"], ["group_size=-8"], ["axis=2"],
                ["round_zero=maybe"], ["optimize=perhaps"]):
        with pytest.raises(FeatsurvError, match="Bad value"):
            expand_grid(COMP.params, parse_assignments(bad), "hqq")
    with pytest.raises(FeatsurvError, match="no 7-bit format"):
        expand_grid(COMP.params, parse_assignments(["bits=7"]), "hqq")


def test_a_group_that_does_not_divide_changes_nothing():
    good, bad = _linear(48, 64), _linear(40, 20, seed=1)  # 40 * 20 = 800 weights: 64 does not divide
    before = good.weight.detach().clone()
    targets = [WeightTarget("good", good, "mlp_in", 0), WeightTarget("bad", bad, "mlp_out", 0)]
    with pytest.raises(FeatsurvError, match="group_size 64 does not divide the 40x20 weights of bad"):
        COMP.compress(targets, dict(DEFAULTS))
    assert torch.equal(good.weight.detach(), before)


def test_quant_scale_needs_whole_scale_groups():
    with pytest.raises(FeatsurvError, match="multiple of 128"):
        _compress(_linear(48, 64), bits=4, group_size=64, quant_scale=True)


def test_labels():
    assert COMP.label(dict(DEFAULTS)) == "hqq int4"
    assert COMP.label({**DEFAULTS, "bits": 3, "group_size": 32, "optimize": False}) == \
        "hqq int3 group_size=32 optimize=False"


def test_hook_registers_the_compressor():
    registry = Registry()
    registry.add_plugin(featsurv_hqq, "hqq", "featsurv-hqq", featsurv_hqq.__version__)
    comp = registry.get("compressors", "hqq")
    assert isinstance(comp, HQQ)
    assert comp.knob == "bits" and comp.knob_increases_compression is False
    lo, hi = comp.knob_range
    assert all(b in featsurv_hqq.BITS for b in range(lo, hi + 1))  # bisection never asks for 7 bits
    assert registry.plugins["hqq"].provides == {"compressors": ["hqq"]}


def test_import_is_cheap():
    code = "import sys, featsurv_hqq; print('hqq' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
