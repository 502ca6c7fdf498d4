"""The built-in ``gpt2`` adapter on a tiny random GPT-2 (transposed ``Conv1D`` weights, fused ``c_attn``).

Oracles: Hugging Face's own ``output_hidden_states`` for the hook mapping; hand computations on the
real ``[in, out]`` storage for rtn's scales and magnitude's masks; TransformerLens's own GPT-2 weight
conversion (``convert_gpt2_weights``) for the TL layout; a hand-quantized copy of the model for the
perplexity an audit reports.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from featsurv import FeatsurvError, WeightTarget
from featsurv.audit import AuditSession, make_options
from featsurv.capture import capture
from featsurv.cli import cli
from featsurv.hf import HFDecoderAdapter, conv1d_view, get_path
from featsurv.loading import load_model
from featsurv.plugins import build_registry
from featsurv.progress import Progress
from featsurv.runs import run_audit
from featsurv.testing import write_exact_sae
from featsurv_plugins.compress_pruning import Pruning


def Magnitude():  # noqa: N802 - the magnitude method of the pruning compressor, its defaults filled in
    class _Filled:
        def compress(self, targets, params):
            Pruning().compress(targets, {**{q.name: q.default for q in Pruning.params}, **params})
    return _Filled()
from featsurv_plugins.compress_rtn import RTN

D_MODEL, N_HEADS, N_LAYERS, N_CTX = 32, 4, 2, 64
D_HEAD = D_MODEL // N_HEADS
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_models, tmp_path_factory) -> Path:
    """A tiny random GPT2LMHeadModel (tied embeddings, Conv1D weights) with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt_neox"])
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                        n_positions=N_CTX, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        initializer_range=0.2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # biases are zero at init; make them visible so that "biases stay FP" can fail
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("gpt2") / "gpt2"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gpt2_sae(tiny_gpt2, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2-saes")

    def make(hook: str) -> Path:
        out = root / hook
        return out if out.exists() else write_exact_sae(out, D_MODEL, hook, model_name="gpt2", context_size=32)

    return make


@pytest.fixture
def gpt2(registry, tiny_gpt2):
    return load_model(registry, str(tiny_gpt2))


def _ids(model, n: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, model.config.vocab_size, (2, n), generator=gen)


# --------------------------------------------------------------------------- structure
def test_gpt2_adapter_is_chosen_with_width_and_positions(gpt2):
    assert gpt2.adapter.name == "gpt2"
    cfg = gpt2.model.config
    assert cfg.model_type == "gpt2" and "hidden_size" not in cfg.to_dict()  # GPT-2 names it n_embd
    assert gpt2.adapter.width(gpt2.model) == cfg.n_embd == D_MODEL
    assert gpt2.adapter.max_positions(gpt2.model) == cfg.n_positions == N_CTX
    assert len(gpt2.adapter.layers(gpt2.model)) == N_LAYERS


def test_hooks_match_output_hidden_states(gpt2):
    adapter, model = gpt2.adapter, gpt2.model
    hooks = [f"blocks.{L}.{k}" for L in range(N_LAYERS)
             for k in ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")]
    ids = _ids(model)
    with torch.no_grad(), capture(adapter, model, hooks) as acts:
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
    assert len(hs) == N_LAYERS + 1
    tr = model.transformer
    with torch.no_grad():
        embed = tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1]))
    torch.testing.assert_close(acts["blocks.0.hook_resid_pre"], embed)
    for L in range(N_LAYERS):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"], hs[L])
        if L < N_LAYERS - 1:
            torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hs[L + 1])
        torch.testing.assert_close(
            acts[f"blocks.{L}.hook_resid_post"],
            acts[f"blocks.{L}.hook_resid_pre"] + acts[f"blocks.{L}.hook_attn_out"] + acts[f"blocks.{L}.hook_mlp_out"],
            rtol=1e-5, atol=1e-5)
    last = acts[f"blocks.{N_LAYERS - 1}.hook_resid_post"]
    torch.testing.assert_close(tr.ln_f(last), hs[-1])  # the last hidden state is after ln_f
    block = tr.h[1]
    assert adapter.hook_point(model, "blocks.1.hook_attn_out") == (block.attn, "output")
    assert adapter.hook_point(model, "blocks.1.hook_mlp_out") == (block.mlp, "output")


