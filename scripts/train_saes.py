"""Train the SAEs shipped with featsurv for ``featsurv-tiny``, with sae-lens's own trainer.

For each hook point ``blocks.{L}.hook_resid_post`` (the output of
``model.gpt_neox.layers[L]``, captured with a forward hook):

1. residual-stream activations are collected on the BOS-prefixed 128-token contexts of
   the TRAIN split (``build/corpus/train.txt``); positions holding a special token
   (the BOS ``<|endoftext|>`` at position 0, the ``<|endoftext|>`` separators between
   documents, padding) are dropped, as featsurv drops them from its statistics;
2. a sae-lens ``TrainingSAE`` (TopK by default) is trained by
   ``sae_lens.training.sae_trainer.SAETrainer`` from an in-memory, seeded, shuffling
   activation iterator (the trainer's ``data_provider``);
3. the training SAE is converted to the inference format with sae-lens's
   ``TrainingSAE.save_inference_model`` (``cfg.json`` + ``sae_weights.safetensors``)
   under ``featsurv/data/saes/featsurv-tiny/<hook>/``;
4. the saved SAE is loaded back with ``sae_lens.SAE.load_from_disk`` and evaluated on
   the held-out activations: explained variance, L0, dead-feature fraction (never fired
   on the held-out set) and the held-out NLL with the reconstruction spliced in.

Usage (from the repository root):
    .venv/bin/python scripts/train_saes.py [--model DIR] [--train P] [--heldout P] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
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
    DEFAULT_SAE_ROOT,
    DEFAULT_TRAIN_TXT,
    MODEL_NAME,
    collect_resid_post,
    hook_layer_index,
    log,
    make_contexts,
    mean_nll,
    read_documents,
    rel,
    seed_everything,
)

DEFAULT_HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def activation_batches(acts, batch_size: int, seed: int):
    """Endless iterator over shuffled [batch, d_in] batches (a new permutation per epoch)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[i : i + batch_size]]


def make_training_sae(args, d_in: int):
    if args.architecture == "topk":
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

        cfg = TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.d_sae,
            k=args.k,
            aux_loss_coefficient=1.0,
            rescale_acts_by_decoder_norm=True,
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            normalize_activations="expected_average_only_in",
            decoder_init_norm=0.1,
        )
        return TopKTrainingSAE(cfg)
    if args.architecture == "standard":
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

        cfg = StandardTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.d_sae,
            l1_coefficient=args.l1,
            l1_warm_up_steps=args.steps // 10,
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            normalize_activations="expected_average_only_in",
            decoder_init_norm=0.1,
        )
        return StandardTrainingSAE(cfg)
    raise ValueError(args.architecture)


def set_metadata(sae, hook_name: str, args, train_sha: str, n_train_tokens: int) -> None:
    md = sae.cfg.metadata
    md.model_name = MODEL_NAME
    md.model_class_name = "GPTNeoXForCausalLM"
    md.hook_name = hook_name
    md.hook_head_index = None
    md.context_size = CONTEXT_SIZE
    md.prepend_bos = True
    md.exclude_special_tokens = [0, 1]
    md.seqpos_slice = [None]
    md.dataset_path = "featsurv: Python stdlib docstrings + pydoc topics (train split)"
    md.dataset_trust_remote_code = False
    md.dataset_sha256 = train_sha
    md.dataset_tokens = n_train_tokens
    md.model_from_pretrained_kwargs = {}
    md.disable_concat_sequences = False
    md.sequence_separator_token = "eos"
    md.hook_module = f"gpt_neox.layers[{hook_layer_index(hook_name)}] output (first element if a tuple)"
    md.training_seed = args.seed


def evaluate(sae, acts, batch_size: int = 8192) -> dict:
    """Explained variance, L0 and dead-feature fraction of ``sae`` on ``acts``."""
    import torch

    sq_err = 0.0
    l0_sum = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    mean = acts.mean(0)
    total_var = (acts - mean).pow(2).sum().item()
    with torch.no_grad():
        for i in range(0, acts.shape[0], batch_size):
            x = acts[i : i + batch_size]
            f = sae.encode(x)
            x_hat = sae.decode(f)
            sq_err += (x_hat - x).pow(2).sum().item()
            nz = f > 0
            l0_sum += nz.sum().item()
            fired |= nz.any(0)
    n = acts.shape[0]
    return {
        "explained_variance": 1 - sq_err / total_var,
        "l0": l0_sum / n,
        "dead_fraction": 1 - fired.float().mean().item(),
        "n_dead": int((~fired).sum().item()),
        "tokens": n,
    }


