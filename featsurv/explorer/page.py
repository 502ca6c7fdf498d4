"""The feature explorer: one self-contained ``explorer.html`` built from a finished run.

Inputs: the run's features table (``run.features``), its ``contexts`` table when the
``contexts`` metric ran (``contexts.parquet``), and ``summary.json`` (thresholds, the SAEs'
Neuronpedia ids, the watch list). Output: an HTML page with inline CSS and JavaScript and the
data embedded as JSON (deflate-compressed and base64-encoded when large); it loads nothing from
the network and works from ``file://``.

Size: only active features get rows; numbers carry 4 significant digits; window activations
are stored sparsely (non-zero positions only) and quantized to 1..99 of the feature's largest
shown activation (exact values at the activating token are kept); the tokens of each context
are stored once. Contexts are embedded for at most ``shown`` per feature and kind; when the
page would exceed ``budget`` bytes, contexts are kept for the most damaged features first.
"""
from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path
from typing import Any

from ..base import ReportSection

EXPLORER_FILE = "explorer.html"
SHOWN = 8  # contexts per feature and kind embedded in the page
BUDGET = 9_500_000  # bytes of the whole page
PLAIN_LIMIT = 1_500_000  # raw JSON up to this size is embedded uncompressed
BAND_CODE = {"survived": 0, "blurred": 1, "damaged": 2}
FP_STATS = ("firing_rate", "mean_act", "peak_act")
EXTRA_STATS = ("decoder_norm", "encoder_norm", "encoder_bias", "threshold")
ASSETS = Path(__file__).resolve().parent


def _g(v: Any) -> Any:
    """A compact JSON number (4 significant digits), None for missing or non-finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    if f == int(f) and abs(f) < 1e9:
        return int(f)
    return float(f"{f:.4g}")


def load_contexts(run: Any) -> Any:
    """The run's contexts table: in memory (``run.tables`` / ``run.extra``) or contexts.parquet."""
    for holder in (getattr(run, "tables", None), (getattr(run, "extra", None) or {}).get("tables")):
        if isinstance(holder, dict) and holder.get("contexts") is not None:
            return holder["contexts"]
    path = getattr(run, "path", None)
    if path is not None and (Path(path) / "contexts.parquet").is_file():
        import pandas as pd

        return pd.read_parquet(Path(path) / "contexts.parquet")
    return None


def neuronpedia_ids(summary: dict[str, Any]) -> dict[str, str]:
    """hook -> the SAE's Neuronpedia id (sae-lens ``cfg.metadata.neuronpedia_id``), where known."""
    saes = ((summary or {}).get("baseline") or {}).get("saes") or {}
    return {h: str(s["neuronpedia_id"]) for h, s in saes.items() if isinstance(s, dict) and s.get("neuronpedia_id")}


def _stack(column: Any, width: int, fill: Any, dtype: Any) -> Any:
    """A list column (one array per row) as a 2-D array ``[rows, width]``."""
    import numpy as np

    out = np.full((len(column), width), fill, dtype=dtype)
    for i, v in enumerate(column):
        if v is not None and len(v):
            out[i, :len(v)] = v
    return out


