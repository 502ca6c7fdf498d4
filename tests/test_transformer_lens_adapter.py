"""The built-in ``transformer_lens`` adapter on tiny random GPT-NeoX and Gemma-2 directories.

Oracles: Hugging Face's own forward pass (logits and ``output_hidden_states``), TransformerLens's
own Gemma-2 config table, the reference study's TL-layout RTN and per-tensor pruning written out
here on the TransformerLens tensors, and torchao's dequantized weights.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from featsurv import FeatsurvError
from featsurv.cli import cli
from featsurv.loading import load_model, pick_adapter
from featsurv.plugins import build_registry

NO_PROCESSING = {"fold_ln": "false", "center_writing_weights": "false", "center_unembed": "false",
                 "fold_value_biases": "false"}
# google/gemma-2-2b's config.json on the hub
GEMMA_2_2B = dict(attention_bias=False, attention_dropout=0.0, attn_logit_softcapping=50.0, bos_token_id=2,
                  eos_token_id=1, final_logit_softcapping=30.0, head_dim=256, hidden_act="gelu_pytorch_tanh",
                  hidden_activation="gelu_pytorch_tanh", hidden_size=2304, initializer_range=0.02,
                  intermediate_size=9216, max_position_embeddings=8192, num_attention_heads=8, num_hidden_layers=26,
                  num_key_value_heads=4, pad_token_id=0, query_pre_attn_scalar=256, rms_norm_eps=1e-06,
                  rope_theta=10000.0, sliding_window=4096, use_cache=True, vocab_size=256000)


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="module")
def adapter(registry):
    return registry.get("model_adapters", "transformer_lens")


def _load(registry, path, dtype="float32", **options):
    return load_model(registry, str(path), adapter="transformer_lens", dtype=dtype, adapter_options=options)


def _ids(n_vocab: int, shape=(2, 12)) -> torch.Tensor:
    return torch.randint(0, n_vocab, shape, generator=torch.Generator().manual_seed(0))


def _hf(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def test_registered_and_never_picked_for_a_hugging_face_config(registry, adapter, tiny_models):
    from transformers import AutoConfig

    assert "transformer_lens" in registry.names("model_adapters")
    for family, path in tiny_models.items():
        config = AutoConfig.from_pretrained(path)
        assert not adapter.matches(config)
        assert pick_adapter(registry, config, None).name != "transformer_lens", family


def test_options_default_to_transformer_lens_and_are_validated(registry, adapter):
    assert adapter.configure({}).settings == {"fold_ln": True, "center_writing_weights": True,
                                              "center_unembed": True, "fold_value_biases": True}
    assert adapter.configure({"fold_ln": "false"}).option("fold_ln") is False
    assert adapter.option("fold_ln") is True  # configure returns a copy
    with pytest.raises(FeatsurvError, match="Unknown option 'fold_lm'.*center_unembed"):
        adapter.configure({"fold_lm": "true"})
    with pytest.raises(FeatsurvError, match="Bad value 'maybe' for option 'fold_ln'.*true or false"):
        adapter.configure({"fold_ln": "maybe"})
    with pytest.raises(FeatsurvError, match="'gpt_neox'.*none \\(this adapter takes no options\\)"):
        registry.get("model_adapters", "gpt_neox").configure({"fold_ln": "true"})


def test_processed_model_keeps_logits_and_centres_the_residual_stream(registry, tiny_models):
    """TL's default processing: same next-token distribution as HF; resid_post = HF's output of the
    block minus its mean over d_model. Without processing: exactly HF's residual stream."""
    path = tiny_models["gpt_neox"]
    hf = _hf(path)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        hf_out = hf(ids, output_hidden_states=True)
        hidden = hf_out.hidden_states[1]  # the output of block 0 (the last entry is after the final norm)
        for options, want in (({}, hidden - hidden.mean(-1, keepdim=True)), (NO_PROCESSING, hidden)):
            loaded = _load(registry, path, **options)
            model, adapter = loaded.model, loaded.adapter
            logits = adapter.forward(model, ids)
            assert torch.allclose(logits.log_softmax(-1), hf_out.logits.log_softmax(-1), atol=1e-4)
            point, where = adapter.hook_point(model, "blocks.0.hook_resid_post")
            seen = {}
            handle = point.register_forward_hook(lambda _m, _a, out: seen.setdefault("x", out))
            model(ids)
            handle.remove()
            assert where == "output" and torch.allclose(seen["x"], want, atol=1e-4)
            assert adapter.width(model) == 32 and adapter.max_positions(model) == 256


