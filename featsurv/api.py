"""The Python API: ``featsurv.audit``, ``featsurv.compare`` and ``featsurv.load_run`` (docs/python-api.md).

They fill every default the CLI fills (featsurv.defaults), run in this process and return a
:class:`Run`; a result directory is written only when ``out=`` is given. Progress goes to the
``featsurv`` logger unless ``progress=`` says otherwise (featsurv.progress).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import FeatsurvError

#: convenience spellings of AuditOptions fields (the CLI's flag names)
ALIASES = {"tokens": "n_tokens", "sae": "saes", "hook": "hooks"}


def split_options(registry: Any, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """(AuditOptions fields, metric options, metrics enabled) from flat keyword arguments.

    A key is an AuditOptions field (or an alias), ``metric_options={metric: {option: value}}``,
    a metric option's flag (``bootstrap=0``) or a metric's enable flag (``predict=True``)."""
    from .options import HOST_FIELDS, metric_flags

    flags = metric_flags(registry)
    enable = {m.enable_flag.replace("-", "_"): m.name for m in registry.all("metrics") if m.enable_flag}
    host: dict[str, Any] = {}
    metric_opts: dict[str, dict[str, Any]] = {}
    enabled: list[str] = []
    for key, value in options.items():
        key = ALIASES.get(key, key)
        if value is None:
            continue
        if key == "metric_options":
            for metric, opts in value.items():
                metric_opts.setdefault(metric, {}).update(opts)
        elif key in ("saes", "hooks", "metrics") and isinstance(value, (str, Path)):
            host[key] = [str(value)]
        elif key in HOST_FIELDS:
            host[key] = [str(v) for v in value] if key in ("saes", "hooks") else value
        elif key in flags:
            metric, option = flags[key]
            metric_opts.setdefault(metric, {})[option] = value
        elif key in enable:
            if value:
                enabled.append(enable[key])
        else:
            raise FeatsurvError(f"Unknown option {key!r}", allowed=sorted(HOST_FIELDS | set(flags) | set(enable)),
                                hint="Pass AuditOptions fields (n_tokens=, batch_size=, ...) or metric flags (bootstrap=0)")
    if "model" in host:
        host["model"] = str(host["model"])
    return host, metric_opts, enabled


def _prepare(options: dict[str, Any], progress: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """(registry, AuditOptions, preset, Progress, options given) for one API call."""
    from .defaults import option_notes, resolve_options
    from .plugins import get_registry
    from .progress import make_progress

    registry = get_registry()
    preset_name = options.pop("preset", None)
    given, metric_opts, enabled = split_options(registry, options)
    audit_options, preset = resolve_options(given, metric_opts, enabled, preset_name)
    report = make_progress(progress)
    for note in option_notes(preset, given):
        report(note)
    return registry, audit_options, preset, report, given


def _out(out: str | Path | None) -> str | Path | bool:
    return False if out is None or out is False else out


def audit(compressor: str, params: dict[str, Any] | None = None, *, model: str | Path | None = None,
          saes: Any = None, dataset: str | Path | None = None, out: str | Path | None = None,
          progress: Any = None, **options: Any) -> "Run":
    """Audit ``compressor`` (a sweep when a parameter's value is a list) against the FP model.

    With no ``model`` the default preset runs (the embedded model and its SAEs, and the preset's
    recipe when ``params`` is not given). ``options``: AuditOptions fields (``n_tokens``,
    ``batch_size``, ``device``, ``preset``...), metric flags (``bootstrap=0``) and enable flags
    (``predict=True``). Writes a result directory only when ``out`` is given.
    """
    from .audit import AuditSession
    from .defaults import as_raw, audit_configurations
    from .runs import run_audit

    values = {"model": model, "saes": saes, "dataset": None if dataset is None else str(dataset), **options}
    registry, opts, preset, report, _ = _prepare(values, progress)
    configurations, notes = audit_configurations(registry, compressor, as_raw(params), preset)
    for note in notes:
        report(note)
    session = AuditSession(opts, registry, report)
    try:
        result = run_audit(opts, configurations, out_dir=_out(out), session=session, command="audit " + compressor)
    finally:
        report.close()
    return Run(result)


def compare(a: str, b: str, *, a_params: dict[str, Any] | None = None, b_params: dict[str, Any] | None = None,
            knob: str | None = None, knob_range: tuple[float, float] | None = None, steps: int | None = None,
            rtol: float | None = None, search_tokens: int | None = None, model: str | Path | None = None,
            saes: Any = None, dataset: str | Path | None = None, out: str | Path | None = None,
            progress: Any = None, **options: Any) -> "Run":
    """Compare compressors ``a`` and ``b`` at matched perplexity, as `featsurv compare A B` does.

    A runs at ``a_params`` (default: the preset's recipe, else A's compare default); B's knob is
    bisected on ``knob_range`` until B matches A. Other keywords as :func:`audit`.
    """
    from .audit import AuditSession
    from .compare import run_compare
    from .defaults import as_raw, compare_setup

    values = {"model": model, "saes": saes, "dataset": None if dataset is None else str(dataset), **options}
    registry, opts, preset, report, _ = _prepare(values, progress)
    setup = compare_setup(registry, a, b, as_raw(a_params), as_raw(b_params), preset, knob=knob,
                          knob_range=knob_range, steps=steps, rtol=rtol, search_tokens=search_tokens)
    for note in setup.notes:
        report(note)
    session = AuditSession(opts, registry, report)
    try:
        result = run_compare(opts, setup.a, setup.b, out_dir=_out(out), session=session, **setup.run_kwargs())
    finally:
        report.close()
    return Run(result)


def load_run(path: str | Path) -> "Run":
    """The :class:`Run` stored in a result directory (a run of another schema version is migrated
    when featsurv knows how, else refused with a FeatsurvError)."""
    from .results import RunResult

    result = RunResult.load(path)
    result.path = Path(result.path).resolve()
    return Run(result)


class Run:
    """A finished run: ``summary`` (summary.json), ``record`` (run.json), ``features()`` (features.parquet)."""

    def __init__(self, result: Any):
        self.result = result

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary

    @property
    def record(self) -> dict[str, Any]:
        return self.result.run

    @property
    def path(self) -> Path | None:
        return self.result.path

    @property
    def id(self) -> str | None:
        return self.result.run.get("run_id")

    @property
    def schema_version(self) -> int | None:
        """The results schema of the files read (a run of an older one is migrated in memory)."""
        return self.result.extra.get("schema_version", self.result.summary.get("schema_version"))

    @property
    def comparisons(self) -> list[dict[str, Any]]:
        return list(self.summary.get("comparisons") or [])

    def labels(self) -> list[str]:
        """Configuration labels, in the order they ran."""
        return list(dict.fromkeys(str(e.get("label")) for e in self.summary.get("results") or []))

    def hooks(self) -> list[str]:
        return list(dict.fromkeys(str(e["hook"]) for e in self.summary.get("results") or [] if e.get("hook")))

    def features(self, config: str | None = None, hook: str | None = None, active: bool | None = None) -> Any:
        """features.parquet as a DataFrame (a copy), optionally only one configuration (by label),
        one hook point, and active (True) or inactive (False) features."""
        df = self.result.features
        if df is None or len(df) == 0:
            import pandas as pd

            return pd.DataFrame()
        sel = df.index == df.index
        for column, value, known in (("config", config, self.labels()), ("hook", hook, self.hooks())):
            if value is not None:
                if value not in known:
                    raise FeatsurvError(f"No {column} {value!r} in this run", allowed=known)
                sel &= (df[column].astype(str) == value).to_numpy()
        if active is not None and "active" in df.columns:
            sel &= (df["active"].astype(bool) == bool(active)).to_numpy()
        return df[sel].reset_index(drop=True)

    def results(self) -> Any:
        """summary.json's results as a DataFrame, one row per (configuration, hook point)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in e.items() if not isinstance(v, dict)} for e in self.summary.get("results") or []])

    def bands(self) -> Any:
        """A tidy DataFrame: one row per (configuration, hook point, band) with ``count``,
        ``fraction`` of the active features, ``n_active`` and, with bootstrap, ``ci_low``/``ci_high``."""
        import pandas as pd

        rows = []
        for e in self.summary.get("results") or []:
            counts = e.get("counts")
            if not isinstance(counts, dict):
                continue
            ci = e.get("ci") if isinstance(e.get("ci"), dict) else {}
            for band, count in counts.items():
                lohi = ci.get(band) or [None, None]
                rows.append({"config": e.get("label"), "compressor": e.get("compressor"), "hook": e.get("hook"),
                             "band": band, "count": count, "fraction": e.get(band), "n_active": e.get("n_active"),
                             "ci_low": lohi[0], "ci_high": lohi[1]})
        columns = ["config", "compressor", "hook", "band", "count", "fraction", "n_active", "ci_low", "ci_high"]
        return pd.DataFrame(rows, columns=columns)

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path else " (not written)"
        return f"<featsurv Run {self.id or '?'}: {len(self.labels())} configuration(s){where}>"
