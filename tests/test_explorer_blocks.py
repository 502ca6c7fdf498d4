"""The explorer's shown-context arrays and JSON blocks against the per-row implementation they replaced.

``ReferenceWindows`` is ``plugins/explorer/page.py``'s ``_Windows`` as it was before its filter and
``blocks`` were vectorised (a pandas row filter, then one Python loop over every shown row): the
oracle here. The new code must give the same arrays, token table and byte-identical JSON blocks,
on the contexts table of a real audit and on random tables with the awkward cases (a configuration
without FP-top rows, a feature with only its own top, shared spots, filtered ranks, hooks and
configurations, non-finite activations, Arrow-backed and plain object columns).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from featsurv_plugins.explorer import columns, page, texts


class ReferenceWindows:
    """explorer/page.py's ``_Windows`` before it was vectorised (a pandas filter, a Python loop per row)."""

    def __init__(self, contexts: Any, hooks: list[str], configs: list[str], shown: int):
        import numpy as np
        import pandas as pd

        ctx = contexts[(contexts["rank"] < shown) & contexts["hook"].astype(str).isin(hooks)
                       & contexts["config"].astype(str).isin(configs)]
        hook_idx = {h: i for i, h in enumerate(hooks)}
        conf_idx = {c: i for i, c in enumerate(configs)}
        self.h = ctx["hook"].astype(str).map(hook_idx).to_numpy(np.int64)
        self.c = ctx["config"].astype(str).map(conf_idx).to_numpy(np.int64)
        self.f = ctx["feature"].to_numpy(np.int64)
        self.kind = (ctx["kind"].astype(str) != "fp_top").to_numpy(np.int64)
        self.rank = ctx["rank"].to_numpy(np.int64)
        self.context = ctx["context"].to_numpy(np.int64)
        self.position = ctx["position"].to_numpy(np.int64)
        self.start = ctx["window_start"].to_numpy(np.int64)
        self.fp_act = texts._round4(ctx["fp_act"].to_numpy(np.float64))
        self.comp_act = texts._round4(ctx["compressed_act"].to_numpy(np.float64))
        self.both = ctx["in_both"].to_numpy(bool)
        self.window = int((self.position - self.start)[0]) if len(ctx) else 0
        width = 2 * self.window + 1
        self.ids = columns._stack(ctx["window_ids"], width, -1, np.int64)
        fpw = columns._stack(ctx["fp_window"], width, np.nan, np.float32)
        cw = columns._stack(ctx["compressed_window"], width, np.nan, np.float32)
        fpw, cw = np.where(fpw > 0, fpw, 0.0), np.where(cw > 0, cw, 0.0)  # NaN (not kept) -> 0
        peak = np.maximum(fpw.max(axis=1, initial=0.0), cw.max(axis=1, initial=0.0))
        key = self.h * (1 << 32) + self.f
        scale = pd.Series(peak).groupby(key).transform("max").to_numpy() if len(ctx) else peak
        self.scale = np.where(scale > 0, scale, 1.0)
        self.sp_fp = self._sparse(fpw)
        self.sp_c = self._sparse(cw)
        # the text of each token id, from its first occurrence
        flat = self.ids.ravel()
        seen = np.full(int(flat.max(initial=-1)) + 1, -1, dtype=np.int64)
        valid = np.flatnonzero(flat >= 0)[::-1]
        seen[flat[valid]] = valid  # reversed: the first occurrence is written last
        uniq = np.flatnonzero(seen >= 0)
        first = seen[uniq]
        tokens = ctx["window_tokens"]
        rows = first // width
        sub = tokens.iloc[rows] if len(rows) else tokens.iloc[:0]
        self.tok_ids = uniq
        self.tok_strings = [str(list(t)[j]) for t, j in zip(sub.tolist(), (first % width).tolist())]

    def _sparse(self, w: Any) -> list[str]:
        """Per row: one digit per window position, 0 (not firing) or 1..page.LEVELS of the block's scale."""
        import numpy as np

        q = np.where(w > 0, np.clip(np.ceil(page.LEVELS * w / self.scale[:, None]), 1, page.LEVELS), 0).astype(np.uint8)
        text = (q + ord("0")).tobytes().decode("ascii")
        width = q.shape[1] if q.ndim == 2 else 0
        return [text[i:i + width] for i in range(0, len(text), width)] if width else [""] * len(q)

    def blocks(self, n_configs: int) -> dict[str, tuple[str, list[int]]]:
        """Per "hookIndex:feature": the embedded contexts (as JSON text) and the rows they use.

        A block is ``{"s": scale, "f": [[ctx, pos, fp_act, fp_digits]...] (FP top, by rank),
        "c": per configuration [[compressed_act, compressed_digits]...] aligned with "f",
        "t": per configuration its own top: [ctx, pos, compressed_act, fp_act, compressed_digits,
        fp_digits, in_both] or [j] for the shown FP entry j it shares}``; digits: one per window
        position (see ``_sparse``).
        """
        import numpy as np

        order = np.lexsort((self.rank, self.c, self.kind, self.f, self.h))
        h_, f_, kind_, c_ = self.h.tolist(), self.f.tolist(), self.kind.tolist(), self.c.tolist()
        cx_, pos_, both_ = self.context.tolist(), self.position.tolist(), self.both.tolist()
        scale_ = texts._round4(self.scale)
        blocks: dict[str, tuple[dict[str, Any], list[int]]] = {}
        fp_rows: dict[tuple[int, int], int] = {}
        first_conf = -1
        for i in order.tolist():
            name = f"{h_[i]}:{f_[i]}"
            entry = blocks.get(name)
            c, spot = c_[i], (cx_[i], pos_[i])
            if entry is None:
                entry = blocks[name] = ({"s": scale_[i], "f": [], "c": [None] * n_configs,
                                         "t": [None] * n_configs}, [])
                fp_rows, first_conf = {}, c if kind_[i] == 0 else -1
            block, rows = entry
            if kind_[i] == 0:
                if c == first_conf:
                    fp_rows[spot] = len(block["f"])
                    block["f"].append([spot[0], spot[1], self.fp_act[i], self.sp_fp[i]])
                    rows.append(i)
                lst = block["c"][c]
                if lst is None:
                    lst = block["c"][c] = []
                slot = fp_rows.get(spot)
                if slot is not None:
                    lst.extend([None] * (slot + 1 - len(lst)))
                    lst[slot] = [self.comp_act[i], self.sp_c[i]]
            else:
                if block["t"][c] is None:
                    block["t"][c] = []
                slot = fp_rows.get(spot) if both_[i] else None
                if slot is not None:
                    block["t"][c].append([slot])
                else:
                    block["t"][c].append([spot[0], spot[1], self.comp_act[i], self.fp_act[i], self.sp_c[i],
                                          self.sp_fp[i], 1 if both_[i] else 0])
                    rows.append(i)
        return {k: (json.dumps(b, separators=(",", ":"), allow_nan=False), r) for k, (b, r) in blocks.items()}



