"""The audit token set and perplexity against Hugging Face's own loss."""
import json
import math

import pytest
import torch
from click.testing import CliRunner
from featsurv_plugins.metric_perplexity import WindowNLL, sliding_perplexity, summed_cross_entropy
from transformers import AutoModelForCausalLM, AutoTokenizer

from featsurv.cli import cli
from featsurv.errors import FeatsurvError
from featsurv.tokens import build_tokens


def run(args):
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def tok(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["gpt_neox"])


def test_contexts_with_bos_exclude_special_positions(tok, tiny_corpus):
    docs = tiny_corpus.read_text().split("\n\n")
    ts = build_tokens(tok, docs, dataset="x", n_tokens=320, context=32, prepend_bos=True)
    assert ts.contexts.shape == (10, 32)
    assert (ts.contexts[:, 0] == tok.bos_token_id).all()
    assert not ts.keep[:, 0].any()
    eos_positions = ts.contexts == tok.eos_token_id
    assert not ts.keep[eos_positions].any()
    assert ts.n_tokens == int((~eos_positions).sum())
    # the stream is the contexts without the inserted BOS
    assert torch.equal(ts.contexts[:, 1:].reshape(-1), ts.stream)


def test_text_join_without_bos_uses_every_position(tok, tiny_corpus):
    docs = tiny_corpus.read_text().split("\n\n")
    ts = build_tokens(tok, docs, dataset="x", n_tokens=256, context=64, prepend_bos=False,
                      exclude_special=False, join="text")
    assert ts.n_tokens == 256
    expected = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"][:256]
    assert ts.contexts.reshape(-1).tolist() == expected


def test_too_short_and_empty_datasets(tok):
    with pytest.raises(FeatsurvError, match="too short"):
        build_tokens(tok, ["just a few words"], dataset="tiny", n_tokens=512, context=64, prepend_bos=True)
    with pytest.raises(FeatsurvError, match="too short"):
        build_tokens(tok, [], dataset="empty", n_tokens=64, context=64, prepend_bos=True)


def test_window_perplexity_matches_hf_loss(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(0))
    acc = WindowNLL()
    with torch.no_grad():
        acc.update(model(ids[:2]).logits, ids[:2])
        acc.update(model(ids[2:]).logits, ids[2:])
        hf_loss = model(ids, labels=ids).loss.item()  # mean over all 3 * 15 predictions
    assert acc.result()["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-5)


def test_window_nll_scores_in_place_like_a_hand_log_softmax():
    """In-place scoring (last position ignored) against the shifted slice by hand, both averagings;
    bf16 logits are scored in float32; the logits are not modified."""
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(b, 9, 40, generator=gen), torch.randint(0, 40, (b, 9), generator=gen)) for b in (2, 3)]
    token, batch = WindowNLL("token"), WindowNLL("batch")
    per_batch, total, count = [], 0.0, 0
    for logits, ids in batches:
        before = logits.clone()
        token.update(logits, ids)
        batch.update(logits.to(torch.bfloat16), ids)
        assert torch.equal(logits, before)
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None]).sum().item()
        total, count = total + nll, count + ids[:, 1:].numel()
        bf = torch.log_softmax(logits.to(torch.bfloat16)[:, :-1].double(), -1)
        per_batch.append(-bf.gather(-1, ids[:, 1:, None]).sum().item() / ids[:, 1:].numel())
    res = token.result()
    assert res["n_predicted"] == count == 2 * 8 + 3 * 8
    assert res["nll"] == pytest.approx(total / count, rel=1e-6)
    assert batch.result()["nll"] == pytest.approx(sum(per_batch) / 2, rel=1e-6)
    assert math.isnan(WindowNLL().result()["perplexity"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 64, 1000])
def test_summed_cross_entropy_is_torch_cross_entropy_bit_for_bit(dtype, chunk_rows):
    """Row chunks of any size (one row, uneven, one chunk for all) give exactly torch's summed
    cross-entropy of the float32 logits, with ignored rows anywhere (first, inside, last)."""
    gen = torch.Generator().manual_seed(chunk_rows)
    rows, vocab = 64, 1000
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    target[[0, 5, 6, 31, 63]] = -100
    want = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")
    got = summed_cross_entropy(logits, target, chunk_bytes=chunk_rows * 4 * vocab)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # and against an independent float64 hand computation
    hand = -torch.log_softmax(logits.double(), -1)[target >= 0].gather(1, target[target >= 0, None]).sum()
    assert got.item() == pytest.approx(hand.item(), rel=1e-6)


@pytest.mark.parametrize("averaging", ["batch", "token"])
def test_window_nll_in_the_logits_dtype_is_transformer_lens_loss(averaging):
    """``loss_dtype="logits"``: each batch's loss is TransformerLens's ``lm_cross_entropy_loss`` of the
    bfloat16 logits, bit for bit (a bfloat16 number), not the float32 cross-entropy."""
    from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(b, 33, 300, generator=gen).mul(4).to(torch.bfloat16),
                torch.randint(0, 300, (b, 33), generator=gen)) for b in (1, 2, 1)]
    acc, f32 = WindowNLL(averaging, "logits"), WindowNLL(averaging)
    tl = []
    for logits, ids in batches:
        acc.update(logits, ids)
        f32.update(logits, ids)
        tl.append((lm_cross_entropy_loss(logits, ids).item(), ids[:, 1:].numel()))
    if averaging == "batch":
        want = sum(loss for loss, _ in tl) / len(tl)
    else:
        want = sum(loss * n for loss, n in tl) / sum(n for _, n in tl)
    assert acc.result()["nll"] == pytest.approx(want, rel=1e-15)
    assert acc.result()["nll"] != f32.result()["nll"]
    assert f32.result()["nll"] == pytest.approx(want, abs=0.05)  # the same loss up to bfloat16 rounding


def test_sliding_perplexity_matches_a_hand_loop(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neox"]).eval()
    stream = torch.randint(0, model.config.vocab_size, (50,), generator=torch.Generator().manual_seed(1))
    out = sliding_perplexity(model, stream, window=20, stride=8)
    # by hand: every token t >= 1 is scored once, with context starting at the window that first covers it
    nll, count = 0.0, 0
    with torch.no_grad():
        prev_end = 0
        for begin in range(0, 50, 8):
            end = min(begin + 20, 50)
            logp = torch.log_softmax(model(stream[begin:end][None]).logits[0].float(), -1)
            for pos in range(max(prev_end, begin + 1), end):
                nll -= logp[pos - begin - 1, stream[pos]].item()
                count += 1
            prev_end = end
            if end == 50:
                break
    assert out["n_predicted"] == count == 49
    assert out["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_sliding_perplexity_defaults_fit_the_model(base, tmp_path):
    out = tmp_path / "s"
    res = run(["audit", "rtn", "-p", "bits=8", *base, "--perplexity", "sliding", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["derived"]["metrics"]["perplexity"] == {"window": 256, "stride": 64}
    assert run_json["metric_options"]["perplexity"]["window"] is None  # derived, not written back