def test_targets_are_out_in_views_of_the_conv1d_storage(gpt2):
    adapter, model = gpt2.adapter, gpt2.model
    targets = adapter.compressible_weights(model)
    names = [(t.name, t.role, t.layer) for t in targets]
    expected = []
    for L in range(N_LAYERS):
        p = f"transformer.h.{L}"
        expected += [(f"{p}.attn.c_attn[q]", "q", L), (f"{p}.attn.c_attn[k]", "k", L), (f"{p}.attn.c_attn[v]", "v", L),
                     (f"{p}.attn.c_proj", "o", L), (f"{p}.mlp.c_fc", "mlp_in", L), (f"{p}.mlp.c_proj", "mlp_out", L)]
    assert names == expected
    x = torch.randn(5, D_MODEL)
    for t in targets:
        module = t.module
        storage = module.weight
        assert t.weight.ndim == 2 and t.weight.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()
        assert t.weight.shape[1] == storage.shape[0]  # [out, in]: in is the storage's first dimension
        if t.role in ("q", "k", "v"):
            assert t.head_layout == (N_HEADS, 1, D_HEAD) and t.weight.shape == (D_MODEL, D_MODEL)
            i = "qkv".index(t.role)
            cols = slice(i * D_MODEL, (i + 1) * D_MODEL)
            with torch.no_grad():  # the view computes exactly the part of Conv1D's output it names
                torch.testing.assert_close(torch.nn.functional.linear(x, t.weight), (x @ storage)[:, cols])
        else:
            assert t.head_layout is None and t.weight.shape == (storage.shape[1], storage.shape[0])
    # the weight is the model's: a change through the view is seen by the module
    q = targets[0]
    with torch.no_grad():
        q.weight[3, 5] = 123.0
    assert model.transformer.h[0].attn.c_attn.weight[5, 3].item() == 123.0


def test_tied_embedding_scopes(gpt2):
    adapter, model = gpt2.adapter, gpt2.model
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(FeatsurvError, match="tied to its input embedding"):
        adapter.compressible_weights(model, ("attn", "lm_head"))
    full = adapter.compressible_weights(model, ("embed", "attn", "mlp", "lm_head"))
    assert full[0].module is model.transformer.wte and not [t for t in full if t.role == "lm_head"]


def _tl_config(model):
    from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

    return HookedTransformerConfig(n_layers=N_LAYERS, d_model=D_MODEL, n_ctx=N_CTX, d_head=D_HEAD, n_heads=N_HEADS,
                                   d_mlp=4 * D_MODEL, d_vocab=model.config.vocab_size, act_fn="gelu_new",
                                   normalization_type="LN", original_architecture="GPT2LMHeadModel")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("processed", [False, True])
def test_hooks_match_transformer_lens(gpt2, processed):
    """Every hook equals TransformerLens's on the same weights; with from_pretrained's processing
    (fold_ln, center_writing_weights, ...), as sae-lens's gpt2-small-res-jb was trained, it equals the
    Hugging Face activation minus its mean across d_model: what --center-activations computes."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    model = gpt2.model
    cfg = _tl_config(model)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_gpt2_weights(model, cfg), fold_ln=processed,
                                   center_writing_weights=processed, center_unembed=processed,
                                   fold_value_biases=processed)
    tl.eval()
    hooks = [f"blocks.{L}.hook_{k}" for L in range(N_LAYERS) for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    ids = _ids(model)
    with torch.no_grad(), capture(gpt2.adapter, model, hooks) as acts:
        logits = model(ids, use_cache=False).logits
    with torch.no_grad():
        tl_logits, cache = tl.run_with_cache(ids)
    torch.testing.assert_close(tl_logits.log_softmax(-1), logits.log_softmax(-1), rtol=1e-4, atol=1e-4)
    for h in hooks:
        x = acts[h] - acts[h].mean(-1, keepdim=True) if processed else acts[h]
        torch.testing.assert_close(cache[h], x, rtol=1e-4, atol=1e-5, msg=h)
    if processed:  # and the uncentred activation is not what the processed model reads
        assert (cache["blocks.1.hook_resid_pre"] - acts["blocks.1.hook_resid_pre"]).abs().max() > 1e-2


# --------------------------------------------------------------------------- compressors on the views
def _conv1d_weights(model) -> dict[str, torch.Tensor]:
    return {f"{L}.{p}": get_path(model.transformer.h[L], p).weight.detach().clone()
            for L in range(N_LAYERS) for p in CONV1D}


def _absmax_round(w: torch.Tensor, bits: int, dims: tuple[int, ...]) -> torch.Tensor:
    """The reference scheme: symmetric absmax with one scale per index of the dimensions not in ``dims``."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=dims, keepdim=True) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


