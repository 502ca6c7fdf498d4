"""RTN against hand computations; magnitude pruning (`pruning`, alias `magnitude`) against torch.nn.utils.prune."""

import pytest
import torch
from featsurv_plugins.compress_pruning import Pruning as Magnitude
from featsurv_plugins.compress_rtn import RTN, quantize_dequantize
from torch.nn.utils import prune

from featsurv.audit import make_options
from featsurv.base import WeightTarget
from featsurv.runs import run_audit

W = torch.tensor([[0.9, -0.3, 0.1, 0.45],
                  [-2.0, 1.0, 0.5, 0.25]])


def test_rtn_symmetric_channel_by_hand():
    # bits=3: qmax=3. Row 0: scale=0.3 -> [3, -1, 0.333->0, 1.5->2 (half to even)] * 0.3
    # Row 1: scale=2/3 -> [-3, 1.5->2, 0.75->1, 0.375->0] * 2/3
    out = quantize_dequantize(W, 3, True, "channel")
    expected = torch.tensor([[0.9, -0.3, 0.0, 0.6], [-2.0, 4 / 3, 2 / 3, 0.0]])
    torch.testing.assert_close(out, expected)


def test_rtn_symmetric_tensor_by_hand():
    # bits=3, one scale for the tensor: 2/3
    out = quantize_dequantize(W, 3, True, "tensor")
    s = 2 / 3
    expected = torch.tensor([[1 * s, 0 * s, 0 * s, 1 * s], [-3 * s, 2 * s, 1 * s, 0 * s]])
    # 0.9/s=1.35->1, -0.3/s=-0.45->0, 0.1/s=0.15->0, 0.45/s=0.675->1, 1.0/s=1.5->2, 0.5/s=.75->1, .25/s=.375->0
    torch.testing.assert_close(out, expected)


def test_rtn_symmetric_group_by_hand():
    # bits=2: qmax=1. Groups of 2 input weights: row0 [0.9,-0.3] s=.9 -> [1, 0]; [0.1,.45] s=.45 -> [0, 1]
    out = quantize_dequantize(W, 2, True, "group:2")
    # row1 [-2,1] s=2 -> [-1, 0.5->0]; [0.5,.25] s=.5 -> [1, .5->0]
    expected = torch.tensor([[0.9, 0.0, 0.0, 0.45], [-2.0, 0.0, 0.5, 0.0]])
    torch.testing.assert_close(out, expected)


def test_rtn_asymmetric_channel_by_hand():
    # bits=2: levels=3. Row 0: lo=-0.3, hi=0.9, scale=0.4, zero=round(0.75)=1
    #   q = clamp(round(w/0.4)+1, 0, 3): 0.9->2.25->2+1=3; -0.3->-0.75->-1+1=0; 0.1->.25->0+1=1; .45->1.125->1+1=2
    #   deq = (q-1)*0.4 = [0.8, -0.4, 0, 0.4]
    out = quantize_dequantize(W[:1], 2, False, "channel")
    torch.testing.assert_close(out, torch.tensor([[0.8, -0.4, 0.0, 0.4]]))


def test_rtn_tl_layout_shares_scales_across_heads():
    # q projection with 2 heads of d_head 2: rows (h0 j0, h0 j1, h1 j0, h1 j1)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.2], [0.5, 0.0], [0.0, 0.8]])
    out = quantize_dequantize(w, 2, True, "tl", head_layout=(2, 1, 2))
    # j0 rows share max 1.0: 0.5 -> round(0.5)=0 ; j1 rows share max 0.8: 0.2 -> round(.25)=0
    expected = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.8]])
    torch.testing.assert_close(out, expected)
    # channel granularity keeps each row's own scale, so nothing rounds to zero
    torch.testing.assert_close(quantize_dequantize(w, 2, True, "channel"), w)


def test_rtn_group_must_divide():
    from featsurv.errors import FeatsurvError

    with pytest.raises(FeatsurvError, match="group:3"):
        quantize_dequantize(W, 4, True, "group:3")


def test_rtn_compress_writes_back_in_place_and_more_bits_is_closer():
    lin = torch.nn.Linear(16, 8)
    torch.manual_seed(0)
    torch.nn.init.normal_(lin.weight)
    fp = lin.weight.detach().clone()
    errs = {}
    for bits in (8, 4):
        lin.weight.data.copy_(fp)
        RTN().compress([WeightTarget("w", lin, "mlp_in")], {"bits": bits, "symmetric": True, "granularity": "channel"})
        errs[bits] = (lin.weight - fp).abs().max().item()
        # at most half a step of each row's scale
        scale = fp.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert ((lin.weight - fp).abs() <= scale / 2 + 1e-6).all()
    assert errs[8] < errs[4]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.93])