def random_contexts(seed: int, *, arrow: bool, n_feats: int = 12, window: int = 2, chunked: bool = False) -> pd.DataFrame:
    """A contexts table shaped like the metric's, with the edge cases drawn at random."""
    rng = np.random.default_rng(seed)
    rows = []
    width = 2 * window + 1
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.9.other"):
        for j, feat in enumerate(rng.choice(200, size=n_feats, replace=False).tolist()):
            fp_spots = rng.choice(40 * 16, size=6, replace=False)
            for config in ("rtn bits=8", "rtn bits=4", "skipped", "magnitude sparsity=0.5"):
                has_fp = rng.random() > 0.2 and j > 0  # the first feature of a hook: only its own tops
                has_own = rng.random() > 0.2
                kinds = (["fp_top"] if has_fp else []) + (["compressed_top"] if has_own else [])
                for kind in kinds:
                    if kind == "fp_top":
                        n = int(rng.integers(1, 7))
                        spots = fp_spots[:n] if rng.random() > 0.1 else rng.permutation(fp_spots)[:n]
                    else:
                        n = int(rng.integers(1, 7))
                        own = rng.choice(40 * 16, size=n, replace=False)
                        share = rng.random(n) < 0.4
                        spots = np.where(share, fp_spots[rng.integers(0, 6, n)], own)
                        spots = np.unique(spots)[:n]
                    for rank, spot in enumerate(spots.tolist()):
                        ctx, pos = divmod(spot, 16)
                        ids = rng.integers(-1, 30, width).astype(np.int32)
                        fpw = np.where(rng.random(width) < 0.5, rng.exponential(2, width), np.nan).astype(np.float32)
                        cw = np.where(rng.random(width) < 0.5, rng.exponential(2, width) - 0.5, np.nan).astype(np.float32)
                        fa = float(rng.choice([rng.exponential(3), np.nan, 0.0, 1234567.0, 1e-7]))
                        rows.append({
                            "feature": feat, "kind": kind, "rank": rank, "context": ctx, "position": pos,
                            "window_start": pos - window, "fp_act": fa,
                            "compressed_act": float(rng.exponential(3)) if rng.random() > 0.1 else np.inf,
                            "in_both": bool(rng.random() < 0.5), "window_ids": ids,
                            "window_tokens": [f"t{int(i)}" if i >= 0 else "" for i in ids],
                            "fp_window": fpw, "compressed_window": cw, "config": config, "hook": hook})
    frame = pd.DataFrame(rows)
    if not arrow:
        return frame
    out = {}
    for name, col in frame.items():
        if name in ("window_ids", "fp_window", "compressed_window"):
            arr = pa.array([list(v) for v in col], type=pa.list_(pa.int32() if name == "window_ids" else pa.float32()),
                           from_pandas=True)
            out[name] = pd.arrays.ArrowExtensionArray(_pieces(arr, chunked))
        elif name == "window_tokens":
            out[name] = pd.arrays.ArrowExtensionArray(_pieces(pa.array(list(col), type=pa.list_(pa.string())), chunked))
        else:
            out[name] = pd.arrays.ArrowExtensionArray(pa.array(col.tolist()))
    return pd.DataFrame(out)


