"""The built-in `checkpoint` compressor: a model compressed elsewhere, audited against the FP model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from featsurv import FeatsurvError, LoadedModel, WeightTarget
from featsurv.cli import cli
from featsurv.data_paths import resolve
from featsurv.params import expand_grid, parse_assignments
from featsurv_plugins.adapters_gpt_neox import GPTNeoXAdapter
from featsurv_plugins.compress_checkpoint import Checkpoint, check_against, plan
from featsurv_plugins.compress_rtn import quantize_dequantize

COMP = Checkpoint()
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "featsurv" / "data" / "models" / "featsurv-tiny"
FAST = ["--tokens", "2048", "--bootstrap", "0", "-q"]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path))


def write_rtn_checkpoint(out: Path, bits: int, src: Path = TINY) -> Path:
    """The FP model with every attention and MLP matrix replaced by featsurv's own rtn, saved dense."""
    model, tokenizer = _load(src)
    with torch.no_grad():
        for t in GPTNeoXAdapter().compressible_weights(model):
            t.weight.copy_(quantize_dequantize(t.weight, bits, True, "channel", t.head_layout))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_compressed_tensors_checkpoint(out: Path, src: Path = TINY, bits: int = 4, group: int = 32):
    """An int4 group-32 checkpoint in compressed-tensors' pack-quantized format (the format llm-compressor writes for
    GPTQ), with scales from compressed-tensors' own min/max; returns (dir, {module: its fake-quantized weight})."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    model, tokenizer = _load(src)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                                ignore=["embed_out"], format="pack-quantized")
    apply_quantization_config(model, config)
    expected = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                w = module.weight
                grouped = w.reshape(w.shape[0], -1, group)
                scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
                module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
                zp = getattr(module, "weight_zero_point", None)
                if zp is not None:
                    zp.copy_(zero.reshape(zp.shape))
                expected[name] = fake_quantize(w, module.weight_scale, zp, args).clone()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    tokenizer.save_pretrained(out)
    return out, expected


@pytest.fixture(scope="module")
def ct_checkpoint(tmp_path_factory):
    pytest.importorskip("compressed_tensors", reason="pip install 'compressed-tensors~=0.20.1' (make install does it)")
    return write_compressed_tensors_checkpoint(tmp_path_factory.mktemp("ct") / "ct-int4-g32")


def test_compressed_tensors_weights_are_the_librarys_own_dequantization(ct_checkpoint):
    """Read back through transformers + compressed-tensors: equal to compressed-tensors' fake_quantize of the FP weight."""
    path, expected = ct_checkpoint
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["format"] == "pack-quantized"
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert "gpt_neox.layers.0.mlp.dense_h_to_4h.weight_packed" in f.keys()  # really stored packed
        model, _ = _load(TINY)
        targets = _targets(model)
        scales = {t.name: f.get_tensor(f"{t.name}.weight_scale") for t in targets}
    COMP.compress(targets, {"path": str(path)})
    fp, _ = _load(TINY)
    for t in targets:
        assert torch.equal(t.weight, expected[t.name]), t.name
        # by hand from the stored scales: every weight is a whole int4 code (-8..7) times its group's scale
        codes = t.weight.reshape(t.weight.shape[0], -1, 32) / scales[t.name].float().unsqueeze(-1)
        assert torch.allclose(codes, codes.round(), atol=1e-4) and -8 <= codes.round().min() <= codes.round().max() <= 7
        assert not torch.equal(t.weight, dict(fp.named_modules())[t.name].weight)


@pytest.fixture(scope="module")
def rtn_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {bits: write_rtn_checkpoint(root / f"rtn{bits}", bits) for bits in (4, 8)}


