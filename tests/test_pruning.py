"""The `pruning` compressor: N:M masks, Wanda, count/tie rules and the `magnitude` alias, by hand."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featsurv.base import WeightTarget
from featsurv.errors import FeatsurvError
from featsurv.params import expand_grid
from featsurv_plugins.compress_pruning import Pruning, parse_pattern

W = torch.tensor([[0.1, -0.4, 0.3, 0.2, -0.9, 0.05, 0.6, -0.7],
                  [1.0, 0.5, -0.2, 0.8, 0.3, -0.1, -0.25, 0.4]])


def lin_with(weight):
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weight)
    return lin


def prune(weight, **params):
    lin = lin_with(weight)
    Pruning().compress([WeightTarget("w", lin, "mlp_in")], params)
    return lin.weight.detach()


# --------------------------------------------------------------------------- N:M
def test_2_4_mask_by_hand():
    # row 0: |0.1 0.4 0.3 0.2| -> zero 0.1, 0.2; |0.9 0.05 0.6 0.7| -> zero 0.05, 0.6
    # row 1: |1.0 0.5 0.2 0.8| -> zero 0.5, 0.2; |0.3 0.1 0.25 0.4| -> zero 0.1, 0.25
    expected = torch.tensor([[0.0, -0.4, 0.3, 0.0, -0.9, 0.0, 0.0, -0.7],
                             [1.0, 0.0, 0.0, 0.8, 0.3, 0.0, 0.0, 0.4]])
    assert torch.equal(prune(W, pattern="2:4"), expected)


def test_4_8_mask_by_hand():
    # row 0's four smallest |w|: 0.05, 0.1, 0.2, 0.3; row 1's: 0.1, 0.2, 0.25, 0.3
    expected = torch.tensor([[0.0, -0.4, 0.0, 0.0, -0.9, 0.0, 0.6, -0.7],
                             [1.0, 0.5, 0.0, 0.8, 0.0, 0.0, 0.0, 0.4]])
    assert torch.equal(prune(W, pattern="4:8"), expected)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_n_m_has_exactly_n_zeros_in_every_group_and_they_are_the_smallest(pattern):
    n, m = parse_pattern(pattern)
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    out = prune(w, pattern=pattern)
    groups_in, groups_out = w.view(24, -1, m), out.view(24, -1, m)
    assert ((groups_out == 0).sum(-1) == n).all()
    for r in range(24):  # the zeroed ones are the n smallest |w| of the group, the others unchanged
        for g in range(64 // m):
            vals = groups_in[r, g].tolist()
            smallest = sorted(range(m), key=lambda j: abs(vals[j]))[:n]
            for j in range(m):
                assert groups_out[r, g, j].item() == (0.0 if j in smallest else vals[j])


def test_n_m_needs_m_to_divide_the_input_size():
    with pytest.raises(FeatsurvError, match=r"'2:4'.*multiple of 4.*6 inputs"):
        prune(torch.randn(3, 6), pattern="2:4")


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "2-4", "a:b", "2:", "structured"])
def test_bad_patterns_are_refused_with_the_allowed_values(bad):
    spec = {p.name: p for p in Pruning.params}["pattern"]
    with pytest.raises(FeatsurvError, match="N:M") as err:
        spec.parse(bad, "pruning")
    assert repr(bad) in str(err.value)


def test_n_m_refuses_options_that_only_apply_to_unstructured_pruning():
    with pytest.raises(FeatsurvError, match=r"sparsity=0\.3.*does not apply"):
        prune(W, pattern="2:4", sparsity=0.3)
    with pytest.raises(FeatsurvError, match="ties=prune"):
        prune(W, pattern="2:4", ties="prune")


def test_search_knob_and_labels():
    c = Pruning()
    grid = expand_grid(c.params, {"pattern": ["2:4", "unstructured"], "method": ["wanda"]}, "pruning")
    assert [c.search_knob(p) for p in grid] == [None, "sparsity"]
    assert [c.label(p) for p in grid] == ["pruning 2:4 wanda", "pruning s=0.5 wanda"]
    assert c.label({"sparsity": 0.3}) == "pruning s=0.3"
    assert c.label({"sparsity": 0.175, "count": "floor", "ties": "prune"}) == "pruning s=0.175 count=floor ties=prune"
    assert c.label({"sparsity": 0.3, "scope": "global"}) == "pruning s=0.3 global"
    assert c.label({"sparsity": 0.3, "scope": "matrix"}) == "pruning s=0.3"  # magnitude's own group
    assert c.label({"sparsity": 0.3, "scope": "matrix", "method": "wanda"}) == "pruning s=0.3 wanda matrix"
    assert c.label({"sparsity": 0.3, "scope": "row", "method": "wanda"}) == "pruning s=0.3 wanda"
    assert c.needs_calibration_for({"method": "wanda"}) and not c.needs_calibration_for({"sparsity": 0.3})


# --------------------------------------------------------------------------- count and ties
def test_count_and_ties_on_a_case_with_ties():
    # |w| sorted: 0.5, 1, 1, 1, 1, 2, 3, 4 (n = 8); s = 0.45: s*n = 3.6, floor 3, round 4
    w = torch.tensor([[4.0, -1.0, 2.0, 1.0, -1.0, 3.0, 1.0, 0.5]])
    n_zero = {}
    for count in ("floor", "round"):
        for ties in ("keep", "prune"):
            out = prune(w, sparsity=0.45, count=count, ties=ties)
            n_zero[count, ties] = int((out == 0).sum())
            assert out[0, 7] == 0 and (out[out != 0].abs() >= 1).all()  # 0.5 always goes, nothing above 1 does
            assert torch.equal(out[0, [0, 2, 5]], w[0, [0, 2, 5]])
    # k-th smallest is 1 for k = 3 and 4; prune every weight tied with it: 0.5 and the four 1s
    assert n_zero == {("floor", "keep"): 3, ("round", "keep"): 4, ("floor", "prune"): 5, ("round", "prune"): 5}


def reference_prune(w, sparsity):
    """The reference study's pruning, restated: k = floor(s*n); zero every |w| <= the k-th smallest."""
    flat = w.abs().flatten()
    k = int(math.floor(sparsity * flat.numel()))
    if k <= 0:
        return w.clone()
    thresh = torch.kthvalue(flat, k).values
    return w * (w.abs() > thresh).to(w.dtype)


