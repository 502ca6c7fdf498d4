"""Metric ``perplexity``: ``window`` (the audit contexts) or ``sliding`` (window W, stride S).

``window`` reuses the logits of the audit forward pass: exp of the mean NLL of every next-token
prediction inside each context. ``sliding`` runs its own passes over the token stream with the
Hugging Face fixed-length procedure: every token is scored once, with up to W-1 tokens of context.
"""
from __future__ import annotations

import math
from typing import Any

from featsurv import FeatsurvError, LoadedModel, Metric, ModelAccumulator, hookimpl

MODES = ("window", "sliding")


class WindowNLL(ModelAccumulator):
    def __init__(self) -> None:
        self.nll = 0.0
        self.count = 0

    def update(self, logits, input_ids) -> None:
        import torch.nn.functional as F

        pred = logits[:, :-1].float()
        target = input_ids[:, 1:]
        loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
        self.nll += float(loss)
        self.count += target.numel()

    def result(self) -> dict[str, Any]:
        return {"perplexity": math.exp(self.nll / self.count) if self.count else float("nan"),
                "nll": self.nll / max(self.count, 1), "n_predicted": self.count}


def sliding_perplexity(model: Any, stream: Any, window: int, stride: int, bos_id: int | None = None,
                       device: str = "cpu", forward: Any = None) -> dict[str, Any]:
    """Hugging Face fixed-length perplexity over a 1-D token stream (optionally one leading BOS)."""
    import torch

    if bos_id is not None:
        stream = torch.cat([torch.tensor([bos_id], dtype=stream.dtype), stream])
    n = stream.numel()
    nll, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            trg_len = end - prev_end
            ids = stream[begin:end].unsqueeze(0).to(device)
            labels = ids.clone()
            labels[:, :-trg_len] = -100
            logits = (forward(model, ids) if forward else model(ids).logits).float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum")
            nll += float(loss)
            count += int((shift_labels != -100).sum())
            prev_end = end
            if end == n:
                break
    return {"perplexity": math.exp(nll / count) if count else float("nan"), "nll": nll / max(count, 1),
            "n_predicted": count}


class Perplexity(Metric):
    name = "perplexity"
    description = "Perplexity on the audit tokens: window (same pass) or sliding (window W, stride S)"

    def _mode(self, options: dict[str, Any]) -> str:
        mode = options.get("perplexity_mode", "window")
        if mode not in MODES:
            raise FeatsurvError(f"Unknown perplexity mode {mode!r}", allowed=MODES)
        return mode

    def model_accumulator(self, options: dict[str, Any]) -> ModelAccumulator | None:
        return WindowNLL() if self._mode(options) == "window" else None

    def evaluate(self, model: LoadedModel, tokens: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        if self._mode(options) != "sliding":
            return None
        window = int(options.get("ppl_window") or 2048)
        stride = int(options.get("ppl_stride") or max(1, window // 4))
        if not 0 < stride <= window:
            raise FeatsurvError(f"Bad sliding perplexity stride {stride} for window {window}",
                                allowed="0 < stride <= window")
        return sliding_perplexity(model.model, tokens.stream, window, stride,
                                  tokens.bos_id if tokens.prepend_bos else None, model.device,
                                  model.adapter.forward)


@hookimpl
def register_metrics(register):
    register(Perplexity())
