"""The gptq compressor: calibrate() directly, weights on gptqmodel's grid, better than rounding, through the host."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import featsurv_gptq
from featsurv import FeatsurvError, LoadedModel, WeightTarget
from featsurv.params import expand_grid, parse_assignments
from featsurv.tokens import build_tokens
from featsurv_gptq import GPTQ, collect_inputs, gptq_quantize
from featsurv_plugins.compress_rtn import quantize_dequantize

DEFAULTS = {p.name: p.default for p in GPTQ.params}


def _linear(out_features=48, in_features=64, seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.05)
    return layer


def _inputs(n=256, d=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x * torch.linspace(0.2, 3.0, d)  # uneven input scales, as real activations have


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size,act_order,sym", [(16, False, True), (0, False, True), (16, True, True),
                                                      (32, False, False)])
def test_weights_are_gptqmodels_codes_times_its_scales(bits, group_size, act_order, sym):
    """By hand from gptqmodel's returned scale, zero and g_idx: every weight is (q - zero) * scale, q in [0, 2^b-1]."""
    layer = _linear()
    fp = layer.weight.detach().clone()
    q, scale, zero, g_idx = gptq_quantize(layer, _inputs(), bits, group_size, act_order, sym)
    assert torch.equal(layer.weight.detach(), fp)  # the module is left as it was
    s, z = scale[:, g_idx.long()], zero[:, g_idx.long()]
    codes = q / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().min() >= 0 and codes.round().max() <= 2 ** bits - 1
    if group_size and not act_order:
        assert torch.equal(g_idx.long(), torch.arange(64) // group_size)


def test_gptq_beats_round_to_nearest_on_its_calibration_inputs():
    layer, x = _linear(), _inputs()
    fp_out = x @ layer.weight.detach().T
    q, *_ = gptq_quantize(layer, x, 3, 16)
    rtn = quantize_dequantize(layer.weight, 3, True, "group:16")
    err_gptq = (x @ q.T - fp_out).pow(2).mean()
    err_rtn = (x @ rtn.T - fp_out).pow(2).mean()
    assert err_gptq < 0.9 * err_rtn


def test_act_order_changes_the_result():
    layer, x = _linear(), _inputs()
    plain, *_ = gptq_quantize(layer, x, 3, 16, act_order=False)
    ordered, *_ = gptq_quantize(layer, x, 3, 16, act_order=True)
    assert not torch.equal(plain, ordered)


@pytest.fixture(scope="module")
def calibrated(tiny_models, tiny_corpus):
    """The tiny gpt_neox model, and gptq calibrated on 512 tokens of the synthetic corpus (calibrate called directly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from featsurv_plugins.adapters_gpt_neox import GPTNeoXAdapter

    path = tiny_models["gpt_neox"]
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    loaded = LoadedModel(model, tokenizer, GPTNeoXAdapter(), str(path), "float32", "cpu")
    docs = tiny_corpus.read_text().split("\n\n")
    calibration = build_tokens(tokenizer, docs, dataset="calibration", n_tokens=512, context=32, prepend_bos=True)
    comp = GPTQ()
    targets = loaded.adapter.compressible_weights(model)
    comp.calibrate(loaded, targets, calibration)
    return comp, loaded, targets, calibration


def test_calibrate_keeps_each_targets_inputs_at_the_kept_positions(calibrated):
    comp, loaded, targets, calibration = calibrated
    n_kept = sum(int(keep.sum()) for _, keep in calibration.batches(8))
    assert set(comp.inputs) == {t.name for t in targets}
    for t in targets:
        assert comp.inputs[t.name].shape == (n_kept, t.weight.shape[1])
    # the inputs are what the FP model feeds that layer (recomputed with a hook of our own)
    first = targets[0]
    seen = []
    handle = first.module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    ids, keep = next(iter(calibration.batches(8)))
    with torch.no_grad():
        loaded.model(ids, use_cache=False)
    handle.remove()
    assert torch.allclose(comp.inputs[first.name][: int(keep.sum())], seen[0][keep], atol=1e-6)


def test_compress_writes_gptqmodels_weights_in_place(calibrated):
    comp, loaded, targets, _ = calibrated
    params = {**DEFAULTS, "bits": 4, "group_size": 16}
    fp = [t.weight.detach().clone() for t in targets]
    expected = [gptq_quantize(t.module, comp.inputs[t.name], 4, 16)[0] for t in targets]
    weights = [t.weight for t in targets]
    try:
        comp.compress(targets, params)
        for t, w, e, f in zip(targets, weights, expected, fp):
            assert t.weight is w and torch.equal(t.weight, e) and not torch.equal(t.weight, f)
    finally:
        with torch.no_grad():
            for t, f in zip(targets, fp):
                t.weight.copy_(f)


def test_compress_without_calibration_is_a_clear_error():
    with pytest.raises(FeatsurvError, match="no calibration inputs.*calibrate\\(\\) did not run"):
        GPTQ().compress([WeightTarget("l", _linear(), "mlp_in")], dict(DEFAULTS))


def test_a_group_that_does_not_divide_is_refused_before_any_change(calibrated):
    comp, _, targets, _ = calibrated
    before = [t.weight.detach().clone() for t in targets]
    with pytest.raises(FeatsurvError, match="group_size 48 does not divide the input size 32"):
        comp.compress(targets, {**DEFAULTS, "group_size": 48})
    assert all(torch.equal(t.weight, b) for t, b in zip(targets, before))


def test_only_linear_targets():
    emb = torch.nn.Embedding(10, 4)
    with pytest.raises(FeatsurvError, match="quantizes torch.nn.Linear weights"):
        collect_inputs(None, [WeightTarget("embed", emb, "embed")], None)


def test_audit_and_gate_with_calibration_on_disjoint_tokens(register_plugin, tiny_corpus, tmp_path):
    """Through the host on the embedded default: the host sets calibration tokens aside after the
    audit tokens (disjoint by construction) and calibrates gptq once, before its first configuration."""
    from click.testing import CliRunner

    from featsurv.audit import AuditSession, make_options
    from featsurv.cli import cli
    from featsurv.data_paths import resolve
    from featsurv.plugins import get_registry
    from featsurv.presets import get_preset
    from featsurv.progress import Progress
    from featsurv.runs import assemble, finish

    registry = get_registry()
    if "gptq" not in registry.names("compressors"):
        register_plugin(featsurv_gptq, name="gptq", distribution="featsurv-gptq", version=featsurv_gptq.__version__)
    preset = dict(get_preset(None).options)
    preset.update(model=resolve(preset["model"]), saes=[resolve(s) for s in preset["saes"]], n_tokens=2048,
                  bootstrap=0)
    options = make_options(**preset)
    session = AuditSession(options, registry, Progress(quiet=True))
    session.prepare(needs_calibration=True)
    calib = session.bench.calibration
    assert calib is not None and not set(map(tuple, calib.contexts.tolist())) & set(map(tuple, session.tokens.contexts.tolist()))
    configs = [("gptq", {**DEFAULTS, "bits": 4}), ("rtn", {"bits": 4, "symmetric": True, "granularity": "group:128"})]
    out = tmp_path / "run"
    outcomes = [session.run(name, params) for name, params in configs]  # what run_audit does after prepare()
    result = finish(session, assemble(session, outcomes, "audit"), out, "audit")
    assert list(result.run["calibration"]) == ["gptq"]  # calibrated once, before its configuration
    by = {e["label"]: e for e in result.summary["results"] if e["hook"] == "blocks.1.hook_resid_post"}
    assert by["gptq int4"]["perplexity"] < by["rtn int4 granularity=group:128"]["perplexity"]
    floor = min(e["survived"] for e in result.summary["results"])
    gate = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", f"{max(floor - 1e-3, 0):.4f}"])
    assert gate.exit_code == 0 and "gate: PASS" in gate.output, gate.output
    assert any(p["name"] == "gptq" for p in json.loads((out / "run.json").read_text())["plugins"])


def test_parameters_and_labels():
    comp = GPTQ()
    assert comp.needs_calibration and comp.knob == "bits" and comp.knob_increases_compression is False
    grid = expand_grid(comp.params, parse_assignments(["bits=8,3", "act_order=true"]), "gptq")
    assert [c["bits"] for c in grid] == [8, 3] and grid[0]["act_order"] is True
    for bad in (["bits=1"], ["bits=9"], ["group_size=4"], ["damp_percent=1"]):
        with pytest.raises(FeatsurvError, match="Bad value"):
            expand_grid(comp.params, parse_assignments(bad), "gptq")
    assert comp.label(dict(DEFAULTS)) == "gptq int4"
    assert comp.label({**DEFAULTS, "bits": 3, "act_order": True}) == "gptq int3 act_order=True"


def test_import_is_cheap():
    code = "import sys, featsurv_gptq; print('gptqmodel' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
