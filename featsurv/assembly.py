"""Turning a session's outcomes into a run's result: summary entries, the feature table, run.json."""
from __future__ import annotations

import platform
import uuid
from typing import Any, Sequence

from .audit import AuditSession
from .configuration import Outcome
from .results import RunResult
from .schema import PARAM_DTYPES, PARAM_PREFIX, SCHEMA_VERSION

VERSIONED = ("featsurv", "torch", "transformers", "sae-lens", "numpy", "scipy", "scikit-learn", "lightgbm")


def summary_entries(session: AuditSession, outcome: Outcome) -> list[dict[str, Any]]:
    """One entry per hook point of a configuration (model-only outcomes: one entry, no hook)."""
    base = {"label": outcome.label, "compressor": outcome.compressor, "params": outcome.params}
    hooks = list(outcome.features) or [None]
    return [session.metrics.entry({**base, "hook": hook}, outcome, hook, session.baseline) for hook in hooks]


def param_columns(compressor: Any, params: dict[str, Any], n: int) -> dict[str, Any]:
    """``params`` (JSON) and one ``param.NAME`` column per declared parameter, ``n`` rows each."""
    import json

    import pandas as pd

    cols: dict[str, Any] = {"params": [json.dumps(params, default=str)] * n}
    declared = [(p.name, p.type) for p in compressor.params] if compressor is not None else \
        [(k, type(v)) for k, v in params.items()]  # a compressor run without registering it (a plugin's own)
    for name, kind in declared:
        cols[PARAM_PREFIX + name] = pd.Series([params.get(name)] * n, dtype=PARAM_DTYPES.get(kind))
    return cols


def _compressor(session: AuditSession, name: str) -> Any:
    """The registered compressor ``name``, or None for one a plugin ran without registering it."""
    from .errors import FeatsurvError

    try:
        return session.compressor(name)
    except FeatsurvError:
        return None


def feature_frame(session: AuditSession, outcome: Outcome, run_id: str | None = None) -> Any:
    """features.parquet rows of one configuration: one per (hook point, feature)."""
    import numpy as np
    import pandas as pd

    frames = []
    compressor = _compressor(session, outcome.compressor)
    for hook, by_metric in outcome.features.items():
        state = session.hooks[hook]
        n = state.sae.d_sae
        cols: dict[str, Any] = {"run_id": [run_id] * n, "config": outcome.label, "compressor": outcome.compressor,
                                **param_columns(compressor, outcome.params, n), "hook": hook,
                                "feature": np.arange(n, dtype=np.int32)}
        for name, res in by_metric.items():
            cols.update(session.metrics.feature_columns(name, res.per_feature))
        cols.update(state.fp_stats)
        cols.update(state.sae.feature_stats())
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def ordered(features: Any) -> Any:
    """Identity columns first (every compressor's ``param.NAME`` together), then the measurements."""
    lead = [c for c in ("run_id", "config", "compressor", "params") if c in features.columns]
    params = [c for c in features.columns if c.startswith(PARAM_PREFIX)]
    return features[lead + params + [c for c in features.columns if c not in lead and c not in params]]


def metric_tables(outcomes: Sequence[Outcome], run_id: str | None = None) -> dict[str, Any]:
    """Every metric's extra tables, concatenated over configurations and hook points."""
    import pandas as pd

    parts: dict[str, list[Any]] = {}
    for out in outcomes:
        for hook, by_metric in out.features.items():
            for res in by_metric.values():
                for name, table in res.tables.items():
                    parts.setdefault(name, []).append(table.assign(run_id=run_id, config=out.label, hook=hook))
    return {f"{name}.parquet": pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_record(session: AuditSession, command: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json: what defined the run, where it ran, with what, and how long each part took."""
    import torch

    return {
        "schema_version": SCHEMA_VERSION, "run_id": str(uuid.uuid4()),
        "command": command, "options": session.options.record(), "metric_options": session.metrics.record(),
        "derived": session.derived, "seed": session.options.seed, "device": session.derived.get("device"),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "platform": platform.platform(), "versions": versions(),
        "plugins": [p.as_json() for p in session.registry.plugins.values()],
        "adapter": session.loaded.adapter.name if session.loaded else None,
        "timings": dict(session.timings), "calibration": dict(session.calibrated),
        **(extra or {}),
    }


def assemble(session: AuditSession, outcomes: Sequence[Outcome], command: str,
             comparisons: list[dict[str, Any]] | None = None, extra_run: dict[str, Any] | None = None) -> RunResult:
    """The in-memory result of a run (summary, per-feature table, run record, extra tables)."""
    import pandas as pd

    configs = [{"label": o.label, "compressor": o.compressor, "params": o.params, "seconds": o.seconds}
               for o in outcomes]
    run = run_record(session, command, {"configurations": configs, **(extra_run or {})})
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run["run_id"],
        "baseline": session.baseline,
        "metric_options": session.metrics.record(),
        "results": [e for out in outcomes for e in summary_entries(session, out)],
    }
    if comparisons is not None:
        summary["comparisons"] = comparisons
    frames = [feature_frame(session, out, run["run_id"]) for out in outcomes if out.features]
    features = ordered(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    result = RunResult(run, summary, features)
    result.extra["tables"] = metric_tables(outcomes, run["run_id"])
    return result
