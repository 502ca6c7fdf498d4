"""`featsurv features RUN`: what the explorer shows, in the terminal (or as JSON)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from featsurv.errors import FeatsurvError

MARK = ("[[", "]]")
STATS = ("firing_rate", "mean_act", "peak_act", "decoder_norm", "encoder_norm", "encoder_bias", "threshold")


def _f(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x == x and abs(x) != float("inf") else None


def _num(v: Any) -> str:
    x = _f(v)
    return "n/a" if x is None else f"{x:.4g}"


def marked_text(tokens: Any, target: int) -> str:
    """The window's text with the activating token between [[ and ]] (newlines shown as ↵)."""
    parts = []
    for i, tok in enumerate(tokens):
        tok = str(tok).replace("\n", "↵").replace("\t", "→")
        parts.append(f"{MARK[0]}{tok}{MARK[1]}" if i == target else tok)
    return "".join(parts)


def _choose(run: Any, feature_ids: tuple[int, ...], worst: int | None, hook: str | None,
            config: str | None) -> tuple[list[tuple[str, int]], list[str]]:
    """The (hook, feature) pairs to show and the configurations, checked against the run."""
    df = run.features
    if df is None or not len(df):
        raise FeatsurvError("This run has no per-feature table (features.parquet is empty)",
                            hint="Run `featsurv audit` with at least one configuration")
    hooks = sorted(str(h) for h in df["hook"].unique())
    configs = list(dict.fromkeys(str(c) for c in df["config"]))
    if hook is not None and hook not in hooks:
        raise FeatsurvError(f"Unknown hook {hook!r} in this run", allowed=hooks, hint="Pass one of the run's hooks to --hook")
    if config is not None and config not in configs:
        raise FeatsurvError(f"Unknown configuration {config!r} in this run", allowed=configs,
                            hint="Pass a configuration label as the results table prints it")
    use_hooks = [hook] if hook else hooks
    use_configs = [config] if config else configs
    chosen: list[tuple[str, int]] = []
    if feature_ids:
        for h in use_hooks:
            have = set(df.loc[df["hook"].astype(str) == h, "feature"].astype(int))
            bad = [f for f in feature_ids if f not in have]
            if bad:
                raise FeatsurvError(f"Unknown feature id(s) {', '.join(map(str, bad))} at hook {h!r}",
                                    allowed=f"0..{max(have)}" if have else "none",
                                    hint="Feature ids index the SAE's features from 0")
            chosen += [(h, int(f)) for f in dict.fromkeys(feature_ids)]
    if worst or not feature_ids:
        k = worst or 10
        for h in use_hooks:
            sub = df[(df["hook"].astype(str) == h) & df["config"].astype(str).isin(use_configs)]
            if "active" in sub.columns:
                sub = sub[sub["active"].astype(bool)]
            low = sub.groupby("feature")["r"].min().sort_values(kind="mergesort")
            chosen += [(h, int(f)) for f in low.index[:k] if (h, int(f)) not in chosen]
    return chosen, use_configs


def _contexts(run: Any, chosen: list[tuple[str, int]]) -> Any:
    """The contexts rows of the chosen features (read with a filter), or None without a table."""
    import pandas as pd

    from .page import load_contexts

    path = Path(run.path) / "contexts.parquet" if getattr(run, "path", None) is not None else None
    if path is not None and path.is_file():
        feats = sorted({f for _, f in chosen})
        return pd.read_parquet(path, filters=[("feature", "in", feats)])
    return load_contexts(run)


