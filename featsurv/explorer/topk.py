"""Streaming per-feature top-k over batches of SAE features, in O(d_sae x k) memory.

Each token has an integer ``key`` that grows in token order (``context * C + position``).
:class:`StreamingTopK` keeps, per feature, the ``k`` largest *positive* values seen so far,
ties broken towards the earlier token (smaller key), exactly as a dense sort of all N tokens
by (value descending, key ascending) would; :func:`dense_topk` is that oracle for tests.

Per batch, only entries above the feature's current k-th value can enter, so the merge touches
few entries once the top-k has filled: candidates are found with one comparison over the
batch's ``[tokens, d_sae]`` tensor, then merged with the kept entries of the touched features
by two stable sorts. Optional payloads (window activations, token ids) travel with the entries;
they are computed only for the candidates that enter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

PayloadFn = Callable[["torch.Tensor", "torch.Tensor"], dict[str, "torch.Tensor"]]


class StreamingTopK:
    """The k largest positive values per feature over a stream of ``[tokens, d]`` batches."""

    def __init__(self, d: int, k: int, device: Any = "cpu"):
        import torch

        self.d, self.k = d, k
        self.values = torch.zeros(d, k, dtype=torch.float32, device=device)  # 0: empty slot
        self.keys = torch.full((d, k), -1, dtype=torch.long, device=device)
        self.payload: dict[str, torch.Tensor] = {}

    def update(self, values: "torch.Tensor", keys: "torch.Tensor", payload_fn: PayloadFn | None = None) -> None:
        """Merge one batch: ``values`` ``[T, d]``, ``keys`` ``[T]`` ascending and larger than any seen.

        ``payload_fn(rows, feats)`` returns, for the entering entries (batch row, feature),
        tensors ``[n, P]`` stored beside them (NaN or -1 where a slot is empty).
        """
        import torch

        if values.shape[0] == 0:
            return
        if self.values.device != values.device:
            self._to(values.device)
        values = values.detach().float()
        threshold = self.values[:, -1]  # 0 until a feature has k entries: only positive values enter
        rows, feats = (values > threshold).nonzero(as_tuple=True)  # row-major: rows ascending
        if rows.numel() == 0:
            return
        keys = keys.to(values.device)
        cand_v, cand_k = values[rows, feats], keys[rows]
        touched, group = torch.unique(feats, sorted=True, return_inverse=True)
        n_t, k = touched.numel(), self.k
        kept_v, kept_k = self.values[touched].reshape(-1), self.keys[touched].reshape(-1)
        all_g = torch.cat([torch.arange(n_t, device=values.device).repeat_interleave(k), group])
        all_v = torch.cat([kept_v, cand_v])
        all_k = torch.cat([kept_k, cand_k])
        source = torch.arange(all_v.numel(), device=values.device)  # < n_t * k: a kept slot
        # order: group ascending, value descending, key ascending. Kept entries come first and
        # have smaller keys; both parts are already in key order within a value, so two stable
        # sorts suffice.
        order = torch.sort(-all_v, stable=True).indices
        order = order[torch.sort(all_g[order], stable=True).indices]
        g_sorted = all_g[order]
        counts = torch.bincount(g_sorted, minlength=n_t)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=values.device) - starts[g_sorted]
        chosen = order[rank < k]
        g_new, r_new = all_g[chosen], rank[rank < k]
        f_new = touched[g_new]
        src = source[chosen]
        from_kept = src < n_t * k
        if payload_fn is not None:
            entering = src[~from_kept] - n_t * k
            fresh = payload_fn(rows[entering], feats[entering]) if entering.numel() else {}
            moved = {}
            old = src[from_kept]
            for name, store in self.payload.items():
                moved[name] = store[touched[old // k], old % k]  # copies before the stores change
            for name, value in fresh.items():
                store = self._store(name, value)
                if name in moved:
                    store[f_new[from_kept], r_new[from_kept]] = moved[name]
                store[f_new[~from_kept], r_new[~from_kept]] = value.to(store.dtype)
        self.values[f_new, r_new] = all_v[chosen]
        self.keys[f_new, r_new] = all_k[chosen]

    def _store(self, name: str, like: "torch.Tensor") -> "torch.Tensor":
        import torch

        if name not in self.payload:
            fill = float("nan") if like.dtype.is_floating_point else -1
            self.payload[name] = torch.full((self.d, self.k, like.shape[1]), fill, dtype=like.dtype,
                                            device=like.device)
        return self.payload[name]

    def _to(self, device: Any) -> None:
        self.values, self.keys = self.values.to(device), self.keys.to(device)
        self.payload = {n: t.to(device) for n, t in self.payload.items()}

    def entries(self) -> "TopKEntries":
        """The kept entries (positive values only), flattened and sorted by key."""
        import torch

        feat, rank = (self.values > 0).nonzero(as_tuple=True)
        keys = self.keys[feat, rank]
        order = torch.argsort(keys * self.d + feat)  # key order; one key may hold several features
        feat, rank = feat[order], rank[order]
        return TopKEntries(feat.cpu().numpy(), rank.cpu().numpy(), self.keys[feat, rank].cpu().numpy(),
                           self.values[feat, rank].cpu().numpy(),
                           {n: t[feat, rank].cpu().numpy() for n, t in self.payload.items()})


@dataclass
class TopKEntries:
    """Flat arrays of kept entries (one per feature and rank), sorted by token key."""

    feature: Any
    rank: Any
    key: Any
    value: Any
    payload: dict[str, Any]

    def __len__(self) -> int:
        return int(len(self.feature))


def dense_topk(values: Any, keys: Any, k: int) -> list[list[tuple[int, float]]]:
    """Brute-force oracle: per feature, [(key, value)] of the k largest positive values of the
    dense ``[N, d]`` array, by value descending then key ascending."""
    import numpy as np

    values, keys = np.asarray(values, dtype=np.float32), np.asarray(keys)
    out = []
    for f in range(values.shape[1]):
        col = values[:, f]
        pos = np.nonzero(col > 0)[0]
        order = pos[np.lexsort((keys[pos], -col[pos]))][:k]
        out.append([(int(keys[i]), float(col[i])) for i in order])
    return out


# --------------------------------------------------------------------------- batch geometry
class BatchLayout:
    """Where the kept rows of one batch sit: context, position, token key, and a row lookup."""

    def __init__(self, batch: Any, device: Any = "cpu"):
        import torch

        sizes = torch.as_tensor(batch.context_sizes, dtype=torch.long)
        self.n_contexts = int(sizes.numel())
        ids = batch.input_ids
        self.input_ids = ids.to(device) if ids is not None else None
        local = torch.repeat_interleave(torch.arange(self.n_contexts), sizes).to(device)
        if batch.positions is not None:
            positions = torch.as_tensor(batch.positions).to(device=device, dtype=torch.long)
        else:  # no positions: rows are the leading positions of each context
            starts = torch.cumsum(sizes, 0) - sizes
            positions = (torch.arange(int(sizes.sum())) - torch.repeat_interleave(starts, sizes)).to(device)
        self.context_length = int(ids.shape[1]) if ids is not None else int(positions.max().item()) + 1 if positions.numel() else 1
        self.first_context = int(batch.first_context)
        self.local, self.positions = local, positions
        self.keys = (local + self.first_context) * self.context_length + positions
        self.row_of = torch.full((max(self.n_contexts, 1), self.context_length), -1, dtype=torch.long, device=device)
        self.row_of[local, positions] = torch.arange(local.numel(), device=device)

    def key_range(self) -> tuple[int, int]:
        c = self.context_length
        return self.first_context * c, (self.first_context + self.n_contexts) * c

    def windows(self, local: "torch.Tensor", positions: "torch.Tensor", window: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Rows ``[n, 2w+1]`` of each window's kept positions (-1: not kept or outside the context)
        and the window's token ids (-1 outside the context)."""
        import torch

        offsets = torch.arange(-window, window + 1, device=positions.device)
        wp = positions[:, None] + offsets[None, :]
        inside = (wp >= 0) & (wp < self.context_length)
        wpc = wp.clamp(0, self.context_length - 1)
        rows = torch.where(inside, self.row_of[local[:, None], wpc], torch.full_like(wp, -1))
        if self.input_ids is not None:
            ids = torch.where(inside, self.input_ids[local[:, None], wpc].long(), torch.full_like(wp, -1))
        else:
            ids = torch.full_like(wp, -1)
        return rows, ids


def gather_rows(values: "torch.Tensor", rows: "torch.Tensor", feats: "torch.Tensor") -> "torch.Tensor":
    """``values[rows, feats]`` for ``rows`` ``[n, W]`` (-1: NaN) and ``feats`` ``[n]``."""
    import torch

    out = values[rows.clamp(min=0), feats[:, None].expand_as(rows)].float()
    return torch.where(rows >= 0, out, torch.full_like(out, float("nan")))
