"""Metric ``perplexity``: ``window`` (the audit contexts) or ``sliding`` (window W, stride S).

``window`` reuses the logits of the audit forward pass: exp of the mean NLL of every next-token
prediction inside each context. ``sliding`` runs its own passes over the token stream with the
Hugging Face fixed-length procedure: every token is scored once, with up to W-1 tokens of context.
"""
from __future__ import annotations

import math
from typing import Any

from featsurv import Column, FeatsurvError, LoadedModel, Metric, ModelAccumulator, Param, hookimpl

MODES = ("window", "sliding")
AVERAGING = ("token", "batch")
LOSS_DTYPES = ("float32", "logits")


class WindowNLL(ModelAccumulator):
    """NLL of the audit contexts from the pass's own logits; sums stay on the device until ``result``."""

    def __init__(self, averaging: str = "token", loss_dtype: str = "float32") -> None:
        self.averaging = averaging
        self.loss_dtype = loss_dtype
        self.nll: Any = 0.0
        self.count = 0
        self.batch_losses: list[tuple[Any, int]] = []

    def update(self, logits, input_ids) -> None:
        import torch.nn.functional as F

        if self.loss_dtype == "logits":
            self._update_in_logits_dtype(logits, input_ids)
            return
        # Score the logits where they lie (no copy of the shifted [batch, ctx - 1, vocab] slice):
        # position t predicts token t + 1; each context's last position has no target (-100).
        b, c, v = logits.shape
        target = F.pad(input_ids[:, 1:], (0, 1), value=-100).reshape(-1)
        loss = summed_cross_entropy(logits.reshape(b * c, v), target)
        self._add(loss.detach().double(), b * (c - 1))  # no per-batch host synchronisation

    def _update_in_logits_dtype(self, logits, input_ids) -> None:
        """TransformerLens's ``lm_cross_entropy_loss`` as it runs: log_softmax, gather and mean in the
        logits' own dtype (bfloat16 for the reference's Gemma), one rounded mean per batch."""
        import torch.nn.functional as F

        log_probs = F.log_softmax(logits, dim=-1)
        predicted = log_probs[..., :-1, :].gather(dim=-1, index=input_ids[..., 1:, None])[..., 0]
        n = predicted.numel()
        # TL's ``-predicted.sum() / n_tokens``: a sum and a quotient each rounded to the logits' dtype
        self._add((-predicted.sum() / n).detach().double() * n, n)  # the rounded batch mean, as a sum

    def _add(self, loss, n: int) -> None:
        """One batch: its summed NLL (a float64 tensor, left on the device) over ``n`` predictions."""
        self.nll = loss + self.nll
        self.count += n
        self.batch_losses.append((loss, n))

    def result(self) -> dict[str, Any]:
        if self.averaging == "batch":
            means = [float(loss) / max(n, 1) for loss, n in self.batch_losses]
            nll = sum(means) / len(means) if means else 0.0
        else:
            nll = float(self.nll) / max(self.count, 1)
        return {"perplexity": math.exp(nll) if self.count else float("nan"), "nll": nll, "n_predicted": self.count}


#: bytes of float32 log-probabilities computed at once by :func:`summed_cross_entropy`: small on
#: the CPU (a chunk that stays in cache, no fresh pages per batch), large on an accelerator (fewer
#: kernel launches; its allocator reuses the block)
CHUNK_BYTES = 2 << 20
DEVICE_CHUNK_BYTES = 256 << 20