def spliced_nll(model, sae, layer: int, contexts, special_ids) -> float:
    """Held-out NLL with the layer's output replaced by the SAE reconstruction at
    non-special positions (special positions keep their true activation)."""
    import torch

    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    state = {}

    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        keep = ~torch.isin(state["ids"], special)
        h2 = h.clone()
        h2[keep] = sae(h[keep]).to(h.dtype)
        return (h2, *output[1:]) if isinstance(output, tuple) else h2

    handle = model.gpt_neox.layers[layer].register_forward_hook(hook)

    class _Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            state["ids"] = input_ids
            return self.m(input_ids=input_ids)

    try:
        return mean_nll(_Wrap(model), contexts)
    finally:
        handle.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--train", type=Path, default=DEFAULT_TRAIN_TXT)
    ap.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT_TXT)
    ap.add_argument("--out", type=Path, default=DEFAULT_SAE_ROOT)
    ap.add_argument("--hooks", nargs="+", default=DEFAULT_HOOKS)
    ap.add_argument("--architecture", choices=["topk", "standard"], default="topk")
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--k", type=int, default=24, help="TopK: active features per token")
    ap.add_argument("--l1", type=float, default=5.0, help="standard: L1 coefficient")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    seed_everything(args.seed, args.threads)
    import torch
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not args.train.exists():
        ap.error(f"{args.train} does not exist: run scripts/build_corpus.py first")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    special_ids = list(tokenizer.all_special_ids)
    layers = [hook_layer_index(h) for h in args.hooks]

    train_text = args.train.read_bytes()
    train_sha = hashlib.sha256(train_text).hexdigest()
    train_ctx = make_contexts(tokenizer, read_documents(args.train))
    heldout_ctx = make_contexts(tokenizer, read_documents(args.heldout))
    log(f"collecting activations: {train_ctx.shape[0]} train / {heldout_ctx.shape[0]} "
        f"held-out contexts of {CONTEXT_SIZE} tokens, layers {layers}")
    train_acts, _ = collect_resid_post(model, train_ctx, layers, special_ids)
    heldout_acts, _ = collect_resid_post(model, heldout_ctx, layers, special_ids)
    n_train = train_acts[layers[0]].shape[0]
    log(f"{n_train} train / {heldout_acts[layers[0]].shape[0]} held-out activation vectors "
        f"(special-token positions excluded)")
    clean_nll = mean_nll(model, heldout_ctx)

    results = {}
    for hook_name, layer in zip(args.hooks, layers):
        torch.manual_seed(args.seed + layer)
        acts = train_acts[layer]
        sae = make_training_sae(args, acts.shape[1])
        set_metadata(sae, hook_name, args, train_sha, n_train)
        trainer_cfg = SAETrainerConfig(
            total_training_samples=args.steps * args.batch_size,
            train_batch_size_samples=args.batch_size,
            lr=args.lr,
            lr_end=args.lr / 10,
            lr_scheduler_name="cosineannealing",
            lr_warm_up_steps=args.steps // 20,
            lr_decay_steps=0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            device="cpu",
            autocast=False,
            dead_feature_window=200,
            feature_sampling_window=500,
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
            n_batches_for_norm_estimate=20,
        )
        provider = activation_batches(acts, args.batch_size, seed=args.seed + layer)
        trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
        log(f"[{hook_name}] training {args.architecture} SAE d_in={acts.shape[1]} "
            f"d_sae={args.d_sae} for {args.steps} steps x {args.batch_size}")
        t0 = time.time()
        trained = trainer.fit()
        seconds = time.time() - t0
        log(f"[{hook_name}] trained in {seconds:.0f}s; trainer-window L0 "
            f"{trained.cfg.metadata.l0:.1f}, dead {trained.cfg.metadata.num_dead_features}")

        out_dir = args.out / hook_name
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.iterdir():
            if stale.is_file():
                stale.unlink()
        trained.save_inference_model(out_dir)

        inference = SAE.load_from_disk(out_dir, device="cpu")
        inference.eval()
        ev_train = evaluate(inference, acts[: heldout_acts[layer].shape[0] * 4])
        ev = evaluate(inference, heldout_acts[layer])
        nll = spliced_nll(model, inference, layer, heldout_ctx, special_ids)
        ev.update(
            spliced_nll=nll,
            clean_nll=clean_nll,
            delta_nll=nll - clean_nll,
            train_sample_explained_variance=ev_train["explained_variance"],
            train_seconds=round(seconds, 1),
            architecture=inference.cfg.architecture(),
            d_sae=inference.cfg.d_sae,
        )
        results[hook_name] = ev
        # Record the held-out figures next to sae-lens's own metadata (free-form field).
        cfg_path = out_dir / "cfg.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json["metadata"]["featsurv_heldout_eval"] = {
            "explained_variance": round(ev["explained_variance"], 4),
            "l0": round(ev["l0"], 2),
            "dead_fraction": round(ev["dead_fraction"], 4),
            "tokens": ev["tokens"],
            "delta_nll_spliced": round(ev["delta_nll"], 4),
        }
        cfg_path.write_text(json.dumps(cfg_json, indent=2) + "\n")
        for f in out_dir.iterdir():
            f.chmod(0o644)  # safetensors writes 0600; package data must be world-readable
        SAE.load_from_disk(out_dir)  # still loads
        log(f"[{hook_name}] held-out: EV {ev['explained_variance']:.4f} L0 {ev['l0']:.1f} "
            f"dead {ev['n_dead']}/{ev['d_sae']} dNLL {ev['delta_nll']:+.4f} "
            f"(saved {rel(out_dir)})")

    print(json.dumps({"clean_heldout_nll": clean_nll,
                      "clean_heldout_ppl": math.exp(clean_nll),
                      "saes": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