@pytest.mark.parametrize("bits", [4, 3])
def test_rtn_channel_scales_run_along_the_output_dimension(gpt2, bits):
    model = gpt2.model
    fp = _conv1d_weights(model)
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    targets = gpt2.adapter.compressible_weights(model)
    RTN().compress(targets, {"bits": bits, "symmetric": True, "granularity": "channel"})
    for t in targets:
        t.sync()
    for key, w in fp.items():
        got = get_path(model.transformer.h[int(key[0])], key[2:]).weight.detach()
        # storage [in, out]: one scale per output column, the max over the input rows (dim 0)
        torch.testing.assert_close(got, _absmax_round(w, bits, (0,)), rtol=0, atol=1e-6)
        wrong = _absmax_round(w, bits, (1,))  # what a naive adapter did: per input row
        assert (got - wrong).abs().max() > 1e-3, key
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert torch.equal(p.detach(), biases[n]), f"{n}: compressors touch weights only"


def test_rtn_group_scales_group_input_weights_of_one_output(gpt2):
    model = gpt2.model
    fp = _conv1d_weights(model)
    RTN().compress(gpt2.adapter.compressible_weights(model), {"bits": 4, "symmetric": True, "granularity": "group:8"})
    for key, w in fp.items():
        got = get_path(model.transformer.h[int(key[0])], key[2:]).weight.detach()
        n_in, n_out = w.shape
        grouped = w.reshape(n_in // 8, 8, n_out)  # 8 consecutive input weights of one output column
        torch.testing.assert_close(got, _absmax_round(grouped, 4, (1,)).reshape(n_in, n_out), rtol=0, atol=1e-6)


def test_rtn_in_bfloat16_writes_back_in_place(registry, tiny_gpt2):
    loaded = load_model(registry, str(tiny_gpt2), dtype="bfloat16")
    c_attn = loaded.model.transformer.h[0].attn.c_attn
    param, fp = c_attn.weight, c_attn.weight.detach().clone()
    RTN().compress(loaded.adapter.compressible_weights(loaded.model), {"bits": 4, "symmetric": True,
                                                                       "granularity": "channel"})
    assert c_attn.weight is param and param.dtype == torch.bfloat16
    expected = _absmax_round(fp.float(), 4, (0,)).to(torch.bfloat16)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=0)


def _tl_state(model) -> dict[str, torch.Tensor]:
    """The model's weights in TransformerLens's layout, by TransformerLens's own GPT-2 conversion."""
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    with torch.no_grad():
        return {k: v.detach().clone() for k, v in convert_gpt2_weights(model, _tl_config(model)).items()}


TL_MATRICES = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "mlp.W_in", "mlp.W_out")