def feature_records(run: Any, feature_ids: tuple[int, ...] = (), worst: int | None = None, hook: str | None = None,
                    config: str | None = None, n_contexts: int = 5) -> list[dict[str, Any]]:
    """One record per shown feature: FP statistics, r per configuration, contexts."""
    from .page import neuronpedia_ids

    chosen, configs = _choose(run, feature_ids, worst, hook, config)
    df = run.features
    ctx = _contexts(run, chosen) if chosen else None
    np_ids = neuronpedia_ids(run.summary or {})
    records = []
    for h, f in chosen:
        rows = df[(df["hook"].astype(str) == h) & (df["feature"].astype(int) == f)]
        first = rows.iloc[0]
        rec: dict[str, Any] = {"hook": h, "feature": f, "active": bool(first.get("active", True)),
                               "fp": {s: _f(first[s]) for s in STATS if s in rows.columns and _f(first[s]) is not None},
                               "configs": []}
        if h in np_ids:
            rec["neuronpedia"] = f"https://neuronpedia.org/{np_ids[h]}/{f}"
        for c in configs:
            rc = rows[rows["config"].astype(str) == c]
            if not len(rc):
                continue
            x = rc.iloc[0]
            rec["configs"].append({"config": c, "r": _f(x.get("r")), "band": str(x.get("band", "")),
                                   "silenced": bool(x.get("silenced", False)),
                                   "top_overlap": _f(x.get("contexts.top_overlap"))})
        if ctx is not None:
            sub = ctx[(ctx["hook"].astype(str) == h) & (ctx["feature"].astype(int) == f) & (ctx["rank"] < n_contexts)]
            fp_rows = sub[sub["kind"] == "fp_top"]
            fp_list: dict[tuple[int, int], dict[str, Any]] = {}
            for x in fp_rows.sort_values(["rank"], kind="mergesort").to_dict("records"):
                spot = (int(x["context"]), int(x["position"]))
                if spot not in fp_list:
                    fp_list[spot] = {"rank": int(x["rank"]), "context": spot[0], "position": spot[1],
                                     "text": marked_text(x["window_tokens"], int(x["target"])),
                                     "fp_act": _f(x["fp_act"]), "compressed_act": {}}
                if str(x["config"]) in configs:
                    fp_list[spot]["compressed_act"][str(x["config"])] = _f(x["compressed_act"])
            rec["fp_top"] = list(fp_list.values())
            rec["compressed_top"] = {}
            for c in configs:
                ct = sub[(sub["kind"] == "compressed_top") & (sub["config"].astype(str) == c)]
                rec["compressed_top"][c] = [
                    {"rank": int(x["rank"]), "context": int(x["context"]), "position": int(x["position"]),
                     "text": marked_text(x["window_tokens"], int(x["target"])), "compressed_act": _f(x["compressed_act"]),
                     "fp_act": _f(x["fp_act"]), "in_fp_top": bool(x["in_both"])}
                    for x in ct.sort_values("rank", kind="mergesort").to_dict("records")]
        records.append(rec)
    return records


def format_records(records: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for rec in records:
        fp = rec["fp"]
        stats = ", ".join(f"{k.replace('_', ' ')} {_num(v)}" for k, v in fp.items())
        lines.append(f"feature {rec['feature']} @ {rec['hook']}  ({'active' if rec['active'] else 'inactive'}; FP {stats})")
        if rec.get("neuronpedia"):
            lines.append(f"  neuronpedia: {rec['neuronpedia']}")
        rs = " · ".join(f"{c['config']} r={_num(c['r'])} {c['band']}{' (silenced)' if c['silenced'] else ''}"
                        + (f", top-k overlap {c['top_overlap']:.0%}" if c.get("top_overlap") is not None else "")
                        for c in rec["configs"])
        lines.append(f"  {rs}")
        if "fp_top" not in rec:
            lines.append("  (no contexts: this run has no contexts.parquet)")
        else:
            names = [c["config"] for c in rec["configs"]]
            lines.append(f"  top FP contexts (FP -> {', '.join(names)}):")
            for e in rec["fp_top"]:
                comp = ", ".join(_num(e["compressed_act"].get(n)) for n in names)
                lines.append(f"    #{e['rank'] + 1:<3} {_num(e['fp_act'])} -> {comp}   ctx {e['context']} pos {e['position']}   {e['text']!r}")
            if not rec["fp_top"]:
                lines.append("    (the feature never fires under FP)")
            for name, lst in rec["compressed_top"].items():
                lines.append(f"  top contexts under {name} (compressed, FP):")
                for e in lst:
                    new = "" if e["in_fp_top"] else "  [new]"
                    lines.append(f"    #{e['rank'] + 1:<3} {_num(e['compressed_act'])} (FP {_num(e['fp_act'])}){new}   "
                                 f"ctx {e['context']} pos {e['position']}   {e['text']!r}")
                if not lst:
                    lines.append("    (the feature never fires under this configuration)")
        lines.append("")
    return "\n".join(lines)


@click.command("features")
@click.argument("result_dir", metavar="RUN")
@click.option("--feature", "feature_ids", type=click.IntRange(min=0), multiple=True,
              help="Feature id to show (repeat for several).")
@click.option("--worst", type=click.IntRange(min=1), default=None,
              help="Show the K active features with the lowest r (default 10 when no --feature is given).")
@click.option("--hook", default=None, help="Only this hook point (default: every hook of the run).")
@click.option("--config", default=None, help="Only this configuration label (default: every configuration).")
@click.option("--contexts", "n_contexts", type=click.IntRange(min=0), default=5, show_default=True,
              help="Contexts shown per feature and kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def features_command(result_dir: str, feature_ids: tuple[int, ...], worst: int | None, hook: str | None,
                     config: str | None, n_contexts: int, as_json: bool) -> None:
    """Show features of a finished run: FP statistics, r per configuration, and top-activating
    contexts under FP and under compression (the activating token between [[ and ]])."""
    from featsurv.results import RunResult

    run = RunResult.load(result_dir)
    records = feature_records(run, feature_ids, worst, hook, config, n_contexts)
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        click.echo(format_records(records).rstrip())
