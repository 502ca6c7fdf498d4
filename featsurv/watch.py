"""Watch lists: the features a finding rests on, and whether each survived compression.

A watch file is text or CSV, one feature per line; blank lines and lines starting with ``#``
are skipped. A line is ``hook,feature[,name[,note]]`` or ``feature[,name[,note]]`` (tabs work
like commas; a line of bare ids may also hold several separated by spaces). A first line naming
its columns (``hook,feature,name,note`` in any order; ``feature`` required, other columns
ignored) makes it a CSV with a header. Bare ids need a run with one hook point.

:func:`watched_section` turns a watch list and a run's features table into the ``watched``
section of summary.json; :func:`gate_lines` into `featsurv gate --watch` verdicts.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import FeatsurvError

COLUMNS = ("hook", "feature", "name", "note")
FORMAT_HINT = ("Write one feature per line as hook,feature[,name[,note]] or feature[,name[,note]]; "
               "an optional first line hook,feature,name,note names the columns")


@dataclass(frozen=True)
class WatchItem:
    """One watched feature: its id, its hook (None: the run's only hook), a name and a note."""

    feature: int
    hook: str | None = None
    name: str = ""
    note: str = ""


def _feature_id(raw: str, where: str) -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise FeatsurvError(f"{where}: {raw.strip()!r} is not a feature id",
                            allowed="a whole number of 0 or more", hint=FORMAT_HINT) from None
    if value < 0:
        raise FeatsurvError(f"{where}: feature id {value} is negative",
                            allowed="a whole number of 0 or more", hint=FORMAT_HINT)
    return value


def _is_int(text: str) -> bool:
    try:
        int(text.strip())
    except ValueError:
        return False
    return True


def parse_watch(text: str, source: str = "watch list") -> list[WatchItem]:
    """Parse a watch list's text (see the module docstring); duplicates keep their first line."""
    items: list[WatchItem] = []
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{source[:1].upper()}{source[1:]}, line {number}"
        delimiter = "\t" if "\t" in stripped and "," not in stripped else ","
        fields = [f.strip() for f in next(csv.reader(io.StringIO(stripped), delimiter=delimiter, skipinitialspace=True))]
        if header is None and not items and "feature" in [f.lower() for f in fields]:
            header = [f.lower() for f in fields]
            continue
        if header is not None:
            row = dict(zip(header, fields))
            if not row.get("feature"):
                raise FeatsurvError(f"{where}: no value in the feature column", hint=FORMAT_HINT)
            items.append(WatchItem(_feature_id(row["feature"], where), row.get("hook") or None,
                                   row.get("name", ""), row.get("note", "")))
        elif len(fields) == 1:  # bare ids, one or several separated by spaces
            items += [WatchItem(_feature_id(t, where)) for t in fields[0].split()]
        elif _is_int(fields[0]):
            if len(fields) > 3:
                raise FeatsurvError(f"{where}: {len(fields)} fields after a bare feature id",
                                    hint=FORMAT_HINT)
            items.append(WatchItem(_feature_id(fields[0], where), None, *(fields[1:] + ["", ""])[:2]))
        else:
            if len(fields) > 4:
                raise FeatsurvError(f"{where}: {len(fields)} fields in {stripped!r}", hint=FORMAT_HINT)
            items.append(WatchItem(_feature_id(fields[1], where), fields[0], *(fields[2:] + ["", ""])[:2]))
    seen: set[tuple[str | None, int]] = set()
    unique = []
    for item in items:
        if (item.hook, item.feature) not in seen:
            seen.add((item.hook, item.feature))
            unique.append(item)
    if not unique:
        raise FeatsurvError(f"The {source} names no features", hint=FORMAT_HINT)
    return unique


def load_watch(path: str | Path) -> list[WatchItem]:
    """Read and parse a watch file; a missing or unreadable file is a FeatsurvError."""
    p = Path(path)
    if not p.is_file():
        raise FeatsurvError(f"Watch file {str(path)!r} does not exist", hint="Pass --watch PATH to a text or CSV file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatsurvError(f"Cannot read watch file {str(path)!r}: {exc}", hint="Pass a UTF-8 text or CSV file") from None
    return parse_watch(text, f"watch file {str(path)!r}")


def as_watch_list(watch: Any) -> list[WatchItem]:
    """A watch list from a path, a list of WatchItem, or (hook, feature) / feature values."""
    if isinstance(watch, (str, Path)):
        return load_watch(watch)
    out = []
    for w in watch:
        if isinstance(w, WatchItem):
            out.append(w)
        elif isinstance(w, (tuple, list)):
            out.append(WatchItem(int(w[1]), str(w[0]), *[str(x) for x in w[2:4]]))
        else:
            out.append(WatchItem(int(w)))
    if not out:
        raise FeatsurvError("The watch list names no features", hint=FORMAT_HINT)
    return out


def resolve_watch(features: Any, watch: Any) -> list[WatchItem]:
    """Check a watch list against a run's features table; fill in the hook of bare ids.

    Unknown hooks, ids the hook's SAE does not have, and bare ids in a run of several hooks are
    one FeatsurvError naming every offender.
    """
    items = as_watch_list(watch)
    if features is None or not len(features):
        raise FeatsurvError("The run has no per-feature table to check the watch list against",
                            hint="Run an audit with at least one configuration")
    hooks = sorted(str(h) for h in features["hook"].unique())
    unknown_hooks = sorted({i.hook for i in items if i.hook is not None and i.hook not in hooks})
    if unknown_hooks:
        raise FeatsurvError(f"The watch list names hook(s) this run did not audit: {', '.join(unknown_hooks)}",
                            allowed=hooks, hint="Fix the hook column of the watch file")
    bare = [i for i in items if i.hook is None]
    if bare and len(hooks) > 1:
        ids = ", ".join(str(i.feature) for i in bare[:10]) + (" ..." if len(bare) > 10 else "")
        raise FeatsurvError(f"The watch list gives bare feature ids ({ids}) but this run audits {len(hooks)} hooks",
                            allowed=hooks, hint="Write hook,feature lines so each id names its SAE")
    have = {h: set(features.loc[features["hook"].astype(str) == h, "feature"].astype(int)) for h in hooks}
    resolved = [WatchItem(i.feature, i.hook or hooks[0], i.name, i.note) for i in items]
    missing = [i for i in resolved if i.feature not in have[i.hook]]
    if missing:
        sizes = ", ".join(f"{h}: 0..{max(v)}" for h, v in have.items() if v)
        raise FeatsurvError("The watch list names feature id(s) this run does not have: "
                            + ", ".join(f"{i.feature} @ {i.hook}" for i in missing),
                            allowed=sizes, hint="Feature ids index each SAE's features from 0")
    seen: set[tuple[str, int]] = set()
    out = []
    for i in resolved:
        if (i.hook, i.feature) not in seen:
            seen.add((i.hook, i.feature))
            out.append(i)
    return out


def _r(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def watched_section(features_df: Any, watch_list: Any, survived_above: float = 0.9) -> dict[str, Any]:
    """The ``watched`` section of summary.json: per configuration, each watched feature's r, band
    and whether it survived (r > ``survived_above``), and the watched survival fraction."""
    items = resolve_watch(features_df, watch_list)
    df = features_df
    configs = list(dict.fromkeys(str(c) for c in df["config"]))
    key = df["hook"].astype(str) + "\0" + df["feature"].astype(int).astype(str)
    wanted = {f"{i.hook}\0{i.feature}": i for i in items}
    sub = df[key.isin(set(wanted))]
    out_configs = []
    for config in configs:
        rows = sub[sub["config"].astype(str) == config]
        by = {(str(r["hook"]), int(r["feature"])): r for r in rows.to_dict("records")}
        feats = []
        for i in items:
            rec = by.get((i.hook, i.feature))
            if rec is None:
                continue
            r = _r(rec.get("r"))
            feats.append({"hook": i.hook, "feature": i.feature, "name": i.name, "r": r,
                          "band": str(rec.get("band", "")), "active": bool(rec.get("active", True)),
                          "survived": r is not None and r > survived_above})
        if not feats:
            continue
        n_surv = sum(f["survived"] for f in feats)
        out_configs.append({"config": config, "n": len(feats), "n_survived": n_surv,
                            "survived": n_surv / len(feats),
                            "features": feats,
                            "not_survived": [{"hook": f["hook"], "feature": f["feature"], "name": f["name"]}
                                             for f in feats if not f["survived"]]})
    return {"survived_above": survived_above, "n": len(items),
            "features": [asdict(i) for i in items], "configs": out_configs}


def _name(f: dict[str, Any], show_hook: bool) -> str:
    text = str(f["feature"]) + (f" @ {f['hook']}" if show_hook else "")
    return text + (f" ({f['name']})" if f.get("name") else "")


def gate_lines(section: dict[str, Any], min_watched_survival: float = 1.0) -> list[Any]:
    """One GateLine per configuration: its watched survival against ``min_watched_survival``,
    naming every watched feature that did not survive."""
    from .gate import GateLine

    show_hook = len({f["hook"] for f in section.get("features", [])}) > 1
    lines = []
    for entry in section.get("configs", []):
        frac, ok = entry["survived"], entry["survived"] >= min_watched_survival
        reasons = [f"watched survived {entry['n_survived']} of {entry['n']} ({frac:.2%}) "
                   f"{'>=' if ok else '<'} {min_watched_survival:.2%}"]
        lost = [f for f in entry["features"] if not f["survived"]]
        if lost:
            reasons.append("not survived: " + ", ".join(
                f"{_name(f, show_hook)} r={'n/a' if f['r'] is None else format(f['r'], '.4f')} {f['band']}"
                for f in lost))
        lines.append(GateLine(f"{entry['config']} [watched]", "", ok, reasons, frac, None))
    return lines


def thresholds(summary: dict[str, Any]) -> dict[str, float]:
    """The run's band thresholds: the metric options that define ``survived_above`` (older runs: ``options``)."""
    summary = summary or {}
    opts = next((o for o in (summary.get("metric_options") or {}).values()
                 if isinstance(o, dict) and "survived_above" in o), None) or summary.get("options") or {}
    return {"survived_above": float(opts.get("survived_above", 0.9)),
            "damaged_below": float(opts.get("damaged_below", 0.5))}


def watch_gate(result_dir: Any, watch: Any, min_watched_survival: float = 1.0,
               summary: dict[str, Any] | None = None) -> list[Any]:
    """Gate lines of a finished run's directory (read through its verified manifest) against a watch list."""
    from .results import load_run

    run = load_run(result_dir)
    above = thresholds(summary if summary is not None else run.summary)["survived_above"]
    return gate_lines(watched_section(run.features, watch, above), min_watched_survival)


__all__ = ["WatchItem", "parse_watch", "load_watch", "resolve_watch", "watched_section", "gate_lines",
           "watch_gate", "thresholds", "COLUMNS"]