@pytest.mark.parametrize("bits", [6, 4])
def test_rtn_tl_granularity_matches_transformer_lens_layout(gpt2, bits):
    model = gpt2.model
    tl_fp = _tl_state(model)
    assert tl_fp["blocks.0.attn.W_Q"].shape == (N_HEADS, D_MODEL, D_HEAD)
    RTN().compress(gpt2.adapter.compressible_weights(model), {"bits": bits, "symmetric": True, "granularity": "tl"})
    tl_got = _tl_state(model)
    for L in range(N_LAYERS):
        for m in TL_MATRICES:
            key = f"blocks.{L}.{m}"
            w = tl_fp[key]
            # the reference study's RTN on TransformerLens weights: absmax over every dimension but the last
            expected = _absmax_round(w, bits, tuple(range(w.ndim - 1)))
            torch.testing.assert_close(tl_got[key], expected, rtol=0, atol=1e-6, msg=key)
        # W_Q's scale is one per d_head index, shared by every head: per-row (channel) scales differ
        per_head = _absmax_round(tl_fp[f"blocks.{L}.attn.W_Q"], bits, (1,))
        assert (per_head - tl_got[f"blocks.{L}.attn.W_Q"]).abs().max() > 1e-4
    for key in tl_fp:  # embeddings, norms and biases are untouched
        if not key.endswith(TL_MATRICES):
            assert torch.equal(tl_got[key], tl_fp[key]), key


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_magnitude_prunes_q_k_v_of_the_fused_c_attn_separately(gpt2, sparsity):
    model = gpt2.model
    with torch.no_grad():  # Q much smaller than K and V: pruning c_attn as one matrix would zero Q whole
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, :D_MODEL] *= 0.01
    fp = _conv1d_weights(model)
    Magnitude().compress(gpt2.adapter.compressible_weights(model), {"sparsity": sparsity, "scope": "matrix"})
    for L in range(N_LAYERS):
        got = model.transformer.h[L].attn.c_attn.weight.detach()
        w = fp[f"{L}.attn.c_attn"]
        for i in range(3):
            part, orig = got[:, i * D_MODEL:(i + 1) * D_MODEL], w[:, i * D_MODEL:(i + 1) * D_MODEL]
            k = round(sparsity * orig.numel())
            assert int((part == 0).sum()) == k
            threshold = orig.abs().flatten().kthvalue(k).values
            assert torch.equal(part == 0, orig.abs() <= threshold)  # the k smallest of this part, no tie here
            assert torch.equal(part[part != 0], orig[part != 0])


def test_magnitude_global_ranks_all_weights_together(gpt2):
    model = gpt2.model
    fp = _conv1d_weights(model)
    Magnitude().compress(gpt2.adapter.compressible_weights(model), {"sparsity": 0.4, "scope": "global"})
    every = torch.cat([w.abs().flatten() for w in fp.values()])
    k = round(0.4 * every.numel())
    threshold = every.kthvalue(k).values
    for key, w in fp.items():
        got = get_path(model.transformer.h[int(key[0])], key[2:]).weight.detach()
        assert torch.equal(got == 0, w.abs() <= threshold), key


# --------------------------------------------------------------------------- audits
def _window_perplexity(model, tokens, batch_size: int) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, _ in tokens.batches(batch_size):
            logits = model(ids, use_cache=False).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                           ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    return math.exp(nll / count)


def test_audit_perplexity_matches_a_hand_quantized_model(registry, tiny_gpt2, gpt2_sae, tiny_corpus, tmp_path):
    options = make_options(model=str(tiny_gpt2), saes=[str(gpt2_sae("blocks.1.hook_resid_post"))],
                           dataset=str(tiny_corpus), n_tokens=512, context=32, bootstrap=0)
    session = AuditSession(options, registry, Progress(quiet=True))
    result = run_audit(options, [("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})],
                       out_dir=tmp_path / "run", session=session)
    (entry,) = result.summary["results"]
    fp_model = session.loaded.model
    # FP weights were restored after the configuration
    assert math.isclose(_window_perplexity(fp_model, session.tokens, options.batch_size),
                        result.summary["baseline"]["perplexity"], rel_tol=1e-5)
    oracle = copy.deepcopy(fp_model)
    with torch.no_grad():
        for block in oracle.transformer.h:
            for p in CONV1D:
                w = get_path(block, p).weight
                w.copy_(_absmax_round(w, 4, (0,)))
    assert math.isclose(entry["perplexity"], _window_perplexity(oracle, session.tokens, options.batch_size),
                        rel_tol=1e-5)


def _audit_cli(model: Path, saes: list[Path], corpus: Path, out: Path, *params: str):
    args = ["audit", "rtn", *params, "--model", str(model), *[a for s in saes for a in ("--sae", str(s))],
            "--dataset", str(corpus), "--tokens", "512", "--context", "32", "--bootstrap", "0", "-q", "--out", str(out)]
    return CliRunner().invoke(cli, args)


def test_cli_audit_end_to_end(tiny_gpt2, gpt2_sae, tiny_corpus, tmp_path):
    hooks = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")
    out = tmp_path / "run"
    result = _audit_cli(tiny_gpt2, [gpt2_sae(h) for h in hooks], tiny_corpus, out, "-p", "bits=8,3")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["params"]["bits"], r["hook"]): r for r in summary["results"]}
    for hook in hooks:
        assert summary["baseline"]["saes"][hook]["explained_variance"] > 0.99
        int8, int3 = rows[(8, hook)], rows[(3, hook)]
        assert int8["n_active"] > 0
        if hook == "blocks.0.hook_resid_pre":  # the embeddings: no compressed weight before it
            assert int8["mean_r"] == int3["mean_r"] == 1.0 and int3["survived"] == 1.0
        else:
            assert int8["mean_r"] > 0.99 and int8["mean_r"] > int3["mean_r"]
    int8, int3 = rows[(8, hooks[-1])], rows[(3, hooks[-1])]
    assert abs(int8["perplexity_change"]) < abs(int3["perplexity_change"])
    assert json.loads((out / "run.json").read_text())["adapter"] == "gpt2"