def test_magnitude_matches_torch_prune(sparsity):
    torch.manual_seed(1)
    a, b = torch.nn.Linear(20, 10), torch.nn.Linear(20, 10)
    b.load_state_dict(a.state_dict())
    Magnitude().compress([WeightTarget("a", a, "mlp_in")], {"sparsity": sparsity, "scope": "matrix"})
    prune.l1_unstructured(b, "weight", amount=sparsity)
    torch.testing.assert_close(a.weight, b.weight)


def test_global_magnitude_matches_torch_global_prune():
    torch.manual_seed(2)
    mods = [torch.nn.Linear(12, 6), torch.nn.Linear(6, 9)]
    copies = [torch.nn.Linear(12, 6), torch.nn.Linear(6, 9)]
    for m, c in zip(mods, copies):
        c.load_state_dict(m.state_dict())
    Magnitude().compress([WeightTarget(str(i), m, "mlp_in") for i, m in enumerate(mods)],
                         {"sparsity": 0.4, "scope": "global"})
    prune.global_unstructured([(c, "weight") for c in copies], pruning_method=prune.L1Unstructured, amount=0.4)
    for m, c in zip(mods, copies):
        torch.testing.assert_close(m.weight, c.weight)


def test_tl_layout_on_a_tiny_gpt_neox_against_transformerlens_shapes(tiny_models):
    """Hand computation in TransformerLens's layout: W_Q[n_heads, d_model, d_head], one scale per d_head index."""
    from featsurv.loading import load_model
    from featsurv.plugins import get_registry

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    target = next(t for t in loaded.adapter.compressible_weights(loaded.model) if t.role == "qkv")
    n_heads, parts, d_head = target.head_layout
    w = target.weight.detach().clone()
    d_model = w.shape[1]
    bits = 4
    qmax = 2 ** (bits - 1) - 1
    per_head = w.view(n_heads, 3, d_head, d_model)
    expected = torch.empty_like(per_head)
    for part in range(3):  # Q, K, V
        tl = per_head[:, part].transpose(1, 2)  # [n_heads, d_model, d_head], as TransformerLens stores W_Q
        scale = tl.abs().amax(dim=(0, 1), keepdim=True) / qmax  # one scale per d_head index
        expected[:, part] = (torch.round(tl / scale) * scale).transpose(1, 2)
    out = quantize_dequantize(w, bits, True, "tl", target.head_layout)
    torch.testing.assert_close(out, expected.reshape(w.shape))
    assert not torch.allclose(out, quantize_dequantize(w, bits, True, "channel"))


def test_magnitude_prunes_q_k_v_of_a_fused_projection_as_separate_matrices():
    torch.manual_seed(3)
    n_heads, d_head, d_in = 2, 3, 5
    lin = torch.nn.Linear(d_in, 3 * n_heads * d_head, bias=False)
    with torch.no_grad():  # make K much larger than Q and V: one shared threshold would prune only Q and V
        lin.weight.view(n_heads, 3, d_head, d_in)[:, 1] *= 100
    fp = lin.weight.detach().clone().view(n_heads, 3, d_head, d_in)
    Magnitude().compress([WeightTarget("qkv", lin, "qkv", 0, (n_heads, 3, d_head))], {"sparsity": 0.5, "scope": "matrix"})
    out = lin.weight.detach().view(n_heads, 3, d_head, d_in)
    for part in range(3):
        ref = torch.nn.Linear(d_in, n_heads * d_head, bias=False)
        with torch.no_grad():
            ref.weight.copy_(fp[:, part].reshape(-1, d_in))
        prune.l1_unstructured(ref, "weight", amount=0.5)
        torch.testing.assert_close(out[:, part].reshape(-1, d_in), ref.weight)
        assert int((out[:, part] == 0).sum()) == round(0.5 * n_heads * d_head * d_in)


def test_rtn_asymmetric_keeps_constant_groups_and_zero_exact():
    w = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.5, 0.7, 0.6, 0.9]])
    out = quantize_dequantize(w, 8, False, "channel")
    torch.testing.assert_close(out[0], w[0])  # range [0, 0.3]: 0.3 is the top level
    # row 1: range widened to [0, 0.9], scale 0.9/255, zero point 0
    scale = 0.9 / 255
    torch.testing.assert_close(out[1], torch.round(w[1] / scale) * scale)


# --------------------------------------------------------------------------- arith=native (bf16 end to end)
BF16 = torch.bfloat16