@pytest.mark.parametrize("sparsity", [0.175, 0.1625, 0.5])
def test_floor_and_ties_match_the_reference_on_bf16_per_q_k_v(sparsity):
    torch.manual_seed(6)
    n_heads, d_head, d_in = 4, 6, 40
    w = (torch.randn(3 * n_heads * d_head, d_in) * 0.02).to(torch.bfloat16)  # bf16: many tied |w|
    lin = lin_with(w)
    target = WeightTarget("qkv", lin, "qkv", 0, (n_heads, 3, d_head))
    Pruning().compress([target], {"sparsity": sparsity, "count": "floor", "ties": "prune"})
    out, parts = lin.weight.detach().view(n_heads, 3, d_head, d_in), w.view(n_heads, 3, d_head, d_in)
    extra = 0
    for p in range(3):
        assert torch.equal(out[:, p], reference_prune(parts[:, p].contiguous(), sparsity))
        extra += int((out[:, p] == 0).sum()) - math.floor(sparsity * parts[:, p].numel())
    assert extra > 0  # ties were there to prune


def test_ties_keep_prunes_exactly_k_on_bf16():
    torch.manual_seed(7)
    w = (torch.randn(30, 40) * 0.02).to(torch.bfloat16)
    for count, k in (("floor", math.floor(0.33 * 1200)), ("round", round(0.33 * 1200))):
        out = prune(w, sparsity=0.33, count=count)
        assert int((out == 0).sum()) == k
    out = prune(w, sparsity=0.33, scope="row", count="floor", ties="prune")  # per row: each row's own threshold
    for r in range(30):
        assert torch.equal(out[r], reference_prune(w[r], 0.33))


