"""The feature explorer: one self-contained ``explorer.html`` built from a finished run.

Inputs: the run's features table (``run.features``), its ``contexts`` table when the
``contexts`` metric ran (``contexts.parquet``), and ``summary.json`` (thresholds, the SAEs'
Neuronpedia ids, the watch list). Output: an HTML page with inline CSS and JavaScript and the
data embedded as JSON (deflate-compressed and base64-encoded when large); it loads nothing from
the network and works from ``file://``.

Size: only active features get rows; numbers carry 4 significant digits; window activations
are quantized to one digit per token, 0 or 1..9 ninths of the feature's largest shown activation
(exact values at the activating token are kept); the tokens of each context
are stored once. Contexts are embedded for at most ``shown`` per feature and kind; when the
page would exceed ``budget`` bytes, contexts are kept for the most damaged features first.
"""
from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

from featsurv.base import ReportSection

from .columns import _codes, _list_items, _row_peak, _take_lists
from .texts import _digit_strings, _format_rows, _g_list, _joined, _json_numbers, _present, _round4, _rounded4

EXPLORER_FILE = "explorer.html"
SHOWN = 8  # contexts per feature and kind embedded in the page
LEVELS = 9  # shading levels of window activations (the activating token's value is exact)
BUDGET = 9_500_000  # bytes of the whole page
PLAIN_LIMIT = 1_500_000  # raw JSON up to this size is embedded uncompressed
BAND_CODE = {"survived": 0, "blurred": 1, "damaged": 2}
FP_STATS = ("firing_rate", "mean_act", "peak_act")
EXTRA_STATS = ("decoder_norm", "encoder_norm", "encoder_bias", "threshold")
ASSETS = Path(__file__).resolve().parent


def load_contexts(run: Any) -> Any:
    """The run's contexts table: in memory (``run.tables`` / ``run.extra``) or contexts.parquet."""
    for holder in (getattr(run, "tables", None), (getattr(run, "extra", None) or {}).get("tables")):
        if isinstance(holder, dict):
            for key in ("contexts.parquet", "contexts"):
                if holder.get(key) is not None:
                    return holder[key]
    path = getattr(run, "path", None)
    if path is not None and (Path(path) / "contexts.parquet").is_file():
        import pandas as pd

        return pd.read_parquet(Path(path) / "contexts.parquet", dtype_backend="pyarrow")
    return None


def neuronpedia_ids(summary: dict[str, Any]) -> dict[str, str]:
    """hook -> the SAE's Neuronpedia id (sae-lens ``cfg.metadata.neuronpedia_id``), where known."""
    saes = ((summary or {}).get("baseline") or {}).get("saes") or {}
    return {h: str(s["neuronpedia_id"]) for h, s in saes.items() if isinstance(s, dict) and s.get("neuronpedia_id")}