def summed_cross_entropy(logits: Any, target: Any, chunk_bytes: int | None = None) -> Any:
    """``F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="sum")``, bit for bit,
    without its ``[rows, vocab]`` float32 log-softmax: the log-probabilities are computed a few
    rows at a time (``chunk_bytes`` each; each row's log-softmax does not depend on the others)
    and only each row's target entry is kept; the sum is then ``nll_loss``'s own, over the same
    values in the same order. A whole batch's log-softmax (200 MiB for 1024 tokens of a
    50k vocabulary) would be a fresh allocation whose pages the kernel zeroes, every batch."""
    import torch
    import torch.nn.functional as F

    rows, vocab = logits.shape
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES if logits.device.type == "cpu" else DEVICE_CHUNK_BYTES
    step = max(1, chunk_bytes // (4 * max(vocab, 1)))
    picked = torch.empty(rows, 1, dtype=torch.float32, device=logits.device)
    safe = target.clamp(min=0)[:, None]  # ignored rows gather column 0; nll_loss skips them
    for i in range(0, rows, step):
        torch.gather(F.log_softmax(logits[i:i + step].float(), dim=-1), 1, safe[i:i + step], out=picked[i:i + step])
    return F.nll_loss(picked, torch.where(target == -100, target, 0), ignore_index=-100, reduction="sum")


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
    order = 10
    match_label = "perplexity"
    options = (
        Param("mode", str, "window", "window: the audit contexts; sliding: window W, stride S over the stream",
              choices=MODES, flag="perplexity"),
        Param("window", int, None, "sliding window (default min(2048, the model's positions))", minimum=2,
              flag="ppl-window"),
        Param("stride", int, None, "sliding stride (default window / 4)", minimum=1, flag="ppl-stride"),
        Param("averaging", str, "token", "token: exp of the mean NLL over all tokens; batch: exp of the mean of "
              "per-batch mean NLLs (the reference study's loop)", choices=AVERAGING),
        Param("loss_dtype", str, "float32", "float32: cross-entropy in float32 from the logits; logits: "
              "TransformerLens's loss in the logits' own dtype, one rounded mean per batch (the reference's "
              "bfloat16 Gemma)", choices=LOSS_DTYPES),
    )

    def setup(self, model: LoadedModel, tokens: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        if options["mode"] != "sliding":
            return None
        max_pos = model.adapter.max_positions(model.model)
        window = options["window"] or min(2048, max_pos or 2048)
        stride = options["stride"] or max(1, window // 4)
        if max_pos and window > max_pos:
            raise FeatsurvError(f"Sliding perplexity window {window} exceeds the {max_pos} positions of the model",
                                hint=f"Pass --ppl-window {max_pos} or less")
        if stride > window:
            raise FeatsurvError(f"Bad sliding perplexity stride {stride} for window {window}",
                                allowed="0 < stride <= window")
        return {"window": window, "stride": stride}

    def model_accumulator(self, options: dict[str, Any]) -> ModelAccumulator | None:
        return WindowNLL(options["averaging"], options["loss_dtype"]) if options["mode"] == "window" else None

    def evaluate(self, model: LoadedModel, tokens: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        if options["mode"] != "sliding":
            return None
        return sliding_perplexity(model.model, tokens.stream, options["window"], options["stride"],
                                  tokens.bos_id if tokens.prepend_bos else None, model.device,
                                  model.adapter.forward)

    def match_value(self, model_result: Any) -> float | None:
        return None if model_result is None else float(model_result["perplexity"])

    def baseline(self, fp: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        res = fp.model_metrics.get(self.name)
        if res is None:
            return None
        ppl = res["perplexity"]
        if not math.isfinite(ppl):
            raise FeatsurvError(f"The FP model's perplexity is {ppl} (not finite): a NaN or inf in its weights or "
                                "logits makes every comparison against it meaningless",
                                hint="Check the model's weights (e.g. the LM head), or load it in float32")
        return {"perplexity": ppl, "perplexity_mode": options["mode"]}

    def entry(self, entry, outcome, baseline, options):
        res = outcome.model_metrics.get(self.name)
        if res is None:
            return None
        ppl, base = float(res["perplexity"]), baseline.get("perplexity")
        return {"perplexity": ppl, "perplexity_change": (ppl / base - 1.0) if base else float("nan")}

    def columns(self) -> list[Column]:
        return [Column("perplexity", "ppl", "num"), Column("perplexity_change", "Δppl", "signed_pct", 8)]


@hookimpl
def register_metrics(register):
    register(Perplexity())
