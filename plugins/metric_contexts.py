"""Metric ``contexts``: each feature's top-activating contexts, under FP and under compression.

During the FP pass a streaming top-k (``k``, default 20; memory O(d_sae x k), never
``[N, d_sae]``) keeps, per feature of every audited SAE, the k kept token positions where it
fires most, with the feature's FP activations over a window of ``window`` tokens either side.
Per configuration it reads the compressed activations at those same positions, and keeps the
compressed model's own top-k too (so a feature that moved to new contexts shows it).

Writes the table ``contexts`` (``contexts.parquet``, schema in docs/results-contexts.md), the
per-feature column ``contexts.top_overlap`` (share of the FP top-k positions that are also in
the compressed top-k), the report section linking ``explorer.html``, and the command
``featsurv features``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featsurv import FeatureAccumulator, FeatureResult, Metric, Param, hookimpl
from featsurv.base import FPAccumulator, ReportSection

TABLE = "contexts"
KINDS = ("fp_top", "compressed_top")


@dataclass
class FPContexts:
    """What the FP pass found for one hook: the top-k entries (by feature and rank) and geometry."""

    d_sae: int
    k: int
    window: int
    context_length: int
    entries: Any  # featsurv_plugins.explorer.topk.TopKEntries; payload: fp_window [n, W], ids [n, W]
    tokenizer: Any = None
    cache: dict[str, Any] = field(default_factory=dict)  # decoded tokens, FP rows (shared by configurations)


class ContextsFPAccumulator(FPAccumulator):
    def __init__(self, d_sae: int, k: int, window: int):
        from featsurv_plugins.explorer.topk import StreamingTopK

        self.d_sae, self.k, self.window = d_sae, k, window
        self.topk = StreamingTopK(d_sae, k)
        self.context_length = 0
        self.tokenizer = None

    def update(self, fp: Any, batch: Any) -> None:
        from featsurv_plugins.explorer.topk import BatchLayout, gather_rows

        layout = BatchLayout(batch)
        self.context_length = layout.context_length
        if self.tokenizer is None:
            self.tokenizer = getattr(batch, "tokenizer", None)

        def payload(rows: Any, feats: Any) -> dict[str, Any]:
            wrows, ids = layout.windows(layout.local[rows], layout.positions[rows], self.window)
            return {"fp_window": gather_rows(fp, wrows, feats), "ids": ids.astype("int32")}

        self.topk.update(fp, layout.keys, payload)

    def result(self) -> FPContexts:
        return FPContexts(self.d_sae, self.k, self.window, self.context_length, self.topk.entries(), self.tokenizer)


class ContextsAccumulator(FeatureAccumulator):
    def __init__(self, d_sae: int, fp_result: FPContexts, min_firing_rate: float = 0.001):
        import numpy as np

        from featsurv_plugins.explorer.topk import StreamingTopK

        self.fp = fp_result
        e = fp_result.entries
        self.by_key = np.argsort(e.key, kind="stable")  # entries in token order, for each batch's lookup
        self.sorted_keys = e.key[self.by_key]
        n, w = len(e), 2 * fp_result.window + 1
        self.comp_act = np.full(n, np.nan, dtype=np.float32)
        self.comp_window = np.full((n, w), np.nan, dtype=np.float32)
        self.topk = StreamingTopK(d_sae, fp_result.k)
        self.min_firing_rate = min_firing_rate

    def update(self, fp: Any, compressed: Any, batch: Any) -> None:
        import numpy as np

        from featsurv_plugins.explorer.topk import BatchLayout, gather_many, gather_rows

        layout = BatchLayout(batch)
        e, c, w = self.fp.entries, layout.context_length, self.fp.window
        lo, hi = layout.key_range()
        i0, i1 = np.searchsorted(self.sorted_keys, [lo, hi])
        if i1 > i0:  # FP top-k positions inside this batch: the compressed activations there
            at = self.by_key[i0:i1]
            keys, feats = e.key[at], e.feature[at]
            local, pos = keys // c - layout.first_context, keys % c
            wrows, _ = layout.windows(local, pos, w)
            self.comp_window[at] = gather_rows(compressed, wrows, feats)
            self.comp_act[at] = self.comp_window[at, w]  # the window's centre: the position itself

        def payload(rows: Any, feats: Any) -> dict[str, Any]:
            # fp_act and the compressed value are the windows' centres (column w)
            wrows, ids = layout.windows(layout.local[rows], layout.positions[rows], w)
            cw, fw = gather_many([compressed, fp], wrows, feats)
            return {"compressed_window": cw, "fp_window": fw, "ids": ids.astype("int32")}

        self.topk.update(compressed, layout.keys, payload)

    def result(self, fp_stats: dict[str, Any]) -> FeatureResult:
        import numpy as np

        fp = self.fp
        ce = self.topk.entries()
        both_fp, both_c = _in_both(fp.entries, ce, fp.d_sae)
        n_fp = np.bincount(fp.entries.feature, minlength=fp.d_sae)
        shared = np.bincount(fp.entries.feature[both_fp], minlength=fp.d_sae)
        overlap = np.divide(shared, n_fp, out=np.full(fp.d_sae, np.nan), where=n_fp > 0)
        active = np.asarray(fp_stats.get("firing_rate", np.ones(fp.d_sae))) > self.min_firing_rate
        table = build_table(fp, self.comp_act, self.comp_window, ce, both_fp, both_c)
        sel = active & np.isfinite(overlap)
        summary = {"k": fp.k, "window": fp.window, "n_rows": int(len(table)),
                   "mean_top_overlap": float(overlap[sel].mean()) if sel.any() else float("nan")}
        return FeatureResult(summary, {"top_overlap": overlap}, {TABLE: table})


def _in_both(a: Any, b: Any, d_sae: int) -> tuple[Any, Any]:
    """Which entries of ``a`` and of ``b`` share (feature, key) with the other."""
    import numpy as np

    ka = a.key.astype(np.int64) * d_sae + a.feature
    kb = b.key.astype(np.int64) * d_sae + b.feature
    return np.isin(ka, kb), np.isin(kb, ka)


def token_strings(tokenizer: Any, ids: Any, cache: dict[int, str] | None = None) -> Any:
    """An object array mapping each id in ``ids`` (and -1, the last slot, -> "") to its text,
    each token decoded on its own; ``cache`` keeps decodings across calls."""
    import numpy as np

    cache = {} if cache is None else cache
    ids = np.asarray(ids)
    top = int(ids.max()) if ids.size else -1
    table = np.full(top + 2, "", dtype=object)
    for i in np.unique(ids[ids >= 0]).tolist():
        text = cache.get(i)
        if text is None:
            text = cache[i] = (f"<{i}>" if tokenizer is None
                               else tokenizer.decode([i], clean_up_tokenization_spaces=False))
        table[i] = text
    return table


def list_column(values: Any) -> Any:
    """A 2-D array ``[rows, width]`` as an Arrow-backed pandas list column: one flat buffer and
    offsets, no Python object per row (Parquet writes it as a list column without converting;
    :func:`featsurv.tables.write_parquet` stores NaN as null, as the object column it replaces was)."""
    import numpy as np
    import pyarrow as pa

    import pandas as pd

    arr = np.ascontiguousarray(values)
    return pd.arrays.ArrowExtensionArray(_list_array(pa.array(arr.reshape(-1)), arr.shape[0], arr.shape[1]))


def _list_array(flat: Any, rows: int, width: int) -> Any:
    """``rows`` Arrow lists of ``width`` items each over the flat Arrow array ``flat``."""
    import numpy as np
    import pyarrow as pa

    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * np.int32(width))
    return pa.ListArray.from_arrays(offsets, flat)


def _strings(fp: FPContexts, ids: Any) -> tuple[Any, Any]:
    """``window_tokens`` (Arrow lists of strings, ``""`` for -1) and ``text`` (their join per row)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n, width = ids.shape
    table = token_strings(fp.tokenizer, ids, fp.cache.setdefault("strings", {}))  # -1 -> the last slot, ""
    flat = pc.take(pa.array(table.tolist(), type=pa.string()),
                   pa.array(np.where(ids < 0, len(table) - 1, ids).reshape(-1).astype(np.int64)))
    tokens = _list_array(flat, n, width)
    return tokens, pc.binary_join(tokens, "").cast(pa.large_string())