def _pieces(arr: Any, chunked: bool) -> Any:
    """``arr``, or the same values as a chunked array of uneven slices (offsets not starting at 0)."""
    if not chunked:
        return arr
    n = len(arr)
    cuts = [0, n // 7, n // 2, n // 2 + 1, n]
    return pa.chunked_array([arr.slice(a, b - a) for a, b in zip(cuts, cuts[1:])], type=arr.type)


ATTRS = ("h", "c", "f", "kind", "rank", "context", "position", "start", "both", "ids", "scale", "tok_ids")


def assert_same(new: Any, ref: Any, n_configs: int) -> None:
    for name in ATTRS:
        np.testing.assert_array_equal(np.asarray(getattr(new, name)), np.asarray(getattr(ref, name)), err_msg=name)
    for name in ("fp_act", "comp_act", "sp_fp", "sp_c", "tok_strings"):
        assert list(getattr(new, name)) == list(getattr(ref, name)), name
    assert new.window == ref.window
    got, want = new.blocks(n_configs), ref.blocks(n_configs)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key][0] == want[key][0], key
        assert list(got[key][1]) == list(want[key][1]), key
        json.loads(got[key][0])  # valid JSON
    rows = [i for k in sorted(want) for i in want[k][1]]
    assert new.tokens(rows) == page._Windows.tokens(ref, rows)  # tokens() itself is unchanged


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("arrow", ["arrow", "chunked", "objects"])
def test_vectorised_windows_match_the_per_row_reference(seed, arrow):
    contexts = random_contexts(seed, arrow=arrow != "objects", chunked=arrow == "chunked")
    if arrow == "chunked":  # the list columns really are several slices
        assert contexts["fp_window"].array._pa_array.num_chunks == 4
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]  # blocks.9.other is left out
    configs = ["rtn bits=8", "magnitude sparsity=0.5", "rtn bits=4"]  # "skipped" is left out
    shown = 4  # ranks 4 and 5 are filtered
    new = page._Windows(contexts, hooks, configs, shown)
    ref = ReferenceWindows(contexts, hooks, configs, shown)
    assert len(new.h) > 100 and set(new.kind.tolist()) == {0, 1}
    assert_same(new, ref, len(configs))


def test_the_awkward_cases_occur_in_the_random_tables():
    """The comparison above is only worth as much as the cases it meets."""
    new = page._Windows(random_contexts(0, arrow=True), ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
                        ["rtn bits=8", "magnitude sparsity=0.5", "rtn bits=4"], 4)
    blocks = [json.loads(b) for b, _ in new.blocks(3).values()]
    assert any(b["f"] == [] for b in blocks)  # a feature with only its own tops
    assert any(None in b["c"] and b["f"] for b in blocks)  # a configuration without FP-top rows
    assert any(None in b["t"] for b in blocks)  # a configuration without its own top
    assert any(len(e) == 1 for b in blocks for t in b["t"] if t for e in t)  # a shared spot
    assert any(None in lst for b in blocks for lst in b["c"] if lst)  # a gap in "c"
    assert any(e[2] is None for b in blocks for e in b["f"])  # a non-finite activation


def test_an_empty_selection_gives_no_blocks():
    contexts = random_contexts(1, arrow=True)
    new = page._Windows(contexts, ["no such hook"], ["rtn bits=8"], 4)
    assert len(new.h) == 0 and new.blocks(1) == {}


def test_a_real_audits_contexts_give_the_same_page_data(tmp_path):
    """The contexts table of an audit of the embedded default, through both implementations."""
    from featsurv.api import audit

    run = audit("rtn", params={"bits": [6, 3]}, n_tokens=2048, out=tmp_path / "run", bootstrap=0).result
    contexts = page.load_contexts(run)  # as the report gets it
    assert contexts is not None and len(contexts)
    hooks = sorted(str(h) for h in run.features["hook"].unique())
    configs = list(dict.fromkeys(str(c) for c in run.features["config"]))
    assert_same(page._Windows(contexts, hooks, configs, page.SHOWN), ReferenceWindows(contexts, hooks, configs, page.SHOWN),
                len(configs))