class _Windows:
    """The shown contexts as arrays, one row per (hook, config, feature, kind, rank)."""

    def __init__(self, contexts: Any, hooks: list[str], configs: list[str], shown: int):
        import numpy as np

        h_all, c_all = _codes(contexts["hook"], hooks), _codes(contexts["config"], configs)
        rank_all = contexts["rank"].to_numpy(np.int64)
        idx = np.flatnonzero((rank_all < shown) & (h_all >= 0) & (c_all >= 0))
        self.h, self.c, self.rank = h_all[idx], c_all[idx], rank_all[idx]

        def col(name: str, dtype: Any) -> Any:
            return contexts[name].to_numpy(dtype)[idx]

        self.f = col("feature", np.int64)
        self.kind = (_codes(contexts["kind"], ["fp_top"]) != 0)[idx].astype(np.int64)
        self.context = col("context", np.int64)
        self.position = col("position", np.int64)
        self.start = col("window_start", np.int64)
        self._fp_act = _rounded4(col("fp_act", np.float64))
        self._comp_act = _rounded4(col("compressed_act", np.float64))
        self.both = col("in_both", bool)
        self.window = int((self.position - self.start)[0]) if len(idx) else 0
        width = 2 * self.window + 1
        self.ids = _take_lists(contexts["window_ids"], width, -1, np.int32, idx)
        fpw = _take_lists(contexts["fp_window"], width, np.nan, np.float32, idx)
        cw = _take_lists(contexts["compressed_window"], width, np.nan, np.float32, idx)
        # the largest positive activation of each row (NaN: not kept, ignored; 0 if none)
        peak = _row_peak(fpw, _row_peak(cw))
        # the scale of a row: the largest shown activation of its (hook, feature)
        groups, inverse = np.unique(self.h * (1 << 32) + self.f, return_inverse=True)
        top = np.zeros(len(groups), dtype=peak.dtype)
        np.maximum.at(top, inverse, peak)
        self.scale = np.where(top[inverse] > 0, top[inverse], 1.0)
        self._q_fp, self._q_c = self._digits(fpw), self._digits(cw)
        # the text of each token id, from its first occurrence
        flat = self.ids.ravel()
        seen = np.full(int(flat.max(initial=-1)) + 1, -1, dtype=np.int64)
        valid = np.flatnonzero(flat >= 0)[::-1]
        seen[flat[valid]] = valid  # reversed: the first occurrence is written last
        uniq = np.flatnonzero(seen >= 0)
        first = seen[uniq]
        rows = idx[first // width]
        self.tok_ids = uniq
        by_row = np.argsort(rows, kind="stable")
        strings = _list_items(contexts["window_tokens"], width, rows[by_row], (first % width)[by_row])
        self.tok_strings = np.asarray(strings, dtype=object)[np.argsort(by_row)].tolist() if len(rows) else []

    def _digits(self, w: Any) -> Any:
        """Per row and window position a digit: 0 (not firing) or 1..LEVELS of the block's scale."""
        import numpy as np

        out = np.empty(w.shape, dtype=np.uint8)
        step = 16384  # rows per block: the float64 temporaries stay in cache
        for i in range(0, w.shape[0], step):
            b = w[i:i + step]
            q = np.clip(np.ceil(LEVELS * b / self.scale[i:i + step, None]), 1, LEVELS)
            out[i:i + step] = np.where(b > 0, q, 0)
        return out

    @staticmethod
    def _sparse(q: Any) -> list[str]:
        """The digit rows as strings."""
        return [t[1:-1] for t in _digit_strings(q)] if q.ndim == 2 and q.shape[1] else [""] * len(q)

    @property
    def fp_act(self) -> list[Any]:
        """Per row: the FP activation at 4 significant digits (None: not finite)."""
        return _round4(self._fp_act)

    @property
    def comp_act(self) -> list[Any]:
        return _round4(self._comp_act)

    @property
    def sp_fp(self) -> list[str]:
        """Per row: the FP window's digits (see ``_digits``)."""
        return self._sparse(self._q_fp)

    @property
    def sp_c(self) -> list[str]:
        return self._sparse(self._q_c)

    def blocks(self, n_configs: int) -> dict[str, tuple[str, list[int]]]:
        """Per "hookIndex:feature": the embedded contexts (as JSON text) and the rows they use.

        A block is ``{"s": scale, "f": [[ctx, pos, fp_act, fp_digits]...] (FP top, by rank),
        "c": per configuration [[compressed_act, compressed_digits]...] aligned with "f",
        "t": per configuration its own top: [ctx, pos, compressed_act, fp_act, compressed_digits,
        fp_digits, in_both] or [j] for the shown FP entry j it shares}``; digits: one per window
        position (see ``_sparse``). "f" holds the FP top of the block's first configuration;
        a configuration without FP-top rows has ``null`` in "c", one without rows of its own
        top ``null`` in "t". Built with array operations and one string join per list (the
        feature explorer's blocks for a 16k-wide SAE hold over a million rows).
        """
        import numpy as np

        n = len(self.h)
        if n == 0:
            return {}
        order = np.lexsort((self.rank, self.c, self.kind, self.f, self.h))
        h, f, kind, c = self.h[order], self.f[order], self.kind[order], self.c[order]
        cx, pos, both = self.context[order], self.position[order], self.both[order]
        new = np.r_[True, (h[1:] != h[:-1]) | (f[1:] != f[:-1])]
        bid = np.cumsum(new) - 1
        starts = np.flatnonzero(new)
        nb = len(starts)
        first_conf = np.where(kind[starts] == 0, c[starts], -1)[bid]
        is_f = (kind == 0) & (c == first_conf)
        # "f" slots: the rank among the block's FP-top rows of its first configuration
        f_count = np.cumsum(is_f)
        f_before = (f_count - is_f)[starts]  # FP-top rows in earlier blocks
        slot = np.where(is_f, f_count - 1 - f_before[bid], -1)
        # other rows find the "f" slot of their (context, position) in their block (the last one
        # wins if a spot repeats, as a dict would)
        span_p = int(pos.max()) + 1
        span_c = (int(cx.max()) + 1) * span_p
        spot = bid * span_c + cx * span_p + pos
        fk, fs = spot[is_f], slot[is_f]
        by_key = np.argsort(fk, kind="stable")
        fk, fs = fk[by_key], fs[by_key]
        last = np.r_[fk[1:] != fk[:-1], True] if len(fk) else np.zeros(0, bool)
        fk, fs = fk[last], fs[last]
        if len(fk):
            j = np.searchsorted(fk, spot).clip(max=len(fk) - 1)
            looked = np.where(fk[j] == spot, fs[j], -1)
        else:
            looked = np.full(n, -1)
        slot = np.where(is_f, slot, looked)
        fi = np.flatnonzero(is_f)  # rows of "f"
        k0 = np.flatnonzero(kind == 0)
        ci = k0[slot[k0] >= 0]  # rows of "c"
        ti = np.flatnonzero(kind == 1)  # rows of "t"; written out in full unless shared with "f"
        shared = both[ti] & (slot[ti] >= 0)
        own = ti[~shared]
        # the JSON texts of the rows that are written (activations: None -> null; digits quoted):
        # FP-side texts for the "f" rows then the own-top rows written out, compressed-side texts
        # for the "c" rows then those same own-top rows
        nfi, nci = len(fi), len(ci)
        with_fp, with_c = np.concatenate([fi, own]), np.concatenate([ci, own])
        fa = _json_numbers(self._fp_act[order[with_fp]])
        ca = _json_numbers(self._comp_act[order[with_c]])
        spf = _digit_strings(self._q_fp[order[with_fp]])
        spc = _digit_strings(self._q_c[order[with_c]])
        # "f": one list per block
        f_frag = _format_rows("[%d,%d,%s,%s]", cx[fi], pos[fi], fa[:nfi], spf[:nfi])
        f_lists = _joined(f_frag, bid[fi], nb)
        # "c": per block and configuration, entries placed at their slots (gaps: null)
        has_c = _present(bid[k0] * n_configs + c[k0], nb * n_configs)
        g = bid[ci] * n_configs + c[ci]
        length = np.zeros(nb * n_configs, dtype=np.int64)
        np.maximum.at(length, g, slot[ci] + 1)
        offset = np.cumsum(length) - length
        cells = np.full(int(length.sum()), "null", dtype=object)
        cells[offset[g] + slot[ci]] = _format_rows("[%s,%s]", ca[:nci], spc[:nci])
        c_lists = _joined(cells.tolist(), np.repeat(np.arange(nb * n_configs), length), nb * n_configs)
        # "t": per block and configuration, its own top by rank (a shared spot: [its "f" slot])
        t_frag = np.empty(len(ti), dtype=object)
        t_frag[shared] = _format_rows("[%d]", slot[ti[shared]])
        t_frag[~shared] = _format_rows("[%d,%d,%s,%s,%s,%s,%d]", cx[own], pos[own], ca[nci:], fa[nfi:],
                                       spc[nci:], spf[nfi:], both[own].astype(np.int64))
        t_frag = t_frag.tolist()
        tg = bid[ti] * n_configs + c[ti]
        t_lists = _joined(t_frag, tg, nb * n_configs)
        has_t = _present(tg, nb * n_configs)
        # the rows each block uses: its "f" rows, then its own-top rows not shared with "f"
        used = np.concatenate([fi, ti[~shared]])
        used = used[np.lexsort((np.arange(len(used)), bid[used]))]
        used_rows = np.split(order[used], np.searchsorted(bid[used], np.arange(1, nb)))
        # per block: "c" and "t" list one entry per configuration ([...] or null), then the block
        cg = [f"[{x}]" if present else "null" for x, present in zip(c_lists, has_c)]
        tg_ = [f"[{x}]" if present else "null" for x, present in zip(t_lists, has_t)]
        per_block = ",".join(["%s"] * n_configs)
        cs = _format_rows(per_block, *(cg[j::n_configs] for j in range(n_configs)))
        ts = _format_rows(per_block, *(tg_[j::n_configs] for j in range(n_configs)))
        scale = _json_numbers(self.scale[order[starts]])
        text = _format_rows('{"s":%s,"f":[%s],"c":[%s],"t":[%s]}', scale, f_lists, cs, ts)
        keys = _format_rows("%d:%d", h[starts], f[starts])
        return {key: (block, rows.tolist()) for key, block, rows in zip(keys, text, used_rows)}

    def tokens(self, rows: list[int]) -> tuple[list[str], dict[str, list[int]]]:
        """The token table and, per context used by ``rows``, its tokens from the first stored position."""
        import numpy as np

        if not rows:
            return [], {}
        r = np.asarray(rows)
        width = self.ids.shape[1]
        ctx = np.repeat(self.context[r], width)
        pos = (self.start[r][:, None] + np.arange(width)[None, :]).ravel()
        ids = self.ids[r].ravel()
        ok = ids >= 0
        ctx, pos, ids = ctx[ok], pos[ok], ids[ok]
        used_ctx = np.unique(self.context[r])
        row_of = np.searchsorted(used_ctx, ctx)
        grid = np.full((len(used_ctx), int(pos.max()) + 1), -1, dtype=np.int64)  # O(contexts x positions)
        grid[row_of, pos] = ids
        present = np.unique(grid[grid >= 0])
        strings = [self.tok_strings[j] for j in np.searchsorted(self.tok_ids, present).tolist()]
        codes = np.where(grid >= 0, np.searchsorted(present, grid.clip(min=0)), -1)
        out: dict[str, list[int]] = {}
        has = grid >= 0
        lo = has.argmax(axis=1)
        hi = grid.shape[1] - 1 - has[:, ::-1].argmax(axis=1)
        for i, c in enumerate(used_ctx.tolist()):
            out[str(c)] = [int(lo[i])] + codes[i, lo[i]:hi[i] + 1].tolist()
        return strings, out


def _feature_rows(features: Any, hooks: list[str], configs: list[str]) -> list[dict[str, Any]]:
    """Per hook: the active features' FP statistics and, per configuration, r / band / extras."""
    import numpy as np

    out = []
    for hook in hooks:
        fh = features[features["hook"].astype(str) == hook] if "hook" in features.columns else features
        if "active" in fh.columns:
            fh = fh[fh["active"].astype(bool)]
        ids = np.sort(fh["feature"].astype(int).unique())
        first = fh.drop_duplicates("feature").set_index("feature").reindex(ids)
        stats = {s: _g_list(first[s]) for s in FP_STATS + EXTRA_STATS
                 if s in first.columns and first[s].notna().any()}
        entry: dict[str, Any] = {"id": [int(i) for i in ids], "s": stats, "r": [], "b": [], "sil": [], "ov": []}
        for config in configs:
            fc = fh[fh["config"].astype(str) == config].drop_duplicates("feature").set_index("feature").reindex(ids)
            entry["r"].append(_g_list(fc["r"]) if "r" in fc.columns else [None] * len(ids))
            entry["b"].append(_band_codes(fc["band"]) if "band" in fc.columns else [-1] * len(ids))
            entry["sil"].append([1 if v is True or v == 1 else 0 for v in fc["silenced"]]
                                if "silenced" in fc.columns else [])
            ov = "contexts.top_overlap"
            entry["ov"].append(_g_list(fc[ov]) if ov in fc.columns else [])
        out.append(entry)
    return out


def _band_codes(bands: Any) -> list[int]:
    """``BAND_CODE`` of each band (-1: none or unknown), through the column's few distinct values."""
    import numpy as np
    import pandas as pd

    seen, distinct = pd.factorize(bands, use_na_sentinel=False)
    codes = np.asarray([BAND_CODE.get(str(v), -1) for v in distinct], dtype=np.int64)
    return codes[np.asarray(seen, dtype=np.int64)].tolist() if len(distinct) else []


def _priority(feats: list[dict[str, Any]], watched: set[tuple[int, int]]) -> dict[str, float]:
    """Lower first: watched features, then by their lowest r across configurations."""
    out = {}
    for h, entry in enumerate(feats):
        for i, fid in enumerate(entry["id"]):
            rs = [rows[i] for rows in entry["r"] if rows and rows[i] is not None]
            out[f"{h}:{fid}"] = (-10.0 if (h, fid) in watched else 0.0) + (min(rs) if rs else 2.0)
    return out


def _watched(summary: dict[str, Any], hooks: list[str]) -> list[list[Any]]:
    section = (summary or {}).get("watched")
    items = section.get("features") if isinstance(section, dict) else None
    out = []
    for item in items or []:
        hook = item.get("hook")
        if hook in hooks:
            out.append([hooks.index(hook), int(item.get("feature")), item.get("name") or "", item.get("note") or ""])
    return out


def explorer_data(run: Any, contexts: Any = None, *, shown: int = SHOWN) -> tuple[dict[str, Any], Any]:
    """The page's data without its contexts, and the shown contexts as arrays (or None)."""
    import pandas as pd

    from featsurv.watch import thresholds

    features = run.features
    summary = run.summary or {}
    hooks = sorted(str(h) for h in features["hook"].unique()) if "hook" in features.columns and len(features) else []
    configs = list(dict.fromkeys(str(c) for c in pd.unique(features["config"]))) if len(features) else []
    results = [r for r in summary.get("results") or [] if isinstance(r, dict)]
    order = list(dict.fromkeys(str(r.get("label")) for r in results if str(r.get("label")) in configs))
    configs = order + [c for c in configs if c not in order]
    feats = _feature_rows(features, hooks, configs) if hooks else []
    windows = _Windows(contexts, hooks, configs, shown) if contexts is not None and len(contexts) else None
    np_ids = neuronpedia_ids(summary)
    base = summary.get("baseline") or {}
    data = {
        "v": 1,
        "hooks": hooks, "configs": configs,
        "th": thresholds(summary),
        "np": [np_ids.get(h) for h in hooks],
        "stats": sorted({s for e in feats for s in e["s"]}, key=lambda s: (FP_STATS + EXTRA_STATS).index(s)),
        "feats": feats,
        "watched": _watched(summary, hooks),
        "run": {"n_tokens": base.get("n_tokens"), "command": (run.run or {}).get("command"),
                "run_id": summary.get("run_id"), "schema_version": summary.get("schema_version")},
        "has_contexts": windows is not None,
        "shown": shown,
        "window": windows.window if windows is not None else 0,
        "levels": LEVELS,
    }
    return data, windows


def _estimate(raw: str, chunk: int = 131072, samples: int = 8) -> float:
    """Estimated page bytes of ``raw`` once encoded (compressing evenly spaced samples only)."""
    n = len(raw)
    if n <= PLAIN_LIMIT:
        return float(n)
    step = max(chunk, n // samples)
    parts = [raw[i:i + chunk].encode("utf-8") for i in range(0, n, step)]
    ratio = sum(len(zlib.compress(p, 6)) for p in parts) / max(1, sum(len(p) for p in parts))
    return n * ratio * 4 / 3 + 60_000


def _encode(raw: str) -> tuple[str, str]:
    if len(raw.encode("utf-8")) <= PLAIN_LIMIT:
        return "json", raw.replace("<", "\\u003c")
    return "deflate-base64", base64.b64encode(zlib.compress(raw.encode("utf-8"), 6)).decode("ascii")


def _render(payload: tuple[str, str], title: str) -> str:
    import html

    enc, text = payload
    css = (ASSETS / "explorer.css").read_text(encoding="utf-8")
    js = (ASSETS / "explorer.js").read_text(encoding="utf-8")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{css}</style>", "</head>",
        '<body><div id="app"><p id="loading">Loading the feature explorer…</p></div>',
        f'<script type="application/octet-stream" id="data" data-enc="{enc}">{text}</script>',
        f"<script>{js}</script>", "</body>", "</html>", ""])