# --------------------------------------------------------------------------- Wanda
# |W| * ||X_j||: W = [[1, -2, 0.5, 4], [3, 0.2, -1, 0.1]], column norms of X: 5, 1, 2, 0.1
WANDA_W = torch.tensor([[1.0, -2.0, 0.5, 4.0], [3.0, 0.2, -1.0, 0.1]])
WANDA_X = torch.tensor([[3.0, 0.0, 0.0, 0.1], [4.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])


class ListTokens:
    """A stand-in calibration set whose batches are the module's inputs themselves."""

    def __init__(self, *batches):
        self._batches = batches

    def batches(self, batch_size):
        for b in self._batches:
            yield b, torch.ones(b.shape[:-1], dtype=torch.bool)


def calibrated(weight, x_batches):
    lin = lin_with(weight)
    model = SimpleNamespace(model=lin, device="cpu", adapter=SimpleNamespace(forward=lambda m, ids: m(ids)))
    target = WeightTarget("w", lin, "mlp_in")
    comp = Pruning()
    comp.calibrate(model, [target], ListTokens(*x_batches))
    return comp, lin, target


def test_wanda_norms_and_mask_by_hand():
    comp, lin, target = calibrated(WANDA_W, [WANDA_X[:2].unsqueeze(0), WANDA_X[2:].unsqueeze(0)])
    torch.testing.assert_close(comp._norms["w"], torch.tensor([5.0, 1.0, 2.0, 0.1]))
    assert comp.calibration_tokens == 3
    # scores row 0: 5, 2, 1, 0.4 -> zero the 0.5 and the 4 (magnitude would zero 0.5 and 1);
    # row 1: 15, 0.2, 2, 0.01 -> zero the 0.2 and the 0.1
    comp.compress([target], {"method": "wanda", "sparsity": 0.5})
    assert torch.equal(lin.weight.detach(), torch.tensor([[1.0, -2.0, 0.0, 0.0], [3.0, 0.0, -1.0, 0.0]]))
    assert torch.equal(prune(WANDA_W, sparsity=0.5, scope="row"),
                       torch.tensor([[0.0, -2.0, 0.0, 4.0], [3.0, 0.0, -1.0, 0.0]]))
    # 1:2 with Wanda: pairs (5, 2) (1, 0.4) and (15, 0.2) (2, 0.01)
    with torch.no_grad():
        lin.weight.copy_(WANDA_W)
    comp.compress([target], {"method": "wanda", "pattern": "1:2"})
    assert torch.equal(lin.weight.detach(), torch.tensor([[1.0, 0.0, 0.5, 0.0], [3.0, 0.0, -1.0, 0.0]]))


def test_wanda_without_calibration_is_a_clear_error():
    with pytest.raises(FeatsurvError, match="calibrate"):
        prune(WANDA_W, method="wanda", sparsity=0.5)


def test_wanda_refuses_a_module_whose_input_is_not_the_matrix_input():
    lin = torch.nn.Linear(4, 3, bias=False)
    model = SimpleNamespace(model=lin, device="cpu", adapter=SimpleNamespace(forward=lambda m, ids: m(ids)))
    target = WeightTarget("t", lin, "o", tensor=lin.weight.detach().T)  # a [4, 3] layout: 3 inputs
    with pytest.raises(FeatsurvError, match=r"'t'.*\[\.\.\., 3\]"):
        Pruning().calibrate(model, [target], ListTokens(torch.randn(1, 2, 4)))


def test_wanda_refuses_a_target_that_is_not_its_modules_weight():
    block = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))  # no weight of its own: input unknown
    model = SimpleNamespace(model=block, device="cpu", adapter=SimpleNamespace(forward=lambda m, ids: m(ids)))
    copy = WeightTarget("o", block, "o", tensor=block[0].weight.detach().clone(), write_back=lambda w: None)
    with pytest.raises(FeatsurvError, match=r"'o'.*not the weight of its module \(Sequential\)"):
        Pruning().calibrate(model, [copy], ListTokens(torch.randn(1, 2, 4)))


def gpt_neox_inputs(model, ids):
    """Each GPT-NeoX matrix's input, rebuilt from hidden states (not from hooks on those modules)."""
    out = {}
    captured = {}
    handles = [layer.attention.register_forward_hook(
        lambda m, a, o, i=i: captured.__setitem__(i, o[0].detach())) for i, layer in enumerate(model.gpt_neox.layers)]
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        for h in handles:
            h.remove()
        for i, layer in enumerate(model.gpt_neox.layers):
            attn_in = layer.input_layernorm(hidden[i])
            mlp_in = layer.post_attention_layernorm(hidden[i])
            dense = layer.attention.dense  # its output is dense(z) + b: solve for z
            z = torch.linalg.solve(dense.weight, (captured[i] - dense.bias).reshape(-1, dense.weight.shape[0]).T).T
            out[f"gpt_neox.layers.{i}.attention.query_key_value"] = attn_in
            out[f"gpt_neox.layers.{i}.attention.dense"] = z
            out[f"gpt_neox.layers.{i}.mlp.dense_h_to_4h"] = mlp_in
            out[f"gpt_neox.layers.{i}.mlp.dense_4h_to_h"] = layer.mlp.act(layer.mlp.dense_h_to_4h(mlp_in))
    return {k: v.reshape(-1, v.shape[-1]) for k, v in out.items()}


@pytest.fixture(scope="module")
def tiny_calibrated(tiny_models, tiny_corpus):
    from featsurv.loading import load_model
    from featsurv.plugins import get_registry
    from featsurv.tokens import build_tokens

    loaded = load_model(get_registry(), str(tiny_models["gpt_neox"]))
    docs = tiny_corpus.read_text().split("\n\n")
    calib = build_tokens(loaded.tokenizer, docs[::-1], dataset="calib", n_tokens=320, context=32, prepend_bos=True)
    targets = loaded.adapter.compressible_weights(loaded.model)
    comp = Pruning()
    comp.calibrate(loaded, targets, calib)
    return loaded, targets, calib, comp