def test_processing_flags_reach_transformer_lens(registry, tiny_models):
    default = _load(registry, tiny_models["gpt_neox"]).model
    raw = _load(registry, tiny_models["gpt_neox"], **NO_PROCESSING).model
    assert default.cfg.normalization_type == "LNPre" and raw.cfg.normalization_type == "LN"
    w_u = default.unembed.W_U
    assert torch.allclose(w_u.mean(-1), torch.zeros_like(w_u[:, 0]), atol=1e-5)  # center_unembed
    assert not torch.allclose(raw.unembed.W_U.mean(-1), torch.zeros_like(w_u[:, 0]), atol=1e-5)


def test_gemma2_config_equals_transformer_lens_name_table():
    """A local Gemma-2 gets the config TransformerLens builds from the name google/gemma-2-2b."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import Gemma2Config

    from featsurv_plugins.adapters_transformer_lens import _local_config

    hf = Gemma2Config(**GEMMA_2_2B)
    for fold in (False, True):
        want = loading.get_pretrained_model_config("google/gemma-2-2b", hf_cfg=hf.to_dict(), fold_ln=fold,
                                                   device="cpu", dtype=torch.bfloat16).to_dict()
        got = _local_config("/some/dir/gemma", hf, torch.bfloat16, "cpu", fold).to_dict()
        differ = {k for k in set(want) | set(got) if want.get(k) != got.get(k)}
        assert differ == {"model_name", "tokenizer_name"}


def test_gemma2_loads_in_bf16_with_its_gated_mlp_and_grouped_kv(registry, tiny_models):
    path = tiny_models["gemma2"]
    loaded = _load(registry, path, dtype="bfloat16", **NO_PROCESSING)
    model, adapter = loaded.model, loaded.adapter
    assert model.blocks[0].attn.W_Q.dtype == torch.bfloat16
    targets = adapter.compressible_weights(model)
    by_name = {t.name: t for t in targets}
    assert [t.name for t in targets[:7]] == ["blocks.0.attn.W_Q", "blocks.0.attn._W_K", "blocks.0.attn._W_V",
                                             "blocks.0.attn.W_O", "blocks.0.mlp.W_in", "blocks.0.mlp.W_gate",
                                             "blocks.0.mlp.W_out"]
    assert by_name["blocks.0.attn._W_K"].head_layout == (2, 1, 8) and by_name["blocks.0.attn.W_Q"].head_layout == (4, 1, 8)
    assert {t.weight.dtype for t in targets} == {torch.bfloat16}
    assert by_name["blocks.0.mlp.W_gate"].role == "mlp_gate"
    # the fp32 conversion computes HF's distribution (logit softcapping, sliding window, GQA)
    fp32 = _load(registry, path, **NO_PROCESSING)
    hf = _hf(path)
    ids = _ids(hf.config.vocab_size, (2, 80))  # longer than the sliding window of 64
    with torch.no_grad():
        assert torch.allclose(fp32.adapter.forward(fp32.model, ids).log_softmax(-1),
                              hf(ids).logits.log_softmax(-1), atol=1e-4)


def _tl_param(model, name):
    obj = model
    for part in name.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def test_weights_are_tl_layout_copies_that_write_back(registry, tiny_models):
    loaded = _load(registry, tiny_models["gpt_neox"])
    model, adapter = loaded.model, loaded.adapter
    targets = adapter.compressible_weights(model, ("attn", "mlp", "embed", "lm_head"))
    roles = {t.name: t.role for t in targets}
    assert roles["embed.W_E"] == "embed" and roles["unembed.W_U"] == "lm_head"
    assert [roles[f"blocks.1.{n}"] for n in ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")] \
        == ["q", "k", "v", "o", "mlp_in", "mlp_out"]
    for t in targets:
        p = _tl_param(model, t.name)
        if t.role in ("q", "k", "v"):
            heads, d_model, d_head = p.shape
            assert t.head_layout == (heads, 1, d_head)
            assert torch.equal(t.weight.view(heads, d_head, d_model)[1, 2], p[1, :, 2])  # row (head 1, d_head 2)
        elif t.role == "o":
            assert torch.equal(t.weight, p.reshape(-1, p.shape[-1]).T)
        elif t.role == "embed":
            assert torch.equal(t.weight, p)
        else:
            assert torch.equal(t.weight, p.T)
        assert t.weight.data_ptr() != p.data_ptr()  # a copy: the model sees it only after sync()
        before = p.detach().clone()
        with torch.no_grad():
            t.weight.mul_(2)
        assert torch.equal(p, before)
        t.sync()
        assert torch.equal(p, 2 * before)


def _reference_tl_rtn(model, bits):
    """The reference's quantize_rtn_per_channel_tl (absmax over every dimension but the last)."""
    qmax, qmin = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    for name, param in model.named_parameters():
        if any(t in name for t in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out")):
            w = param.data
            scale = w.abs().amax(dim=tuple(range(w.ndim - 1)), keepdim=True) / qmax
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            param.data = (torch.round(w / scale).clamp(qmin, qmax) * scale).to(w.dtype)


@pytest.mark.parametrize("family", ["gpt_neox", "gemma2"])
def test_rtn_tl_granularity_is_the_reference_tl_rtn(registry, tiny_models, family):
    ours, theirs = _load(registry, tiny_models[family]), _load(registry, tiny_models[family])
    targets = ours.adapter.compressible_weights(ours.model)
    registry.get("compressors", "rtn").compress(targets, {"bits": 4, "symmetric": True, "granularity": "tl"})
    for t in targets:
        t.sync()
    _reference_tl_rtn(theirs.model, 4)
    names = {t.name for t in targets}
    assert len(names) == len(ours.model.blocks) * (7 if family == "gemma2" else 6)
    fresh = _load(registry, tiny_models[family]).model
    for name, p in theirs.model.named_parameters():  # targets bit-identical; biases, norms, embeddings untouched
        assert torch.equal(_tl_param(ours.model, name), p), name
        assert torch.equal(p, _tl_param(fresh, name)) == (name not in names), name


def test_magnitude_prunes_each_tl_tensor(registry, tiny_models):
    loaded = _load(registry, tiny_models["gpt_neox"])
    targets = loaded.adapter.compressible_weights(loaded.model)
    before = {t.name: _tl_param(loaded.model, t.name).detach().clone() for t in targets}
    registry.get("compressors", "magnitude").compress(targets, {"sparsity": 0.3, "scope": "matrix"})
    for t in targets:
        t.sync()
        p, w0 = _tl_param(loaded.model, t.name), before[t.name]
        k = round(0.3 * w0.numel())
        zero = p == 0
        assert int(zero.sum()) == k
        assert w0.abs()[zero].max() <= w0.abs()[~zero].min()  # the smallest |w| of the whole TL tensor
        assert torch.equal(p[~zero], w0[~zero])


def test_a_third_party_compressor_acts_on_tl_weights(registry, tiny_models):
    torchao = pytest.importorskip("featsurv_torchao")
    loaded = _load(registry, tiny_models["gpt_neox"])
    targets = loaded.adapter.compressible_weights(loaded.model, ("mlp",))
    want = {t.name: torchao.dequantized(t.weight.clone(), torchao.torchao_config(4, "axis", "symmetric", "affine"))
            for t in targets}
    registry.get("compressors", "torchao").compress(targets, {"bits": 4})
    for t in targets:
        t.sync()
        assert torch.equal(_tl_param(loaded.model, t.name), want[t.name].T), t.name


def test_hooks_are_transformer_lens_names(registry, tiny_models):
    loaded = _load(registry, tiny_models["gpt_neox"])
    model, adapter = loaded.model, loaded.adapter
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post", "hook_embed"):
        assert adapter.hook_point(model, name) == (model.hook_dict[name], "output")
    assert adapter.hook_width(model, "blocks.0.attn.hook_z") == 4 * 8
    assert adapter.hook_width(model, "blocks.1.mlp.hook_post") == 64
    assert adapter.hook_width(model, "blocks.1.hook_resid_post") == 32
    with pytest.raises(FeatsurvError, match="'blocks.7.hook_resid_post' is not a hook point.*blocks.L.attn.hook_z"):
        adapter.hook_point(model, "blocks.7.hook_resid_post")


def _hook_z_sae(out_dir, d_in: int, hook: str):
    """An exact sae-lens SAE (features: the +/- parts of a rotation) reading TL's per-head hook_z."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=torch.Generator().manual_seed(1)))
    cfg = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=True, reshape_activations="hook_z",
                            metadata=SAEMetadata(hook_name=hook, model_name="tiny", context_size=32, prepend_bos=True))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([q, -q], dim=1))
        sae.W_dec.copy_(torch.cat([q.T, -q.T], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(out_dir)
    return out_dir


def test_cli_audit_through_the_adapter_at_resid_and_hook_z(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    model = tiny_models["gpt_neox"]
    resid = tiny_sae(model, "blocks.1.hook_resid_post")
    z = _hook_z_sae(tmp_path / "z-sae", 32, "blocks.0.attn.hook_z")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "audit", "rtn", "--model", str(model), "--adapter", "transformer_lens", "--adapter-option", "fold_ln=false",
        "--sae", str(resid), "--sae", str(z), "--dataset", str(tiny_corpus), "--tokens", "512", "--context", "32",
        "-p", "bits=8,3", "-p", "granularity=tl", "--bootstrap", "0", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert run["adapter"] == "transformer_lens" and run["options"]["adapter_options"] == {"fold_ln": "false"}
    for hook in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z"):
        assert summary["baseline"]["saes"][hook]["explained_variance"] == pytest.approx(1.0, abs=1e-4)
    by = {(e["params"]["bits"], e["hook"]): e for e in summary["results"]}
    for hook in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z"):
        assert by[(8, hook)]["mean_r"] > by[(3, hook)]["mean_r"]
        assert by[(8, hook)]["survived"] > 0.9


def test_bad_adapter_options_are_clear_cli_errors(cli_base_args, tmp_path):
    for extra, needle in ((["--adapter", "transformer_lens", "--adapter-option", "nope=1"], "Unknown option 'nope'"),
                          (["--adapter", "transformer_lens", "--adapter-option", "fold_ln"], "expected KEY=VALUE"),
                          (["--adapter-option", "fold_ln=false"], "takes no options")):
        out = tmp_path / "r"
        result = CliRunner().invoke(cli, ["audit", "rtn", *cli_base_args, *extra, "--out", str(out)])
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output
        assert not out.exists()


def test_preset_adapter_options_merge_with_the_command_line():
    from featsurv.cli.common import build_options

    def options(**given):
        base = {k: None for k in ("model", "adapter", "dataset", "n_tokens", "context", "prepend_bos")}
        return build_options({**base, "preset": "pythia-70m", "saes": (), "hooks": (), "metrics": (),
                              "adapter_option_items": (), **given})[0]

    assert options().adapter == "transformer_lens"
    assert options().adapter_options["fold_ln"] is True
    merged = options(adapter_option_items=("fold_ln=false",)).adapter_options
    assert merged["fold_ln"] == "false" and merged["center_unembed"] is True
    assert options(adapter="gpt_neox").adapter_options == {}