def test_cli_tl_granularity_runs_and_differs_from_channel(tiny_gpt2, gpt2_sae, tiny_corpus, tmp_path):
    sae = gpt2_sae("blocks.1.hook_resid_post")
    runs = {}
    for g in ("tl", "channel"):
        res = _audit_cli(tiny_gpt2, [sae], tiny_corpus, tmp_path / g, "-p", "bits=4", "-p", f"granularity={g}")
        assert res.exit_code == 0, res.output
        runs[g] = json.loads((tmp_path / g / "summary.json").read_text())["results"][0]
    assert runs["tl"]["params"]["granularity"] == "tl"
    assert runs["tl"]["perplexity"] != runs["channel"]["perplexity"]  # q/k/v scales are shared across heads


# --------------------------------------------------------------------------- refusing a naive adapter
class NaiveGPT2(HFDecoderAdapter):
    """What docs/plugins/adapters.md used to lead to: GPT-2's module names, nothing about Conv1D."""

    name = "naive_gpt2"
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    attn_out_module = "attn"
    mlp_out_module = "mlp"
    block_weights = {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "mlp_in", "mlp.c_proj": "mlp_out"}
    priority = 50


def test_an_adapter_that_ignores_conv1d_is_refused(register_plugin, tiny_gpt2, gpt2_sae, tiny_corpus, tmp_path):
    from featsurv import hookimpl

    class Plugin:
        @hookimpl
        def register_model_adapters(self, register):
            register(NaiveGPT2())

    registry = register_plugin(Plugin(), name="naive")
    with pytest.raises(FeatsurvError) as err:
        load_model(registry, str(tiny_gpt2))
    text = str(err.value.message)
    for needle in ("naive_gpt2", "transformer.h.0.attn.c_attn", "Conv1D", "[in, out]", "--adapter gpt2",
                   "conv1d_targets", "docs/plugins/adapters.md"):
        assert needle in text, text
    # and through the CLI: exit 2, the message, no traceback, nothing written
    out = tmp_path / "run"
    res = _audit_cli(tiny_gpt2, [gpt2_sae("blocks.1.hook_resid_post")], tiny_corpus, out, "-p", "granularity=tl")
    assert res.exit_code == 2 and "Traceback" not in res.output and "Conv1D" in res.output, res.output
    assert not out.exists()


def test_conv1d_view_is_a_transposed_view():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(12, 4)
    view = conv1d_view(conv, slice(4, 8))
    assert view.shape == (4, 4) and not view.requires_grad
    with torch.no_grad():
        view.zero_()
    assert (conv.weight[:, 4:8] == 0).all() and (conv.weight[:, :4] != 0).all()
    t = WeightTarget("w", conv, "k", 0, tensor=view)
    assert t.weight is view


# --------------------------------------------------------------------------- the gpt2-small preset
def test_gpt2_small_preset_pairs_gpt2_with_gpt2_small_res_jb(registry):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from featsurv.presets import get_preset

    p = get_preset("gpt2-small")
    o = p.options
    assert o["adapter"] == "gpt2" and registry.get("model_adapters", "gpt2")
    (sae,) = o["saes"]
    source, release, sae_id = sae.split(":")
    assert source == "saelens" and o["hooks"] == [sae_id]
    entry = get_pretrained_saes_directory()[release]  # sae-lens's own pretrained_saes.yaml, offline
    assert entry.model == "gpt2-small" and sae_id in entry.saes_map
    # trained through TransformerLens with centred writing weights: featsurv centres the HF residual
    assert entry.config_overrides["model_from_pretrained_kwargs"]["center_writing_weights"] is True
    assert o["center_activations"] is True
    assert o["context"] == 128 and o["prepend_bos"] is True and o["exclude_special"] is True
    assert p.audit["compressor"] == "rtn" and p.compare["b"] == "magnitude"