def test_calibrate_on_a_tiny_model_through_the_host_forward(tiny_calibrated):
    loaded, targets, calib, comp = tiny_calibrated
    assert comp.calibration_tokens == calib.n_contexts * calib.context == 320  # every position, BOS included
    inputs = {}
    for ids, _ in calib.batches(4):
        for name, x in gpt_neox_inputs(loaded.model, ids).items():
            inputs[name] = torch.cat([inputs[name], x]) if name in inputs else x
    assert {t.name for t in targets} == set(inputs) == set(comp._norms)
    for name, x in inputs.items():
        torch.testing.assert_close(comp._norms[name], x.double().norm(dim=0).float(), rtol=2e-4, atol=1e-5)


def test_wanda_on_a_tiny_model_is_the_published_score(tiny_calibrated):
    loaded, targets, _calib, comp = tiny_calibrated
    before = [t.weight.detach().clone() for t in targets]
    try:
        comp.compress(targets, {"method": "wanda", "sparsity": 0.5})
        for t, w in zip(targets, before):
            score = (w.abs() * comp._norms[t.name].reshape(1, -1)).numpy()
            k = round(0.5 * w.shape[1])
            expected = w.clone().numpy()
            for r in range(w.shape[0]):  # prune within each output row (Sun et al. 2023)
                expected[r, np.argsort(score[r], kind="stable")[:k]] = 0
            assert np.array_equal(t.weight.detach().numpy(), expected), t.name
        assert not all(torch.equal(t.weight, w) for t, w in zip(targets, before))
    finally:
        with torch.no_grad():
            for t, w in zip(targets, before):
                t.weight.copy_(w)


# --------------------------------------------------------------------------- the magnitude alias
def test_magnitude_is_an_alias_of_pruning():
    from featsurv.plugins import get_registry

    reg = get_registry()
    assert reg.get("compressors", "magnitude") is reg.get("compressors", "pruning")
    assert "pruning" in reg.names("compressors") and "magnitude" not in reg.names("compressors")


def test_magnitude_and_pruning_give_identical_results_in_an_audit(tiny_models, tiny_sae, tiny_corpus):
    from featsurv.audit import AuditSession, make_options

    opts = make_options(model=str(tiny_models["gpt_neox"]), saes=[str(tiny_sae(tiny_models["gpt_neox"]))],
                        dataset=str(tiny_corpus), n_tokens=512, context=32, batch_size=8, bootstrap=0)
    session = AuditSession(opts)
    session.prepare()
    comp = session.registry.get("compressors", "pruning")
    outs = {}
    for name, raw in (("magnitude", {"sparsity": ["0.3"]}), ("pruning", {"sparsity": ["0.3"], "method": ["magnitude"]})):
        (params,) = expand_grid(comp.params, raw, name)
        outs[name] = session.run(name, params)
    a, b = outs["magnitude"], outs["pruning"]
    assert a.label == b.label == "pruning s=0.3"
    assert a.target == b.target and a.target > session.baseline["perplexity"]
    ra = a.features["blocks.1.hook_resid_post"]["survival"].per_feature["r"]
    rb = b.features["blocks.1.hook_resid_post"]["survival"].per_feature["r"]
    assert np.array_equal(ra, rb) and (ra[np.isfinite(ra)] < 1).any()


def test_2_4_on_every_weight_of_a_tiny_model(tiny_calibrated):
    loaded, targets, _calib, comp = tiny_calibrated
    before = [t.weight.detach().clone() for t in targets]
    try:
        for method in ("magnitude", "wanda"):
            comp.compress(targets, {"pattern": "2:4", "method": method})
            for t in targets:
                zeros = (t.weight.detach().reshape(t.weight.shape[0], -1, 4) == 0).sum(-1)
                assert (zeros == 2).all(), (method, t.name)
            with torch.no_grad():
                for t, w in zip(targets, before):
                    t.weight.copy_(w)
    finally:
        with torch.no_grad():
            for t, w in zip(targets, before):
                t.weight.copy_(w)


def test_cli_audit_with_a_pattern_and_a_bad_pattern(cli_base_args, tmp_path):
    import json

    from click.testing import CliRunner

    from featsurv.cli import cli

    bad = CliRunner().invoke(cli, ["audit", "pruning", "-p", "pattern=4:2", *cli_base_args, "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'4:2'" in bad.output and "N:M" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()
    out = tmp_path / "ok"
    res = CliRunner().invoke(cli, ["audit", "magnitude", "-p", "pattern=2:4,4:8", *cli_base_args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [e["label"] for e in summary["results"]] == ["pruning 2:4", "pruning 4:8"]
    assert all(e["perplexity_change"] != 0 and e["mean_r"] < 1 for e in summary["results"]), summary["results"]
