"""Train featsurv's embedded default model ``featsurv-tiny`` and its tokenizer.

1. A byte-level BPE tokenizer (``tokenizers``) is trained on the train split of the
   corpus (``scripts/build_corpus.py``). Token 0 is ``<|endoftext|>`` (BOS, EOS and
   UNK, as in Pythia), token 1 is ``<|padding|>`` (the pad token). Like Pythia's, the
   tokenizer adds no BOS/EOS by itself.
2. A Pythia-architecture ``GPTNeoXForCausalLM`` is trained from scratch on contexts of
   128 tokens, each starting with the BOS token (see ``_common.make_contexts``).
3. Held-out perplexity: exp of the mean next-token NLL over the 128-token BOS-prefixed
   contexts of ``featsurv/data/corpus/heldout.txt``.

Everything is seeded; bit-exact reproduction is only expected with the same torch
version on the same kind of CPU, with the same thread count (2).

Usage (from the repository root):
    .venv/bin/python scripts/train_model.py [--train P] [--heldout P] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CONTEXT_SIZE,
    DEFAULT_HELDOUT_TXT,
    DEFAULT_MODEL_DIR,
    DEFAULT_TRAIN_TXT,
    MODEL_NAME,
    PAD_TOKEN,
    SPECIAL_TOKEN,
    log,
    make_contexts,
    mean_nll,
    read_documents,
    rel,
    seed_everything,
    token_stream,
)


def train_tokenizer(train_docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_docs, trainer=trainer, length=len(train_docs))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    assert fast.convert_tokens_to_ids(SPECIAL_TOKEN) == 0
    assert fast.convert_tokens_to_ids(PAD_TOKEN) == 1
    return fast


def build_model(vocab_size: int, args):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=args.d_model,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        intermediate_size=4 * args.d_model,
        hidden_act="gelu",
        max_position_embeddings=CONTEXT_SIZE,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        initializer_range=0.02,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        use_cache=True,
    )
    return GPTNeoXForCausalLM(config)


def lr_at(step: int, total: int, warmup: int, peak: float, floor_frac: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_contexts(stream, bos: int, offset: int, generator):
    """BOS-prefixed 128-token contexts of the stream read from ``offset``, shuffled."""
    import torch

    body = CONTEXT_SIZE - 1
    s = stream[offset:]
    n = s.numel() // body
    t = s[: n * body].view(n, body)
    t = torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)
    return t[torch.randperm(n, generator=generator)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, default=DEFAULT_TRAIN_TXT)
    ap.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT_TXT)
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--vocab-size", type=int, default=3072)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32, help="contexts per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=300)
    args = ap.parse_args(argv)

    seed_everything(args.seed, args.threads)
    import torch
    import torch.nn.functional as F

    if not args.train.exists():
        ap.error(f"{args.train} does not exist: run scripts/build_corpus.py first")
    train_docs = read_documents(args.train)
    heldout_docs = read_documents(args.heldout)
    log(f"corpus: {len(train_docs)} train docs, {len(heldout_docs)} held-out docs")

    t0 = time.time()
    tokenizer = train_tokenizer(train_docs, args.vocab_size)
    vocab = len(tokenizer)
    log(f"tokenizer: byte-level BPE, {vocab} tokens ({time.time() - t0:.1f}s)")

    stream = torch.tensor(token_stream(tokenizer, train_docs), dtype=torch.long)
    n_chars = sum(len(d) for d in train_docs)
    log(f"train stream: {stream.numel()} tokens ({n_chars / stream.numel():.2f} chars/token)")
    heldout_ctx = make_contexts(tokenizer, heldout_docs)
    log(f"held-out: {heldout_ctx.shape[0]} contexts of {CONTEXT_SIZE} tokens")

    model = build_model(vocab, args)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = (model.get_input_embeddings().weight.numel()
               + model.get_output_embeddings().weight.numel())
    log(f"model: {n_params} parameters ({n_params - n_embed} non-embedding)")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)
    bos = tokenizer.bos_token_id

    epoch, pos = 0, 0
    batches = epoch_contexts(stream, bos, 0, gen)
    tokens_seen = 0
    t_train = time.time()
    running = None
    for step in range(args.steps):
        if pos + args.batch_size > batches.shape[0]:
            epoch += 1
            offset = int(torch.randint(0, CONTEXT_SIZE - 1, (1,), generator=gen))
            batches = epoch_contexts(stream, bos, offset, gen)
            pos = 0
        batch = batches[pos : pos + args.batch_size]
        pos += args.batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.warmup, args.lr)
        model.train()
        logits = model(input_ids=batch).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += batch.numel()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 50 == 0:
            el = time.time() - t_train
            log(f"step {step + 1}/{args.steps} epoch {epoch} loss {running:.3f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {tokens_seen / el:.0f} tok/s")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            nll = mean_nll(model, heldout_ctx)
            log(f"  held-out nll {nll:.4f} ppl {math.exp(nll):.2f}")
    train_seconds = time.time() - t_train

    train_eval_ctx = make_contexts(tokenizer, train_docs)
    g2 = torch.Generator().manual_seed(0)
    train_eval_ctx = train_eval_ctx[torch.randperm(train_eval_ctx.shape[0], generator=g2)[:400]]
    train_nll = mean_nll(model, train_eval_ctx)
    heldout_nll = mean_nll(model, heldout_ctx)

    args.out.mkdir(parents=True, exist_ok=True)
    for stale in ("pytorch_model.bin", "training_args.bin"):
        (args.out / stale).unlink(missing_ok=True)
    model.eval()
    model.generation_config.pad_token_id = 1
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    for f in args.out.iterdir():
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600; package data must be world-readable
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())

    stats = {
        "model": MODEL_NAME,
        "parameters": n_params,
        "non_embedding_parameters": n_params - n_embed,
        "vocab_size": vocab,
        "train_tokens": int(stream.numel()),
        "chars_per_token": round(n_chars / stream.numel(), 3),
        "steps": args.steps,
        "batch_contexts": args.batch_size,
        "tokens_seen": tokens_seen,
        "epochs": round(tokens_seen / stream.numel(), 2),
        "train_seconds": round(train_seconds, 1),
        "train_nll_sample": round(train_nll, 4),
        "train_ppl_sample": round(math.exp(train_nll), 3),
        "heldout_contexts": int(heldout_ctx.shape[0]),
        "heldout_tokens_predicted": int(heldout_ctx.shape[0] * (CONTEXT_SIZE - 1)),
        "heldout_nll": round(heldout_nll, 4),
        "heldout_ppl": round(math.exp(heldout_nll), 3),
        "disk_bytes": size,
        "torch": torch.__version__,
    }
    print(json.dumps(stats, indent=2))
    log(f"saved {rel(args.out)} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
