"""Streaming per-feature top-k over batches of SAE features, in O(d_sae x k) memory.

Each token has an integer ``key`` that grows in token order (``context * C + position``).
:class:`StreamingTopK` keeps, per feature, the ``k`` largest *positive* values seen so far,
ties broken towards the earlier token (smaller key), exactly as a dense sort of all N tokens
by (value descending, key ascending) would; :func:`dense_topk` is that oracle for tests.

Per batch, only entries above the feature's current k-th value can enter, so the merge touches
few entries once the top-k has filled: candidates are found with one comparison over the
batch's ``[tokens, d_sae]`` tensor (on its device), then merged with the kept entries of the
touched features by one stable sort (NumPy, on the CPU). Optional payloads (window activations, token ids) travel with the entries;
they are computed only for the candidates that enter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Candidate extraction and gathers in NumPy for CPU tensors (torch's are much slower there); the
#: torch path serves other devices. Tests turn it off to run the torch path on the CPU.
NUMPY_ON_CPU = True

PayloadFn = Callable[["torch.Tensor", "torch.Tensor"], dict[str, "torch.Tensor"]]


class StreamingTopK:
    """The k largest positive values per feature over a stream of ``[tokens, d]`` batches.

    The batch tensors stay where they are (CPU or GPU): the comparison against each feature's
    k-th value and the candidate extraction run there; the kept state (``[d, k]`` arrays) and
    the merge of the few candidates live in NumPy on the CPU.
    """

    def __init__(self, d: int, k: int):
        import numpy as np

        self.d, self.k = d, k
        self.values = np.zeros((d, k), dtype=np.float32)  # 0: empty slot
        self.keys = np.full((d, k), -1, dtype=np.int64)
        self.slots = np.full((d, k), -1, dtype=np.int64)  # each kept entry's row in the payload pool
        self._pool: dict[str, Any] = {}  # name -> [capacity, P] rows, appended as entries enter
        self._used = 0  # pool rows written so far
        self.compactions = 0  # times the pool was compacted
        self._threshold: Any = None  # the k-th values, on the batches' device

    def update(self, values: "torch.Tensor", keys: "torch.Tensor", payload_fn: PayloadFn | None = None) -> None:
        """Merge one batch: ``values`` ``[T, d]``, ``keys`` ``[T]`` ascending and larger than any seen.

        ``payload_fn(rows, feats)`` gets the entering entries' batch rows and features (NumPy
        index arrays) and returns arrays ``[n, P]`` stored beside them (NaN or -1 where a slot
        is empty).
        """
        import numpy as np
        import torch

        if values.shape[0] == 0:
            return
        values = values.detach()
        on_cpu = values.device.type == "cpu" and NUMPY_ON_CPU
        cand_v, rows, feats = self._candidates(values, on_cpu)
        if rows.size == 0:
            return
        cand_k = np.asarray(keys.cpu().numpy() if hasattr(keys, "cpu") else keys, dtype=np.int64)[rows]
        present = np.bincount(feats, minlength=self.d) > 0
        touched = np.flatnonzero(present)
        group = (np.cumsum(present) - 1)[feats]
        n_t, k = touched.size, self.k
        all_g = np.concatenate([np.repeat(np.arange(n_t), k), group])
        all_v = np.concatenate([self.values[touched].ravel(), cand_v])
        all_k = np.concatenate([self.keys[touched].ravel(), cand_k])
        # order: group ascending, value descending, key ascending. Kept entries come first and
        # have smaller keys; both parts are already in key order within a value, so one stable
        # sort suffices, on one int64 key: the group, then the complement of the value's bits
        # (for non-negative float32 values the bit pattern orders as the value does)
        bits = all_v.astype(np.float32).view(np.uint32)
        order = np.argsort((all_g.astype(np.int64) << 32) | (np.uint32(0xFFFFFFFF) - bits).astype(np.int64),
                           kind="stable")
        g_sorted = all_g[order]
        counts = np.bincount(g_sorted, minlength=n_t)
        starts = np.cumsum(counts) - counts
        rank = np.arange(order.size) - starts[g_sorted]
        chosen = order[rank < k]  # indexes all_*: below n_t * k it is a kept slot
        r_new = rank[rank < k]
        f_new = touched[all_g[chosen]]
        if payload_fn is not None:
            self._move_payload(payload_fn, chosen, touched, f_new, r_new, rows, feats)
        self.values[f_new, r_new] = all_v[chosen]
        self.keys[f_new, r_new] = all_k[chosen]
        if not on_cpu:
            self._threshold[torch.from_numpy(touched).to(values.device)] = torch.from_numpy(
                self.values[touched, -1]).to(values.device)

    def _candidates(self, values: "torch.Tensor", on_cpu: bool) -> tuple[Any, Any, Any]:
        """(values, batch rows, features) of the entries above their feature's k-th value (0 until
        full: only positive values enter), in row-major order (rows ascending). NumPy on the CPU:
        far faster than torch there."""
        import numpy as np
        import torch

        if on_cpu:
            dense = values.float().numpy()
            flat = np.flatnonzero(dense > self.values[:, -1])
            rows, feats = np.divmod(flat, self.d)
            return dense.reshape(-1)[flat], rows, feats
        if self._threshold is None or self._threshold.device != values.device:
            self._threshold = torch.from_numpy(self.values[:, -1].copy()).to(values.device)
        flat_t = (values > self._threshold.to(values.dtype)).reshape(-1).nonzero().squeeze(1)
        rows, feats = np.divmod(flat_t.cpu().numpy(), self.d)
        return values.reshape(-1)[flat_t].float().cpu().numpy(), rows, feats

    def _move_payload(self, payload_fn: PayloadFn, chosen: Any, touched: Any, f_new: Any, r_new: Any,
                      rows: Any, feats: Any) -> None:
        """Kept entries keep their pool rows (only the row numbers move to the new ranks); the
        payloads of entering entries are computed and appended to the pool."""
        import numpy as np

        k = self.k
        n_kept = touched.size * k
        from_kept = chosen < n_kept
        entering = chosen[~from_kept] - n_kept
        old = chosen[from_kept]
        kept_slots = self.slots[touched[old // k], old % k]
        fresh = payload_fn(rows[entering], feats[entering]) if entering.size else {}
        fresh = {name: np.asarray(value) for name, value in fresh.items()}
        self.slots[f_new[from_kept], r_new[from_kept]] = kept_slots
        if entering.size:
            self.slots[f_new[~from_kept], r_new[~from_kept]] = self._append(fresh, entering.size)

    def _append(self, fresh: dict[str, Any], n: int) -> Any:
        """Pool rows for ``n`` new entries holding ``fresh``.

        The pool is allocated once per payload with room for ``d k`` entries plus a quarter
        (``np.empty``: memory becomes resident only as rows are written); when the next rows
        would not fit, it is compacted in place to the rows kept entries still point to (at most
        ``d k``), without a second copy. Only when more entries enter in one batch than the room
        then left is it reallocated larger (at most ``2 d k`` rows).
        """
        import numpy as np

        dk = self.d * self.k
        room = max(dk // 4, 1)
        if self._used + n > self._capacity():
            self._compact()
        if self._used + n > self._capacity():  # more entering at once than the room left: grow
            self._pool = {name: _grown(pool[:self._used], self._used + n + room) for name, pool in self._pool.items()}
        start = self._used
        for name, value in fresh.items():
            if name not in self._pool:
                size = max(self._capacity(), dk + room, start + n)
                self._pool[name] = np.empty((size, value.shape[1]), dtype=value.dtype)
            self._pool[name][start:start + n] = value
        self._used = start + n
        return np.arange(start, start + n)

    def _capacity(self) -> int:
        return next(iter(self._pool.values())).shape[0] if self._pool else 0

    def _compact(self, block: int = 8192) -> None:
        """Move the rows that slots point to down to the start of the pool, in ascending order
        and block by block (a destination never overtakes a source still to be read), and renumber."""
        import numpy as np

        has = self.slots >= 0
        live = np.unique(self.slots[has])  # ascending; live[j] >= j
        for pool in self._pool.values():
            for j in range(0, live.size, block):
                src = live[j:j + block]
                pool[j:j + src.size] = pool[src]
        self.slots[has] = np.searchsorted(live, self.slots[has])
        self._used = int(live.size)
        self.compactions += 1

    @property
    def payload(self) -> dict[str, Any]:
        """Each payload as ``[d, k, P]`` (NaN or -1 in empty slots)."""
        import numpy as np

        has = self.slots >= 0
        out = {}
        for name, pool in self._pool.items():
            store = np.full((self.d, self.k, pool.shape[1]), np.nan if pool.dtype.kind == "f" else -1, dtype=pool.dtype)
            store[has] = pool[self.slots[has]]
            out[name] = store
        return out

    def entries(self) -> "TopKEntries":
        """The kept entries (positive values only), flattened in (feature, rank) order."""
        import numpy as np

        feat, rank = np.nonzero(self.values > 0)  # row-major: by feature, then rank
        slots = self.slots[feat, rank]
        return TopKEntries(feat, rank, self.keys[feat, rank], self.values[feat, rank],
                           {n: pool[slots] for n, pool in self._pool.items()})


def _grown(pool: Any, rows: int) -> Any:
    """``pool`` in an array of ``rows`` rows (its rows first; the rest uninitialised)."""
    import numpy as np

    out = np.empty((rows,) + pool.shape[1:], dtype=pool.dtype)
    out[:len(pool)] = pool
    return out


@dataclass
class TopKEntries:
    """Flat arrays of kept entries (one per feature and rank), in (feature, rank) order."""

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
    """Where the kept rows of one batch sit: context, position, token key, and a row lookup
    (NumPy arrays, whatever the device of the batch's features)."""

    def __init__(self, batch: Any):
        import numpy as np

        sizes = np.asarray(batch.context_sizes, dtype=np.int64)
        self.n_contexts = int(sizes.size)
        ids = batch.input_ids
        self.input_ids = None if ids is None else np.asarray(ids.cpu().numpy() if hasattr(ids, "cpu") else ids)
        local = np.repeat(np.arange(self.n_contexts), sizes)
        if batch.positions is not None:
            pos = batch.positions
            positions = np.asarray(pos.cpu().numpy() if hasattr(pos, "cpu") else pos, dtype=np.int64)
        else:  # no positions: rows are the leading positions of each context
            positions = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        if self.input_ids is not None:
            self.context_length = int(self.input_ids.shape[1])
        else:
            self.context_length = int(positions.max()) + 1 if positions.size else 1
        self.first_context = int(batch.first_context)
        self.local, self.positions = local, positions
        self.keys = (local + self.first_context) * self.context_length + positions
        self.row_of = np.full((max(self.n_contexts, 1), self.context_length), -1, dtype=np.int64)
        self.row_of[local, positions] = np.arange(local.size)

    def key_range(self) -> tuple[int, int]:
        c = self.context_length
        return self.first_context * c, (self.first_context + self.n_contexts) * c

    def windows(self, local: Any, positions: Any, window: int) -> tuple[Any, Any]:
        """Rows ``[n, 2w+1]`` of each window's kept positions (-1: not kept or outside the context)
        and the window's token ids (-1 outside the context)."""
        import numpy as np

        wp = positions[:, None] + np.arange(-window, window + 1)[None, :]
        inside = (wp >= 0) & (wp < self.context_length)
        wpc = wp.clip(0, self.context_length - 1)
        rows = np.where(inside, self.row_of[local[:, None], wpc], -1)
        if self.input_ids is not None:
            ids = np.where(inside, self.input_ids[local[:, None], wpc], -1)
        else:
            ids = np.full(wp.shape, -1)
        return rows, ids


def gather_rows(values: "torch.Tensor", rows: Any, feats: Any) -> Any:
    """``values[rows, feats]`` as float32 NumPy, for ``rows`` ``[n, W]`` (-1: NaN) and ``feats`` ``[n]``."""
    return gather_many([values], rows, feats)[0]


def gather_many(tensors: list["torch.Tensor"], rows: Any, feats: Any) -> list[Any]:
    """:func:`gather_rows` of each of ``tensors`` (same shape and device) at the same places,
    the flat indexes computed once."""
    import numpy as np
    import torch

    rows, feats = np.asarray(rows), np.asarray(feats, dtype=np.int64)
    missing = rows < 0
    flat = rows.clip(min=0) * np.int64(tensors[0].shape[1]) + feats[:, None]
    out = []
    for values in tensors:
        if values.device.type == "cpu" and NUMPY_ON_CPU:
            got = np.take(values.detach().float().numpy().reshape(-1), flat)
        else:
            got = values.detach().reshape(-1)[torch.from_numpy(flat).to(values.device)].float().cpu().numpy()
        got = got.astype(np.float32, copy=False)
        got[missing] = np.nan
        out.append(got)
    return out