# --------------------------------------------------------------------------- docs/plugins/adapters.md examples
DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins" / "adapters.md"


def _doc_block(marker: str) -> dict:
    import re

    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, marker
    namespace: dict = {"__name__": "adapters_md"}
    exec(compile(blocks[0], f"adapters.md:{marker}", "exec"), namespace)
    return namespace


def test_documented_openai_gpt_adapter_maps_conv1d_and_post_norm_blocks():
    from transformers import AutoModelForCausalLM, OpenAIGPTConfig

    adapter = _doc_block("# example plugin: openai_gpt_adapter.py")["OpenAIGPTAdapter"]()
    config = OpenAIGPTConfig(vocab_size=100, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX)
    assert adapter.matches(config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    hooks = [f"blocks.{L}.hook_{k}" for L in range(N_LAYERS) for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    ids = torch.randint(0, 100, (2, 10))
    with torch.no_grad(), capture(adapter, model, hooks) as acts:
        hs = model(ids, output_hidden_states=True).hidden_states
    for L in range(N_LAYERS):  # no final norm: every block's output is a hidden state
        block = model.transformer.h[L]
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_pre"], hs[L])
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hs[L + 1])
        with torch.no_grad():  # post-norm: h = ln_2(ln_1(x + a) + m)
            post = block.ln_2(block.ln_1(acts[f"blocks.{L}.hook_resid_pre"] + acts[f"blocks.{L}.hook_attn_out"])
                              + acts[f"blocks.{L}.hook_mlp_out"])
        torch.testing.assert_close(post, acts[f"blocks.{L}.hook_resid_post"])
    targets = adapter.compressible_weights(model)
    assert [t.role for t in targets[:6]] == ["q", "k", "v", "o", "mlp_in", "mlp_out"]
    c_attn = model.transformer.h[0].attn.c_attn
    x = torch.randn(3, D_MODEL)
    with torch.no_grad():
        for i, t in enumerate(targets[:3]):
            torch.testing.assert_close(torch.nn.functional.linear(x, t.weight),
                                       (x @ c_attn.weight)[:, i * D_MODEL:(i + 1) * D_MODEL])
    fp = c_attn.weight.detach().clone()
    RTN().compress(targets, {"bits": 4, "symmetric": True, "granularity": "channel"})
    torch.testing.assert_close(c_attn.weight.detach(), _absmax_round(fp, 4, (0,)), rtol=0, atol=1e-6)


class _PerHead(torch.nn.Module):
    def __init__(self, n_heads: int, d_in: int, d_head: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_heads, d_in, d_head))

    def forward(self, x):
        return torch.einsum("ti,hid->thd", x, self.weight).flatten(1)


def test_documented_write_back_target_round_trips_through_the_host_contract():
    per_head_target = _doc_block("def per_head_target(")["per_head_target"]
    torch.manual_seed(0)
    module = _PerHead(N_HEADS, D_MODEL, D_HEAD)
    param, fp = module.weight, module.weight.detach().clone()
    (t,) = per_head_target("attn.w_q", module, "q", 0)
    assert t.weight.shape == (N_HEADS * D_HEAD, D_MODEL) and t.head_layout == (N_HEADS, 1, D_HEAD)
    x = torch.randn(5, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(torch.nn.functional.linear(x, t.weight), module(x))
    # as the host does it: snapshot, compress, sync; then restore and sync
    snapshot = t.weight.detach().clone()
    RTN().compress([t], {"bits": 3, "symmetric": True, "granularity": "channel"})
    t.sync()
    assert module.weight is param
    # output channel (h, j) is weight[h, :, j]: one scale per (h, j), the max over d_in
    torch.testing.assert_close(param.detach(), _absmax_round(fp, 3, (1,)), rtol=0, atol=1e-6)
    with torch.no_grad():
        t.weight.copy_(snapshot)
    t.sync()
    assert torch.equal(param.detach(), fp)