def build_explorer(run: Any, contexts: Any = None, *, shown: int = SHOWN, budget: int = BUDGET,
                   title: str = "featsurv feature explorer") -> tuple[str, dict[str, Any]]:
    """The explorer page for a run, and facts about it (features, contexts embedded, bytes)."""
    if contexts is None:
        contexts = load_contexts(run)
    data, windows = explorer_data(run, contexts, shown=shown)
    blocks = windows.blocks(len(data["configs"])) if windows is not None else {}
    watched = {(w[0], w[1]) for w in data["watched"]}
    prio = _priority(data["feats"], watched)
    keys = sorted((k for k in blocks if k in prio), key=lambda k: (prio[k], k))  # active features only
    sizes = [len(blocks[k][0]) for k in keys]
    n = len(keys)
    for attempt in range(8):
        last = attempt == 7 or n == 0
        chosen = keys[:n]
        tok, ctx = windows.tokens([i for k in chosen for i in blocks[k][1]]) if windows else ([], {})
        data.update({"n_cx": n, "n_cx_total": len(keys), "tok": tok, "ctx": ctx})
        head = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        raw = head[:-1] + ',"cx":{' + ",".join(f'"{k}":{blocks[k][0]}' for k in chosen) + "}}"
        estimate = _estimate(raw)
        if estimate > budget and not last:  # shrink before compressing it all
            ratio = estimate / max(1, len(raw))
        else:
            enc = _encode(raw)
            page = _render(enc, title)
            size = len(page.encode("utf-8"))
            if size <= budget or last:
                break
            ratio = size / max(1, len(raw))
        # keep the most damaged features: as many blocks as the measured bytes per raw byte allow
        allowed = (budget * 0.97 / ratio) - (len(raw) - sum(sizes[:n]))
        cum, m = 0, 0
        while m < n and cum + sizes[m] + 8 <= allowed:
            cum += sizes[m] + 8
            m += 1
        n = min(m, n - 1)
    facts = {"bytes": size, "features": sum(len(e["id"]) for e in data["feats"]), "contexts_features": n,
             "contexts_features_total": len(keys), "encoding": enc[0]}
    return page, facts