def test_number_formatting_matches_the_per_value_functions():
    """The page's vectorised number texts against ``_g`` and ``_round4`` applied value by value."""
    rng = np.random.default_rng(7)
    special = [0.0, -0.0, 1.0, -3.0, 999999999.0, 1e9, 1e9 + 0.5, 123456.0, 0.12345, 0.00012345, 1e-7, 1.5e-5,
               2.5, 1234.5, 98765.4321, 1e16, 1.23e17, -1e-300, 5e-324, np.nan, np.inf, -np.inf]
    values = np.concatenate([special, rng.normal(0, 1, 3000), rng.exponential(5, 3000) * 10.0 ** rng.integers(-8, 12, 3000),
                             np.round(rng.normal(0, 100, 3000), 2)])
    assert texts._g_list(values) == [texts._g(v) for v in values]
    assert texts._g_list(pd.Series(values)) == [texts._g(v) for v in values]
    assert texts._g_list(pd.Series(["1.5", None, "x"], dtype=object)) == [1.5, None, None]
    assert texts._g_list([]) == []
    numbers = texts._json_numbers(values)
    assert numbers == ["null" if v is None else repr(v) for v in texts._round4(values)]
    assert page._band_codes(pd.Series(["damaged", None, "survived", "odd", "blurred"])) == [2, -1, 0, -1, 1]


@pytest.mark.parametrize("chunked", [False, True])
def test_list_reads_from_flat_buffers_equal_the_row_by_row_stack(chunked):
    """``_take_lists`` / ``_list_items`` against ``_stack`` and Python indexing, on regular lists
    (flat-buffer path) and on irregular ones (the fallback)."""
    rng = np.random.default_rng(5)
    regular = [rng.normal(size=3).astype(np.float32).tolist() for _ in range(40)]
    regular[4][1] = None  # a null item inside a list: NaN
    irregular = regular[:10] + [[1.0, 2.0]] + regular[11:]
    rows = np.array([0, 3, 4, 9, 10, 11, 25, 39])
    for lists in (regular, irregular):
        col = pd.Series(pd.arrays.ArrowExtensionArray(_pieces(pa.array(lists, type=pa.list_(pa.float32())), chunked)))
        got = columns._take_lists(col, 3, np.nan, np.float32, rows)
        np.testing.assert_array_equal(got, columns._stack(col, 3, np.nan, np.float32, rows))
    words = [[f"w{i}.{j}" for j in range(3)] for i in range(40)]
    col = pd.Series(pd.arrays.ArrowExtensionArray(_pieces(pa.array(words, type=pa.list_(pa.string())), chunked)))
    at = rng.integers(0, 3, len(rows))
    assert columns._list_items(col, 3, rows, at) == [words[r][j] for r, j in zip(rows, at)]
    assert columns._regular_chunks(col, 3) is not None and columns._regular_chunks(col, 4) is None


def test_column_codes_rows_peaks_and_row_formatting_against_plain_python():
    values = ["b", "a", "c"]
    raw = ["a"] * 5 + ["x"] * 2 + ["b", "a", None, "c", "c", np.nan, "a"]
    want = [values.index(str(v)) if str(v) in values else -1 for v in raw]
    for col in (pd.Series(raw, dtype=object), pd.Series(pd.arrays.ArrowExtensionArray(
            _pieces(pa.array([None if v is None or v != v else v for v in raw]), True)))):
        assert columns._codes(col, values).tolist() == [w if str(v) not in ("None", "nan") else -1
                                                     for v, w in zip(raw, want)]
    assert columns._codes(pd.Series(["a", pd.NA, "b"], dtype=object), values).tolist() == [1, -1, 0]
    assert columns._codes(pd.Series([], dtype=object), values).tolist() == []
    w = np.array([[np.nan, -1.0, 2.0], [np.nan, np.nan, np.nan], [-3.0, 0.5, 0.25]], dtype=np.float32)
    np.testing.assert_array_equal(columns._row_peak(w), [2.0, 0.0, 0.5])
    np.testing.assert_array_equal(columns._row_peak(w, np.array([1.0, 7.0, 0.0], dtype=np.float32)), [2.0, 7.0, 0.5])
    cols = (np.array([3, -1, 10]), ["x", "null", '"0120"'], [0.5, 2, "s"])
    assert texts._format_rows("[%d,%s,%s]", *cols) == ["[%d,%s,%s]" % row for row in zip(*cols)]
    assert texts._format_rows("%s") == [] and texts._format_rows("[%d]", np.array([], dtype=np.int64)) == []
