"""The bnb compressor on single weight matrices, checked against bitsandbytes' own layers and by hand."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import featsurv_bnb
from featsurv import FeatsurvError, WeightTarget
from featsurv.params import expand_grid, parse_assignments
from featsurv.plugins import Registry
from featsurv_bnb import BitsAndBytes, int8_linear, quantize_4bit
from featsurv_bnb import compressor as bnb_compressor

COMP = BitsAndBytes()
DEFAULTS = {p.name: p.default for p in COMP.params}
# The NF4 code of the QLoRA paper (Dettmers et al. 2023, appendix E), and bitsandbytes' FP4 code (x/12).
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0], dtype=torch.float64)
FP4 = torch.tensor([s * v / 12 for s in (1, -1) for v in (0, 0.0625, 2, 3, 4, 6, 8, 12)], dtype=torch.float64)


def _linear(out_features: int = 48, in_features: int = 64, seed: int = 0, dtype=torch.float32, bias=True):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        layer.weight[0, 0] = 0.4  # an outlier, as real weights have
    return layer.to(dtype)


def _target(layer):
    return WeightTarget("layer", layer, "mlp_in", 0)


def _compress(layer, **params):
    COMP.compress([_target(layer)], {**DEFAULTS, **params})
    return layer.weight.detach()


@pytest.mark.parametrize("mode,code", [("nf4", NF4), ("fp4", FP4)])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("blocksize", [64, 256])
def test_4bit_weights_are_block_absmax_times_the_code(mode, code, double_quant, blocksize):
    w = _compress(_linear(), mode=mode, double_quant=double_quant, blocksize=blocksize).double()
    blocks = w.reshape(-1, blocksize)  # bitsandbytes blocks the flattened (row-major) matrix
    ratio = blocks / blocks.abs().amax(1, keepdim=True)
    nearest = code[(ratio.unsqueeze(-1) - code).abs().argmin(-1)]
    assert torch.allclose(ratio, nearest, atol=1e-6), "a value is off the 4-bit code times its block's absmax"


@pytest.mark.parametrize("mode", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_matches_the_output_of_bitsandbytes_linear4bit(mode, double_quant):
    """bitsandbytes' deployed Linear4bit on random input equals x @ W_dequant.T + b with the audited weights."""
    import bitsandbytes as bnb

    layer = _linear(64, 64)  # bitsandbytes' packed CPU format needs out_features % 32 == 0
    deployed = bnb.nn.Linear4bit(64, 64, bias=True, compute_dtype=torch.float32, compress_statistics=double_quant,
                                 quant_type=mode, device="meta")
    deployed.weight = quantize_4bit(layer.weight, mode, double_quant, 64)
    deployed.bias = torch.nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    w = _compress(layer, mode=mode, double_quant=double_quant)
    x = torch.randn(9, 64)
    with torch.no_grad():
        expected = x @ w.T + layer.bias
        assert torch.allclose(deployed(x), expected, atol=1e-5)  # dequantize_4bit, then a float32 matmul
        # in eval mode on a CPU with AVX512-BF16, bitsandbytes repacks the weight for its own kernel
        # (gemv_4bit), which computes in bfloat16: the same weights up to bfloat16 rounding of the
        # arithmetic; without that instruction set it keeps the float32 path checked above
        deployed.eval()
        assert torch.allclose(deployed(x), expected, atol=2e-2 * expected.abs().max().item())
        packed = getattr(deployed.weight.quant_state, "packing_format_for_cpu", False)
        assert packed == bool(getattr(deployed, "support_avx512bf16_for_cpu", False))


def test_double_quantization_changes_the_absmax_only_slightly():
    fp = _linear().weight.detach()
    plain = _compress(_linear(), mode="nf4")
    dq = _compress(_linear(), mode="nf4", double_quant=True)
    assert not torch.equal(plain, dq)
    assert (plain - dq).abs().max() < 0.01 * fp.abs().max()


def test_larger_blocks_are_coarser():
    fp = _linear().weight.detach().clone()
    small = (_compress(_linear(), mode="nf4", blocksize=32) - fp).pow(2).mean()
    large = (_compress(_linear(), mode="nf4", blocksize=1024) - fp).pow(2).mean()
    assert small < large