class _Windows:
    """The shown contexts as arrays, one row per (hook, config, feature, kind, rank)."""

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
        self.fp_act = ctx["fp_act"].to_numpy(np.float64)
        self.comp_act = ctx["compressed_act"].to_numpy(np.float64)
        self.both = ctx["in_both"].to_numpy(bool)
        self.window = int((self.position - self.start)[0]) if len(ctx) else 0
        width = 2 * self.window + 1
        self.ids = _stack(ctx["window_ids"].to_numpy(), width, -1, np.int64)
        self.toks = _stack(ctx["window_tokens"].to_numpy(), width, "", object)
        fpw = _stack(ctx["fp_window"].to_numpy(), width, np.nan, np.float64)
        cw = _stack(ctx["compressed_window"].to_numpy(), width, np.nan, np.float64)
        fpw, cw = np.where(fpw > 0, fpw, 0.0), np.where(cw > 0, cw, 0.0)  # NaN (not kept) -> 0
        peak = np.maximum(fpw.max(axis=1, initial=0.0), cw.max(axis=1, initial=0.0))
        key = self.h * (1 << 32) + self.f
        scale = pd.Series(peak).groupby(key).transform("max").to_numpy() if len(ctx) else peak
        self.scale = np.where(scale > 0, scale, 1.0)
        self.sp_fp = self._sparse(fpw)
        self.sp_c = self._sparse(cw)

    def _sparse(self, w: Any) -> list[list[int]]:
        """Per row: [offset, q, offset, q, ...] over its positive values, q in 1..99."""
        import numpy as np

        q = np.where(w > 0, np.clip(np.rint(99 * w / self.scale[:, None]), 1, 99), 0).astype(np.int64)
        rows, cols = np.nonzero(q)
        pairs = np.column_stack([cols, q[rows, cols]])
        bounds = np.searchsorted(rows, np.arange(len(q) + 1))
        flat = pairs.ravel().tolist()
        return [flat[2 * a:2 * b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]

    def blocks(self, n_configs: int) -> dict[str, tuple[dict[str, Any], list[int]]]:
        """Per "hookIndex:feature": the embedded contexts and the rows they use."""
        import numpy as np

        order = np.lexsort((self.rank, self.c, self.kind, self.f, self.h))
        cols = [a.tolist() for a in (self.h, self.f, self.kind, self.c, self.context, self.position,
                                      self.fp_act, self.comp_act, self.both, self.scale)]
        blocks: dict[str, tuple[dict[str, Any], list[int]]] = {}
        fp_rows: dict[tuple[int, int], int] = {}
        first_conf = -1
        for i in order.tolist():
            h, f, kind, c, cx, pos, fa, ca, both, scale = (col[i] for col in cols)
            name = f"{h}:{f}"
            entry = blocks.get(name)
            if entry is None:
                entry = blocks[name] = ({"s": _g(scale), "f": [], "c": [None] * n_configs, "t": [None] * n_configs}, [])
                fp_rows, first_conf = {}, c if kind == 0 else -1
            block, rows = entry
            if kind == 0:
                if c == first_conf:
                    fp_rows[(cx, pos)] = len(block["f"])
                    block["f"].append([cx, pos, _g(fa), self.sp_fp[i]])
                    rows.append(i)
                lst = block["c"][c]
                if lst is None:
                    lst = block["c"][c] = [None] * len(fp_rows)
                slot = fp_rows.get((cx, pos))
                if slot is not None:
                    if slot >= len(lst):
                        lst.extend([None] * (slot + 1 - len(lst)))
                    lst[slot] = [_g(ca), self.sp_c[i]]
            else:
                if block["t"][c] is None:
                    block["t"][c] = []
                block["t"][c].append([cx, pos, _g(ca), _g(fa), self.sp_c[i], self.sp_fp[i], 1 if both else 0])
                rows.append(i)
        return blocks

    def tokens(self, rows: list[int]) -> tuple[list[str], dict[str, list[int]]]:
        """The token table and, per context used by ``rows``, its tokens from the first stored position."""
        import numpy as np
        import pandas as pd

        if not rows:
            return [], {}
        r = np.asarray(rows)
        width = self.ids.shape[1]
        ctx = np.repeat(self.context[r], width)
        pos = (self.start[r][:, None] + np.arange(width)[None, :]).ravel()
        ok = self.ids[r].ravel() >= 0
        cells = pd.DataFrame({"ctx": ctx[ok], "pos": pos[ok], "tok": self.toks[r].ravel()[ok]})
        cells = cells.drop_duplicates(["ctx", "pos"]).sort_values(["ctx", "pos"], kind="mergesort")
        codes, strings = pd.factorize(cells["tok"], sort=False)
        out: dict[str, list[int]] = {}
        cx, ps = cells["ctx"].to_numpy(), cells["pos"].to_numpy()
        bounds = np.flatnonzero(np.diff(cx)) + 1
        for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, len(cx)].tolist()):
            lo, hi = int(ps[a]), int(ps[b - 1])
            line = np.full(hi - lo + 1, -1, dtype=np.int64)
            line[ps[a:b] - lo] = codes[a:b]
            out[str(int(cx[a]))] = [lo] + line.tolist()
        return [str(t) for t in strings], out


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
        stats = {s: [_g(v) for v in first[s]] for s in FP_STATS + EXTRA_STATS
                 if s in first.columns and first[s].notna().any()}
        entry: dict[str, Any] = {"id": [int(i) for i in ids], "s": stats, "r": [], "b": [], "sil": [], "ov": []}
        for config in configs:
            fc = fh[fh["config"].astype(str) == config].drop_duplicates("feature").set_index("feature").reindex(ids)
            entry["r"].append([_g(v) for v in fc["r"]] if "r" in fc.columns else [None] * len(ids))
            entry["b"].append([BAND_CODE.get(str(v), -1) for v in fc["band"]] if "band" in fc.columns
                              else [-1] * len(ids))
            entry["sil"].append([1 if v is True or v == 1 else 0 for v in fc["silenced"]]
                                if "silenced" in fc.columns else [])
            ov = "contexts.top_overlap"
            entry["ov"].append([_g(v) for v in fc[ov]] if ov in fc.columns else [])
        out.append(entry)
    return out


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
    features = run.features
    summary = run.summary or {}
    hooks = sorted(str(h) for h in features["hook"].unique()) if "hook" in features.columns and len(features) else []
    configs = list(dict.fromkeys(str(c) for c in features["config"])) if len(features) else []
    results = [r for r in summary.get("results") or [] if isinstance(r, dict)]
    order = list(dict.fromkeys(str(r.get("label")) for r in results if str(r.get("label")) in configs))
    configs = order + [c for c in configs if c not in order]
    opts = summary.get("options") or {}
    feats = _feature_rows(features, hooks, configs) if hooks else []
    windows = _Windows(contexts, hooks, configs, shown) if contexts is not None and len(contexts) else None
    np_ids = neuronpedia_ids(summary)
    base = summary.get("baseline") or {}
    data = {
        "v": 1,
        "hooks": hooks, "configs": configs,
        "th": {"survived_above": float(opts.get("survived_above", 0.9)),
               "damaged_below": float(opts.get("damaged_below", 0.5))},
        "np": [np_ids.get(h) for h in hooks],
        "stats": sorted({s for e in feats for s in e["s"]}, key=lambda s: (FP_STATS + EXTRA_STATS).index(s)),
        "feats": feats,
        "watched": _watched(summary, hooks),
        "run": {"n_tokens": base.get("n_tokens"), "perplexity": _g(base.get("perplexity")),
                "command": (run.run or {}).get("command"), "path": str(getattr(run, "path", "") or "")},
        "has_contexts": windows is not None,
        "shown": shown,
        "window": windows.window if windows is not None else 0,
    }
    return data, windows


def _encode(data: dict[str, Any]) -> tuple[str, str]:
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
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
    n = len(keys)
    while True:
        chosen = keys[:n]
        data["cx"] = {k: blocks[k][0] for k in chosen}
        data["tok"], data["ctx"] = windows.tokens([i for k in chosen for i in blocks[k][1]]) if windows else ([], {})
        data["n_cx"], data["n_cx_total"] = n, len(keys)
        enc = _encode(data)
        page = _render(enc, title)
        size = len(page.encode("utf-8"))
        if size <= budget or n == 0:
            break
        n = max(0, min(n - 1, int(n * budget / size * 0.95)))
    facts = {"bytes": size, "features": sum(len(e["id"]) for e in data["feats"]), "contexts_features": n,
             "contexts_features_total": len(keys), "encoding": enc[0]}
    return page, facts


def write_explorer(run: Any, out_dir: str | Path, **kwargs: Any) -> Path:
    """Write explorer.html into ``out_dir`` (atomically); return its path."""
    from ..results import write_text_atomic

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