def write_explorer(run: Any, out_dir: str | Path, **kwargs: Any) -> Path:
    """Write explorer.html into ``out_dir`` (atomically); return its path."""
    from featsurv.results import write_text_atomic

    page, _ = build_explorer(run, **kwargs)
    path = Path(out_dir) / EXPLORER_FILE
    write_text_atomic(path, page)
    return path


def explorer_section(run: Any) -> ReportSection | None:
    """The report section linking explorer.html (written beside report.html)."""
    import html

    if run.features is None or not len(run.features):
        return None
    page, facts = build_explorer(run)
    ctx = (f"top-activating contexts for {facts['contexts_features']} of {facts['contexts_features_total']} features"
           + (" (the most damaged first; the page's size budget holds no more)"
              if facts["contexts_features"] < facts["contexts_features_total"] else "")
           if facts["contexts_features_total"] else "no contexts (the contexts metric did not run)")
    body = (f'<p><a href="{EXPLORER_FILE}"><strong>Open the feature explorer</strong></a>: '
            f"{facts['features']} active features (sortable, filterable table; r against FP firing rate; "
            f"per-feature view), {html.escape(ctx)}. Self-contained ({facts['bytes'] / 2**20:.1f} MiB), works offline.</p>"
            "<p class=\"note\">In a terminal: <code>featsurv features RUN --worst 10</code>.</p>")
    return ReportSection("Feature explorer", body, files={EXPLORER_FILE: page.encode("utf-8")}, order=20)
