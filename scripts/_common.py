"""Shared helpers for the scripts that rebuild featsurv's embedded default artefacts.

These scripts are build tooling, not part of the installed package: they are run
from the repository root as ``.venv/bin/python scripts/<name>.py``.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "featsurv" / "data"

DEFAULT_TRAIN_TXT = REPO_ROOT / "build" / "corpus" / "train.txt"
DEFAULT_HELDOUT_TXT = DATA_DIR / "corpus" / "heldout.txt"
DEFAULT_MODEL_DIR = DATA_DIR / "models" / "featsurv-tiny"
DEFAULT_SAE_ROOT = DATA_DIR / "saes" / "featsurv-tiny"

MODEL_NAME = "featsurv-tiny"
CONTEXT_SIZE = 128
SPECIAL_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"

_T0 = time.time()


def log(*parts: object) -> None:
    """Progress message on stderr, prefixed with the elapsed wall time."""
    print(f"[{time.time() - _T0:7.1f}s]", *parts, file=sys.stderr, flush=True)


def rel(path: Path | str) -> str:
    """A path relative to the repository root when possible (for printing and metadata)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def seed_everything(seed: int, threads: int = 2) -> None:
    import numpy as np
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def read_documents(path: Path | str) -> list[str]:
    """Documents of a corpus file: separated by one blank line, no blank line inside."""
    text = Path(path).read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def token_stream(tokenizer, docs: Sequence[str]) -> list[int]:
    """All documents tokenized (without special tokens) and joined by ``<|endoftext|>``.

    The stream begins with the end-of-text token too, so each document is preceded
    by it, as in Pythia's pre-training data.
    """
    eot = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    encoded = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in encoded:
        stream.append(eot)
        stream.extend(ids)
    return stream


def make_contexts(tokenizer, docs: Sequence[str], context_size: int = CONTEXT_SIZE):
    """BOS-prefixed contexts of exactly ``context_size`` tokens, as a LongTensor [n, ctx].

    The token stream (see :func:`token_stream`) is cut into consecutive pieces of
    ``context_size - 1`` tokens and every piece gets the BOS token (``<|endoftext|>``,
    id 0) in front: position 0 of every context is BOS. The incomplete tail is dropped.
    """
    import torch

    bos = tokenizer.bos_token_id
    body = context_size - 1
    stream = token_stream(tokenizer, docs)
    n = len(stream) // body
    t = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), t], dim=1)


def batched(seq, size: int) -> Iterable:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def mean_nll(model, contexts, batch_size: int = 64) -> float:
    """Mean next-token NLL (nats) over all predicted positions (1..ctx-1) of the contexts."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in batched(contexts, batch_size):
            logits = model(input_ids=batch).logits[:, :-1].float()
            tgt = batch[:, 1:]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += tgt.numel()
    return total / count


def perplexity(nll: float) -> float:
    return math.exp(nll)


def hook_layer_index(hook_name: str) -> int:
    """``blocks.{L}.hook_resid_post`` -> L."""
    parts = hook_name.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[2] != "hook_resid_post":
        raise ValueError(f"unsupported hook name {hook_name!r}")
    return int(parts[1])


def collect_resid_post(model, contexts, layers: Sequence[int], special_ids: Sequence[int],
                       batch_size: int = 64):
    """Residual-stream activations after each given layer, non-special positions only.

    ``blocks.{L}.hook_resid_post`` is the output (first element if a tuple) of
    ``model.gpt_neox.layers[L]``. Returns ``{L: FloatTensor [n_tokens, d_model]}``
    and the flat token ids of the kept positions; positions holding a special token
    (BOS/EOS ``<|endoftext|>`` and padding) are dropped.
    """
    import torch

    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[layer] = out.detach()

        return hook

    handles = [model.gpt_neox.layers[L].register_forward_hook(make_hook(L)) for L in layers]
    out: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    kept_ids: list[torch.Tensor] = []
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long)
    model.eval()
    try:
        with torch.no_grad():
            for batch in batched(contexts, batch_size):
                model.gpt_neox(input_ids=batch)
                keep = ~torch.isin(batch, special)
                kept_ids.append(batch[keep])
                for L in layers:
                    out[L].append(captured[L][keep].float().clone())
    finally:
        for h in handles:
            h.remove()
    return {L: torch.cat(v) for L, v in out.items()}, torch.cat(kept_ids)
