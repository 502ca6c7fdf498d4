"""The audit token set: one fixed set of contexts, identical for FP and every configuration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .errors import FeatsurvError

JOINS = ("eos", "text")


@dataclass
class TokenSet:
    """Contexts ``[n_ctx, C]``, the positions kept for statistics, and the underlying stream."""

    contexts: Any  # LongTensor [n_ctx, C]
    keep: Any  # BoolTensor [n_ctx, C]
    stream: Any  # LongTensor [n_ctx * (C - bos)], the tokens without inserted BOS
    context: int
    prepend_bos: bool
    bos_id: int | None
    dataset: str

    @property
    def n_contexts(self) -> int:
        return int(self.contexts.shape[0])

    @property
    def n_tokens(self) -> int:
        """Number of positions kept for feature statistics (N)."""
        return int(self.keep.sum())

    def batches(self, batch_size: int) -> Iterator[tuple[Any, Any]]:
        for start in range(0, self.n_contexts, batch_size):
            yield self.contexts[start:start + batch_size], self.keep[start:start + batch_size]

    def n_batches(self, batch_size: int) -> int:
        return -(-self.n_contexts // batch_size)

    def split(self, n_contexts: int) -> tuple["TokenSet", "TokenSet"]:
        """The first ``n_contexts`` contexts and the rest: two disjoint token sets."""
        per_ctx = self.context - 1 if self.prepend_bos else self.context
        cut = n_contexts * per_ctx

        def part(rows: slice, stream: Any) -> "TokenSet":
            return TokenSet(self.contexts[rows], self.keep[rows], stream, self.context, self.prepend_bos,
                            self.bos_id, self.dataset)

        return part(slice(0, n_contexts), self.stream[:cut]), part(slice(n_contexts, None), self.stream[cut:])


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _token_stream(tokenizer: Any, documents: Iterable[str], need: int, join: str) -> list[int]:
    """Tokenize documents until ``need`` tokens are available (or the documents run out)."""
    if join not in JOINS:
        raise FeatsurvError(f"Unknown document join {join!r}", allowed=JOINS)
    ids: list[int] = []
    if join == "eos":
        eos = tokenizer.eos_token_id
        for doc in documents:
            if not doc.strip():
                continue
            if ids and eos is not None:
                ids.append(eos)
            ids.extend(_encode(tokenizer, doc))
            if len(ids) >= need:
                break
        return ids
    # "text": non-empty documents joined by blank lines and tokenized as one text (WikiText style)
    docs: list[str] = []
    chars = 0
    it = iter(documents)
    exhausted = False
    while True:
        for doc in it:
            if doc.strip():
                docs.append(doc)
                chars += len(doc) + 2
                if chars >= 6 * need:
                    break
        else:
            exhausted = True
        ids = _encode(tokenizer, "\n\n".join(docs))
        if len(ids) >= need or exhausted:
            return ids
        # under-estimated chars per token: read more
        chars = 0


def build_tokens(tokenizer: Any, documents: Iterable[str], *, dataset: str, n_tokens: int, context: int,
                 prepend_bos: bool, exclude_special: bool = True, join: str = "eos") -> TokenSet:
    """Cut ``n_tokens // context`` contexts of length ``context`` from the documents.

    With ``prepend_bos`` each context is BOS followed by ``context - 1`` stream tokens. Kept
    positions exclude special tokens (BOS, EOS, padding) when ``exclude_special``.
    """
    import torch

    if context < 2:
        raise FeatsurvError(f"Context length {context} is too short", allowed="2 or more")
    n_ctx = n_tokens // context
    if n_ctx < 1:
        raise FeatsurvError(f"Token budget {n_tokens} is smaller than one context of {context}",
                            hint=f"Pass --tokens {context} or more, or a smaller --context")
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        bos_id = tokenizer.eos_token_id
    if prepend_bos and bos_id is None:
        raise FeatsurvError("The SAE expects a BOS token but the tokenizer has neither bos_token nor eos_token",
                            hint="Pass --no-bos to audit without one")
    per_ctx = context - 1 if prepend_bos else context
    need = n_ctx * per_ctx
    ids = _token_stream(tokenizer, documents, need, join)
    if len(ids) < need:
        have = len(ids) // per_ctx * context
        raise FeatsurvError(
            f"Dataset {dataset!r} is too short: it gives {len(ids)} tokens, enough for {have} audit "
            f"positions, but {n_tokens} were asked for ({n_ctx} contexts of {context})",
            hint=(f"Pass --tokens {have} or fewer, or a larger --dataset" if have >= context
                  else "Pass a larger --dataset, or a smaller --tokens and --context"))
    stream = torch.tensor(ids[:need], dtype=torch.long)
    body = stream.view(n_ctx, per_ctx)
    if prepend_bos:
        contexts = torch.cat([torch.full((n_ctx, 1), bos_id, dtype=torch.long), body], dim=1)
    else:
        contexts = body.clone()
    keep = torch.ones_like(contexts, dtype=torch.bool)
    if exclude_special:
        special = sorted(set(getattr(tokenizer, "all_special_ids", []) or []) | ({bos_id} if prepend_bos else set()))
        if special:
            keep &= ~torch.isin(contexts, torch.tensor(special, dtype=torch.long))
    if prepend_bos:
        keep[:, 0] = False
    if int(keep.sum()) == 0:
        raise FeatsurvError(f"Dataset {dataset!r} holds only special tokens", hint="Pass a dataset with text")
    return TokenSet(contexts, keep, stream, context, prepend_bos, bos_id, dataset)