def test_a_dense_checkpoint_gives_the_per_feature_r_of_compressing_in_place(rtn_checkpoints, tmp_path):
    """featsurv's rtn int4 written to disk, read back by `checkpoint`: the same r for every feature (1e-6)."""
    from featsurv.audit import make_options
    from featsurv.runs import run_audit

    from featsurv.presets import get_preset

    preset = dict(get_preset(None).options)  # the embedded default, on fewer tokens
    preset.update(model=resolve(preset["model"]), saes=[resolve(s) for s in preset["saes"]], n_tokens=2048, bootstrap=0)
    options = make_options(**preset)
    configs = [("checkpoint", {"path": str(rtn_checkpoints[4])}),
               ("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})]
    result = run_audit(options, configs, out_dir=tmp_path / "run")
    feats = result.features
    assert set(feats["config"]) == {"checkpoint rtn4", "rtn int4"}
    for hook, group in feats.groupby("hook"):
        a = group[group["config"] == "checkpoint rtn4"].sort_values("feature")
        b = group[group["config"] == "rtn int4"].sort_values("feature")
        assert len(a) == len(b) > 0
        ra, rb = a["r"].to_numpy(), b["r"].to_numpy()
        assert np.array_equal(np.isnan(ra), np.isnan(rb))
        assert np.nanmax(np.abs(ra - rb)) <= 1e-6, hook
    summary = result.summary["results"]
    ppl = {e["label"]: e["perplexity"] for e in summary}
    assert ppl["checkpoint rtn4"] == pytest.approx(ppl["rtn int4"], rel=1e-6)
    assert ppl["checkpoint rtn4"] > result.summary["baseline"]["perplexity"]


def test_several_checkpoints_in_one_run_each_labelled_by_its_folder(rtn_checkpoints, ct_checkpoint, tmp_path):
    out = tmp_path / "sweep"
    paths = f"{rtn_checkpoints[8]},{ct_checkpoint[0]},{rtn_checkpoints[4]}"
    res = CliRunner().invoke(cli, ["audit", "checkpoint", "-p", f"path={paths}", *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    labels = [e["label"] for e in summary["results"]]
    assert labels[0] == "checkpoint rtn8" and labels[-1] == "checkpoint rtn4" and "checkpoint ct-int4-g32" in labels
    by = {e["label"]: e for e in summary["results"]}
    assert by["checkpoint rtn8"]["mean_r"] > by["checkpoint rtn4"]["mean_r"]
    gate = CliRunner().invoke(cli, ["gate", str(out), "--min-survival", "0"])
    assert gate.exit_code == 0 and "gate: PASS" in gate.output


def test_compare_checkpoint_rtn(rtn_checkpoints, tmp_path):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "checkpoint", "rtn", "-p", f"path={rtn_checkpoints[4]}", "--steps", "3",
                                   *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    (comparison, *_) = json.loads((out / "summary.json").read_text())["comparisons"]
    assert comparison["a"] == "checkpoint rtn4" and comparison["b"].startswith("rtn int")


# --------------------------------------------------------------------------- validation
def _audit(tmp_path, path):
    return CliRunner().invoke(cli, ["audit", "checkpoint", "-p", f"path={path}", *FAST, "--out", str(tmp_path / "x")])


def test_a_missing_directory_is_refused_before_any_work(tmp_path):
    res = _audit(tmp_path, tmp_path / "nowhere")
    assert res.exit_code == 2 and "is not a directory" in res.output and "parameter 'path' of checkpoint" in res.output
    assert not (tmp_path / "x").exists()


def test_a_directory_without_safetensors_is_refused(tmp_path):
    ckpt = tmp_path / "bin-only"
    ckpt.mkdir()
    shutil.copy(TINY / "config.json", ckpt / "config.json")
    (ckpt / "pytorch_model.bin").write_bytes(b"not read")
    res = _audit(tmp_path, ckpt)
    assert res.exit_code == 2 and "holds no *.safetensors weights" in res.output


def test_a_format_nothing_here_dequantizes_is_refused(tmp_path):
    ckpt = tmp_path / "gptq"
    shutil.copytree(TINY, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(FeatsurvError, match="quantization format 'gptq' is not one featsurv can dequantize"):
        expand_grid(COMP.params, parse_assignments([f"path={ckpt}"]), "checkpoint")


def test_no_path_is_a_clear_error():
    with pytest.raises(FeatsurvError, match="needs a checkpoint directory.*-p path=DIR"):
        COMP.compress([], {"path": None})


def _targets(model):
    return GPTNeoXAdapter().compressible_weights(model)


def test_a_checkpoint_of_another_architecture_names_the_first_missing_tensor(tiny_models):
    model, _ = _load(TINY)
    targets = _targets(model)
    before = [t.weight.detach().clone() for t in targets]
    with pytest.raises(FeatsurvError, match="has no tensor 'gpt_neox.layers.0.attention.query_key_value.weight' "
                                            ".*model_type 'llama'"):
        COMP.compress(targets, {"path": str(tiny_models["llama"])})
    assert all(torch.equal(t.weight, b) for t, b in zip(targets, before))


def test_a_checkpoint_with_other_shapes_names_the_first_mismatch(tiny_models):
    model, _ = _load(TINY)  # hidden size 128; the tiny gpt_neox fixture has 32
    targets = _targets(model)
    before = [t.weight.detach().clone() for t in targets]
    with pytest.raises(FeatsurvError, match=r"gpt_neox.layers.0.attention.query_key_value.weight has shape "
                                            r"\(96, 32\), the FP model's \(384, 128\)"):
        COMP.compress(targets, {"path": str(tiny_models["gpt_neox"])})
    assert all(torch.equal(t.weight, b) for t, b in zip(targets, before))


def test_integer_tensors_are_not_taken_for_weights():
    layer = torch.nn.Linear(4, 3)
    with pytest.raises(FeatsurvError, match="holds torch.int8 values"):
        plan([WeightTarget("l", layer, "mlp_in")], {"l.weight": torch.zeros(3, 4, dtype=torch.int8)}, "ck")


def test_a_view_target_is_written_through_its_storage():
    """An adapter that hands out a transposed view (GPT-2's Conv1D): the checkpoint's layout is the module's."""
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(4, 3))  # stored [in, out]
    target = WeightTarget("c", module, "mlp_in", tensor=module.weight.T)
    new = torch.arange(12.0).reshape(4, 3)
    ((dest, src),) = plan([target], {"c.weight": new}, "ck")
    with torch.no_grad():
        dest.copy_(src)
    assert torch.equal(target.weight, new.T)


def test_check_against_names_an_architecture_difference(tiny_models):
    model, tokenizer = _load(tiny_models["gpt_neox"])
    loaded = LoadedModel(model, tokenizer, GPTNeoXAdapter(), str(tiny_models["gpt_neox"]), "float32", "cpu")
    check_against(loaded, tiny_models["gpt_neox"])  # itself: fine
    with pytest.raises(FeatsurvError, match="another architecture.*model_type is 'llama' there, 'gpt_neox'"):
        check_against(loaded, tiny_models["llama"])


def test_check_against_names_the_first_tokenizer_difference(tiny_models, tmp_path):
    model, tokenizer = _load(TINY)
    loaded = LoadedModel(model, tokenizer, GPTNeoXAdapter(), str(TINY), "float32", "cpu")
    other = tmp_path / "other-tokenizer"
    shutil.copytree(TINY, other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).unlink()
    shutil.copy(Path(tiny_models["gpt_neox"]) / "tokenizer.json", other / "tokenizer.json")
    shutil.copy(Path(tiny_models["gpt_neox"]) / "tokenizer_config.json", other / "tokenizer_config.json")
    with pytest.raises(FeatsurvError, match="another tokenizer than the FP model: token .* (is missing|has id)"):
        check_against(loaded, other)
    with pytest.raises(FeatsurvError, match="another tokenizer"):
        COMP.transform(loaded, [], {"path": str(other)})
    assert COMP.transform(loaded, [], {"path": str(TINY)}) is None


def test_listed_with_its_parameter():
    text = CliRunner().invoke(cli, ["plugins"]).output
    assert "compressor checkpoint" in text and "-p path=" in text