def test_int8_weights_by_hand():
    """LLM.int8 weights: per row, round(w * 127 / absmax) * absmax / 127, computed in float16 as bitsandbytes does."""
    layer = _linear()
    w16 = layer.weight.detach().half().double()
    absmax = w16.abs().amax(1, keepdim=True)
    expected = (w16 * 127 / absmax).round() * absmax / 127
    w = _compress(layer, mode="int8")
    assert torch.allclose(w.double(), expected, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_transform_is_bitsandbytes_linear8bitlt(threshold):
    """In the context the host enters, a target Linear computes what bitsandbytes' Linear8bitLt computes."""
    layer = _linear()
    fp_weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    params = {**DEFAULTS, "mode": "int8", "threshold": threshold}
    x = torch.randn(6, 64)
    x[:, 3] *= 20  # an outlier column, as LLM.int8's activations have
    COMP.compress([_target(layer)], params)
    with torch.no_grad():
        weight_only = layer(x)
        with COMP.transform(None, [_target(layer)], params):
            inside = layer(x)
        expected = int8_linear(fp_weight, bias, threshold)(x)
        assert torch.allclose(inside, expected, atol=1e-6)
        assert torch.equal(layer(x), weight_only)  # left again: a plain Linear
    assert "forward" not in vars(layer)


def test_int8_activations_by_hand_without_outliers():
    """threshold 0: y = (round(127 x / absmax_x) @ codes_W.T) * absmax_x * absmax_W / 127^2 + b."""
    layer = _linear()
    x = torch.randn(5, 64)
    w16 = layer.weight.detach().half().double()
    absmax_w = w16.abs().amax(1)
    codes_w = (w16 * 127 / absmax_w[:, None]).round()
    x16 = x.half().double()
    absmax_x = x16.abs().amax(1, keepdim=True)
    codes_x = (x16 * 127 / absmax_x).round()
    expected = (codes_x @ codes_w.T) * absmax_x * absmax_w / 127 ** 2 + layer.bias.detach().double()
    params = {**DEFAULTS, "mode": "int8", "threshold": 0.0}
    COMP.compress([_target(layer)], params)
    with torch.no_grad(), COMP.transform(None, [_target(layer)], params):
        y = layer(x).double()
    assert torch.allclose(y, expected, atol=2e-3 * expected.abs().max().item())


def test_4bit_modes_need_no_transform():
    assert COMP.transform(None, [], {**DEFAULTS, "mode": "nf4"}) is None


def test_weight_parameter_is_changed_in_place_in_its_dtype():
    for mode in ("int8", "nf4"):
        for dtype in (torch.float32, torch.bfloat16):
            layer = _linear(dtype=dtype)
            param = layer.weight
            fp = param.detach().clone()
            _compress(layer, mode=mode)
            assert layer.weight is param and type(layer.weight) is torch.nn.Parameter
            assert layer.weight.dtype == dtype and not torch.equal(layer.weight.detach(), fp)


def test_parameters_are_validated():
    grid = expand_grid(COMP.params, parse_assignments(["mode=int8,nf4,fp4", "double_quant=true,false"]), "bnb")
    assert len(grid) == 6
    for bad in (["mode=int4"], ["blocksize=48"], ["blocksize=8192"], ["threshold=-1"], ["double_quant=maybe"]):
        with pytest.raises(FeatsurvError, match="Bad value"):
            expand_grid(COMP.params, parse_assignments(bad), "bnb")


def test_a_mode_this_bitsandbytes_cannot_run_on_cpu_is_refused_at_validation(monkeypatch):
    """As with a bitsandbytes build without a CPU backend: the -p value is refused, naming mode and device."""
    monkeypatch.setitem(bnb_compressor._PROBED, ("int8", "cpu"), "NotImplementedError: no CPU kernel")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FeatsurvError, match="cannot run mode int8 on the CPU.*needs a CUDA GPU"):
        expand_grid(COMP.params, parse_assignments(["mode=int8"]), "bnb")
    with pytest.raises(FeatsurvError, match="cannot run mode int8 on the CPU"):
        _compress(_linear(), mode="int8")  # compress checks its parameters again (defaults are never parsed)
    expand_grid(COMP.params, parse_assignments(["mode=nf4"]), "bnb")  # the others still run


def test_every_mode_runs_on_this_cpu():
    assert {mode: featsurv_bnb.probe(mode, "cpu") for mode in featsurv_bnb.MODES} == dict.fromkeys(featsurv_bnb.MODES)


def test_labels():
    assert COMP.label(dict(DEFAULTS)) == "bnb nf4"
    assert COMP.label({**DEFAULTS, "mode": "nf4", "double_quant": True}) == "bnb nf4 dq"
    assert COMP.label({**DEFAULTS, "mode": "int8"}) == "bnb int8"
    assert COMP.label({**DEFAULTS, "mode": "int8", "threshold": 0.0}) == "bnb int8 threshold=0"


def test_hook_registers_the_compressor():
    registry = Registry()
    registry.add_plugin(featsurv_bnb, "bnb", "featsurv-bnb", featsurv_bnb.__version__)
    assert isinstance(registry.get("compressors", "bnb"), BitsAndBytes)
    assert registry.plugins["bnb"].provides == {"compressors": ["bnb"]}


def test_import_is_cheap():
    code = "import sys, featsurv_bnb; print('bitsandbytes' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
