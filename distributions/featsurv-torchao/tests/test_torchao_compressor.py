"""The torchao compressor on single weight matrices: grid, accuracy, parameters, registration."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import featsurv_torchao
from featsurv import FeatsurvError, WeightTarget
from featsurv.params import expand_grid, parse_assignments
from featsurv.plugins import Registry
from featsurv_torchao import TorchAOIntx, quantize_weight, torchao_config

COMP = TorchAOIntx()
DEFAULTS = {p.name: p.default for p in COMP.params}


def _linear(out_features: int = 24, in_features: int = 64, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
        layer.weight[0, 0] = 0.4  # an outlier, as real weights have
    return layer.to(dtype)


def _compress(layer, **params):
    COMP.compress([WeightTarget("layer", layer, "mlp_in", 0)], {**DEFAULTS, **params})
    return layer.weight.detach()


def _groups(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """Rows of scale groups: ``[n_groups, group_size]``."""
    if granularity == "axis":
        return w.reshape(w.shape[0], -1)
    g = int(granularity.split(":")[1])
    return w.reshape(-1, g)


def test_hook_registers_the_compressor():
    registry = Registry()
    registry.add_plugin(featsurv_torchao, "torchao", "featsurv-torchao", featsurv_torchao.__version__)
    comp = registry.get("compressors", "torchao")
    assert isinstance(comp, TorchAOIntx)
    assert [p.name for p in comp.params] == ["bits", "granularity", "mapping", "algorithm"]
    assert comp.knob == "bits" and comp.knob_range == (2, 8) and comp.knob_increases_compression is False
    assert comp.compare_default == {"bits": 4}
    assert registry.plugins["torchao"].provides == {"compressors": ["torchao"]}


@pytest.mark.slow
def test_import_is_cheap():
    """Registering must not import torchao (featsurv --help stays fast)."""
    code = "import sys, featsurv_torchao; print('torchao' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("granularity", ["axis", "group:16"])
@pytest.mark.parametrize("mapping", ["symmetric", "asymmetric"])
def test_dequantized_weights_lie_on_an_int_grid_per_scale_group(bits, granularity, mapping):
    w = _compress(_linear(), bits=bits, granularity=granularity, mapping=mapping)
    for row in _groups(w, granularity):
        levels = torch.unique(row.double())
        assert len(levels) <= 2 ** bits
        if len(levels) < 2:
            continue
        step = _grid_step(levels, 2 ** bits - 1)
        assert step is not None, f"values of a scale group are not on a {bits}-bit grid: {levels.tolist()}"
        if mapping == "symmetric":
            # no zero point: the grid holds 0, so every value is a whole multiple of the step
            assert torch.allclose(levels / step, (levels / step).round(), atol=1e-3)


def _grid_step(levels: torch.Tensor, max_steps: int) -> torch.Tensor | None:
    """The step of the coarsest evenly spaced grid holding every level within ``max_steps`` steps, else None.

    Not every level of a grid need be used, so the smallest gap between levels may be k steps:
    try k = 1, 2, ... until every level sits a whole number of steps from the lowest.
    """
    gaps = levels - levels[0]
    smallest = torch.diff(levels).min()
    for k in range(1, max_steps + 1):
        n = (gaps / (smallest / k)).round()
        if n.max() > max_steps:
            return None
        step = (gaps * n).sum() / (n * n).sum()  # least-squares step for these whole numbers
        if torch.allclose(gaps / step, n, atol=1e-2):
            return step
    return None


@pytest.mark.parametrize("granularity", ["axis", "group:32"])
def test_written_weights_are_torchaos_own_dequantization(granularity):
    layer = _linear()
    fp = layer.weight.detach().clone()
    q = quantize_weight(layer.weight, torchao_config(4, granularity))
    assert torch.equal(layer.weight.detach(), fp)  # quantize_weight works on a copy
    qmin, qmax = -8, 7
    assert q.qdata.min() >= qmin and q.qdata.max() <= qmax
    n_groups = fp.numel() // q.block_size[1] // q.block_size[0]
    assert q.scale.numel() == n_groups
    expected = _groups(q.qdata.float(), granularity) - q.zero_point.float().reshape(-1, 1)
    expected = (expected * q.scale.float().reshape(-1, 1)).reshape(fp.shape)
    w = _compress(layer, bits=4, granularity=granularity)
    assert torch.equal(w, q.dequantize())
    assert torch.allclose(w, expected, atol=1e-7)


def test_matches_a_linear_quantized_by_torchao():
    """What the audit measures is what `quantize_` deploys: the same outputs on the same inputs."""
    import copy

    from torchao.quantization import quantize_

    layer = _linear()
    deployed = copy.deepcopy(layer)
    config = torchao_config(4, "group:32")
    quantize_(deployed, config)
    _compress(layer, bits=4, granularity="group:32")
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.allclose(layer(x), deployed(x), atol=1e-6)


def test_more_bits_is_closer_to_fp():
    fp = _linear().weight.detach().clone()
    errors = {b: (_compress(_linear(), bits=b) - fp).pow(2).mean().item() for b in range(2, 9)}
    assert errors[8] < errors[4]
    assert all(errors[b + 1] < errors[b] for b in range(2, 8)), errors
    assert errors[8] < 1e-5 * fp.pow(2).mean().item() * 10


def test_groups_are_finer_than_axis():
    fp = _linear().weight.detach().clone()
    axis = (_compress(_linear(), bits=4, granularity="axis") - fp).pow(2).mean()
    group = (_compress(_linear(), bits=4, granularity="group:16") - fp).pow(2).mean()
    assert group < axis


def test_hqq_scale_only_runs_and_differs_from_affine():
    fp = _linear().weight.detach().clone()
    affine = _compress(_linear(), bits=3)
    hqq = _compress(_linear(), bits=3, algorithm="hqq_scale_only")
    assert not torch.equal(affine, hqq)
    assert (hqq - fp).abs().max() < 0.2


def test_weight_parameter_is_changed_in_place():
    """The host snapshots and restores `target.weight`: it must stay the same Parameter and dtype."""
    for dtype in (torch.float32, torch.bfloat16):
        layer = _linear(dtype=dtype)
        param = layer.weight
        fp = param.detach().clone()
        _compress(layer, bits=4)
        assert layer.weight is param and type(layer.weight) is torch.nn.Parameter
        assert layer.weight.dtype == dtype and not torch.equal(layer.weight.detach(), fp)


def test_embedding_rows_quantize_like_linear_rows():
    torch.manual_seed(1)
    emb = torch.nn.Embedding(50, 32)
    fp = emb.weight.detach().clone()
    COMP.compress([WeightTarget("embed", emb, "embed")], {**DEFAULTS, "bits": 8})
    assert emb.weight.shape == fp.shape
    assert (emb.weight - fp).abs().max() < fp.abs().max() / 100


def test_parameters_are_validated():
    grid = expand_grid(COMP.params, parse_assignments(["bits=8,4", "granularity=group:32"]), "torchao")
    assert [c["bits"] for c in grid] == [8, 4] and grid[0]["granularity"] == "group:32"
    for bad in (["bits=1"], ["bits=9"], ["granularity=channel"], ["granularity=group:0"], ["mapping=nf4"],
                ["algorithm=gptq"]):
        with pytest.raises(FeatsurvError, match="Bad value"):
            expand_grid(COMP.params, parse_assignments(bad), "torchao")


def test_group_that_does_not_divide_is_a_clear_error():
    with pytest.raises(FeatsurvError, match="does not divide the input size 64"):
        _compress(_linear(), bits=4, granularity="group:48")


def test_hqq_needs_symmetric_mapping():
    with pytest.raises(FeatsurvError, match="hqq_scale_only"):
        _compress(_linear(), bits=4, algorithm="hqq_scale_only", mapping="asymmetric")


def test_labels():
    assert COMP.label({**DEFAULTS, "bits": 4}) == "torchao int4"
    assert COMP.label({**DEFAULTS, "bits": 6, "granularity": "group:32"}) == "torchao int6 granularity=group:32"


@pytest.mark.slow
def test_torchao_import_noise_is_filtered():
    """On a CPU-only torch, importing torchao logs CUDA-kernel load failures; the plugin drops exactly those."""
    code = ("import featsurv_torchao, logging, torchao\n"
            "logging.getLogger('torchao').warning('other torchao warnings still show')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Failed to load" not in out.stderr
    assert "is an Enum subclass and is now natively supported" not in out.stderr
    assert "other torchao warnings still show" in out.stderr