def _rows(fp: FPContexts, kind: str, feat: Any, rank: Any, key: Any, ids: Any, fp_act: Any, fp_win: Any) -> dict[str, Any]:
    """The configuration-independent columns of one kind's rows (list columns as Arrow lists)."""
    import numpy as np
    import pandas as pd

    c, w = max(fp.context_length, 1), fp.window
    n, width = len(feat), 2 * w + 1
    ids = np.asarray(ids if ids is not None else np.full((n, width), -1), dtype=np.int32).reshape(n, width)
    toks, text = _strings(fp, ids)
    fp_win = np.asarray(fp_win, dtype=np.float32) if fp_win is not None else np.full((n, width), np.nan, np.float32)
    return {"feature": np.asarray(feat, dtype=np.int32), "kind": np.full(n, kind, dtype=object),
            "rank": np.asarray(rank, dtype=np.int16), "context": (key // c).astype(np.int32),
            "position": (key % c).astype(np.int32), "window_start": (key % c - w).astype(np.int32),
            "target": np.full(n, w, dtype=np.int16), "fp_act": np.asarray(fp_act, dtype=np.float32),
            "text": pd.arrays.ArrowExtensionArray(text), "window_ids": list_column(ids),
            "window_tokens": pd.arrays.ArrowExtensionArray(toks), "fp_window": list_column(fp_win.reshape(n, width))}


def build_table(fp: FPContexts, comp_act: Any, comp_window: Any, ce: Any, both_fp: Any, both_c: Any) -> Any:
    """The ``contexts`` rows of one (configuration, hook): the FP top-k rows, then the compressed
    top-k rows, each by feature and rank. The FP rows' configuration-independent columns are
    built once per hook and reused (Arrow buffers, shared, not copied)."""
    import numpy as np
    import pandas as pd

    e = fp.entries
    if "fp_rows" not in fp.cache:
        fp.cache["fp_rows"] = _rows(fp, KINDS[0], e.feature, e.rank, e.key, e.payload.get("ids"), e.value,
                                    e.payload.get("fp_window"))
    width = 2 * fp.window + 1
    parts = []
    if len(e):
        parts.append({**fp.cache["fp_rows"], "compressed_act": np.asarray(comp_act, dtype=np.float32),
                      "in_both": np.asarray(both_fp, dtype=bool),
                      "compressed_window": list_column(np.asarray(comp_window, dtype=np.float32).reshape(len(e), width))})
    if len(ce):
        fw = ce.payload.get("fp_window")
        fp_act = fw[:, fp.window] if fw is not None else np.full(len(ce), np.nan)  # the window's centre
        cw = ce.payload.get("compressed_window")
        parts.append({
            **_rows(fp, KINDS[1], ce.feature, ce.rank, ce.key, ce.payload.get("ids"), fp_act, ce.payload.get("fp_window")),
            "compressed_act": np.asarray(ce.value, dtype=np.float32), "in_both": np.asarray(both_c, dtype=bool),
            "compressed_window": list_column(np.asarray(cw if cw is not None else np.full((len(ce), width), np.nan),
                                                        dtype=np.float32).reshape(len(ce), width))})
    if not parts:
        return pd.DataFrame({col: [] for col in COLUMNS})
    # the fp_top rows, then the compressed_top rows, each by feature and rank (as the entries come)
    return pd.concat([pd.DataFrame({col: p[col] for col in COLUMNS}) for p in parts], ignore_index=True)


COLUMNS = ("feature", "kind", "rank", "context", "position", "window_start", "target", "fp_act",
           "compressed_act", "in_both", "text", "window_ids", "window_tokens", "fp_window", "compressed_window")


class Contexts(Metric):
    name = "contexts"
    description = "Top-activating contexts per feature under FP and compression (explorer.html, `featsurv features`)"
    options = (
        Param("k", int, 20, "top-activating contexts kept per feature (0: none: no top-k, no contexts.parquet; "
              "the explorer shows the feature table only)", minimum=0, maximum=1000, flag="contexts-k"),
        Param("window", int, 8, "tokens kept either side of each context's activating token", minimum=0, maximum=64),
    )

    def fp_accumulator(self, d_sae: int, options: dict[str, Any]) -> FPAccumulator | None:
        k = int(options.get("k", 20))
        return ContextsFPAccumulator(d_sae, k, int(options.get("window", 8))) if k > 0 else None

    def feature_accumulator(self, d_sae: int, options: dict[str, Any], fp_result: Any = None) -> FeatureAccumulator | None:
        if fp_result is None:  # a host without FP accumulators: nothing to compare against
            return None
        survival = (options.get("metric_options") or {}).get("survival") or {}
        return ContextsAccumulator(d_sae, fp_result, float(survival.get("min_firing_rate", 0.001)))

    def report_sections(self, run: Any) -> list[ReportSection]:
        from featsurv_plugins.explorer.page import explorer_section

        section = explorer_section(run)
        return [section] if section is not None else []


@hookimpl
def register_metrics(register):
    register(Contexts())


@hookimpl
def register_commands(cli):
    from featsurv_plugins.explorer.terminal import features_command

    cli.add_command(features_command)