def test_rtn_native_bf16_by_hand():
    # bits=3, qmax=3, row [1, 0.8359375] (both exact in bf16).
    # fp32: scale = 1/3; 0.8359375 * 3 = 2.5078 -> round 3 -> 3 * (1/3) = 1.0.
    # native: scale = bf16(1/3) = 0.333984375; 0.8359375 / 0.333984375 = 2.5029 -> bf16 (spacing 1/64
    # on [2, 4)) 2.5 -> round half to even 2 -> 2 * 0.333984375 = 0.66796875.
    w = torch.tensor([[1.0, 0.8359375]], dtype=BF16)
    assert quantize_dequantize(w, 3).tolist() == [[1.0, 1.0]]
    out = quantize_dequantize(w, 3, arith="native")
    assert out.dtype == BF16 and out.tolist() == [[1.0, 0.66796875]]
    # bits=4, qmax=7, row [1, 0.5]: fp32 scale 1/7 (float32 rounds it up) -> 0.5/scale = 3.4999998 -> 3;
    # native scale bf16(1/7) = 0.142578125 (rounded down) -> 3.5068 -> bf16 3.5 -> 4 -> 0.5703125.
    w = torch.tensor([[1.0, 0.5]], dtype=BF16)
    assert quantize_dequantize(w, 4).to(BF16).tolist() == [[1.0, 0.427734375]]
    assert quantize_dequantize(w, 4, arith="native").tolist() == [[1.0, 0.5703125]]


def test_rtn_native_clamps_like_the_reference():
    # bits=8, row [-1.328125, 0.6640625]: scale = bf16(1.328125 / 127) = 171 * 2^-14 = 0.01043701171875;
    # -1.328125 / scale = -127.2515 -> bf16 (spacing 0.5) -127.5 -> round half to even -128, which the
    # reference keeps (clamp to [-128, 127]) -> -128 * scale = -1.3359375;
    # 0.6640625 / scale = 63.626 -> bf16 (spacing 0.25) 63.75 -> 64 -> 0.66796875.
    w = torch.tensor([[-1.328125, 0.6640625]], dtype=BF16)
    assert quantize_dequantize(w, 8, arith="native").tolist() == [[-1.3359375, 0.66796875]]


def _bf16_step_by_step(w, bits):
    """The reference's RTN with every operation done in float32 and rounded to bf16 by hand."""
    qmax = 2 ** (bits - 1) - 1
    scale = (w.float().abs().amax(1, keepdim=True) / qmax).to(BF16)
    ratio = (w.float() / scale.float()).to(BF16)
    q = torch.round(ratio.float()).clamp(-qmax - 1, qmax).to(BF16)
    return (q.float() * scale.float()).to(BF16)


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_rtn_native_equals_bf16_step_by_step_and_differs_from_fp32(bits):
    torch.manual_seed(4)
    w = (torch.randn(48, 96) * 0.05).to(BF16)
    native = quantize_dequantize(w, bits, arith="native")
    assert torch.equal(native, _bf16_step_by_step(w, bits))
    assert not torch.equal(native, quantize_dequantize(w, bits).to(BF16))


def test_rtn_native_on_float32_weights_equals_fp32_and_default_is_unchanged():
    torch.manual_seed(5)
    w = torch.randn(16, 40)
    for bits in (8, 4, 2):
        assert torch.equal(quantize_dequantize(w, bits, arith="native"), quantize_dequantize(w, bits))
    lin_a, lin_b = torch.nn.Linear(40, 16).to(BF16), torch.nn.Linear(40, 16).to(BF16)
    lin_b.load_state_dict(lin_a.state_dict())
    RTN().compress([WeightTarget("a", lin_a, "mlp_in")], {"bits": 5, "symmetric": True, "granularity": "channel"})
    RTN().compress([WeightTarget("b", lin_b, "mlp_in")],
                   {"bits": 5, "symmetric": True, "granularity": "channel", "arith": "fp32"})
    assert torch.equal(lin_a.weight, lin_b.weight)
    assert RTN().label({"bits": 6, "symmetric": True, "granularity": "channel", "arith": "native"}) == \
        "rtn int6 arith=native"


def test_tied_embeddings_need_both_scopes(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    # the tiny Gemma-2 ties its LM head to the embedding
    from featsurv.errors import FeatsurvError

    lone = make_options(model=str(tiny_models["gemma2"]), saes=[str(tiny_sae(tiny_models["gemma2"]))],
                        dataset=str(tiny_corpus), n_tokens=256, context=32, bootstrap=0, scope=("lm_head",))
    with pytest.raises(FeatsurvError, match="tied"):
        run_audit(lone, [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"})], out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    opts = make_options(model=str(tiny_models["gemma2"]), saes=[str(tiny_sae(tiny_models["gemma2"]))],
                        dataset=str(tiny_corpus), n_tokens=256, context=32, bootstrap=0, scope=("embed", "lm_head"),
                        min_explained_variance=0)
    result = run_audit(opts, [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"})], out_dir=tmp_path / "r")
    assert result.summary["results"][0]["n_active"] > 0

