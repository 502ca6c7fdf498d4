"""The sweep file: read the TOML, check every entry before any work (errors name the entry)."""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FeatsurvError

TOP_KEYS = {"sweep", "data", "options", "models", "configurations"}
MODEL_KEYS = {"name", "path", "adapter", "dtype", "device", "saes", "hooks", "trust_remote_code", "split"}
DATA_KEYS = {"dataset", "tokens", "context", "batch_size", "bos", "join", "calibration_tokens"}
SWEEP_KEYS = {"name", "seed", "threads", "max_retries", "split"}
#: ``split``: "none" (a job runs its configurations itself) or "configurations" (the job's FP state is
#: saved once and each configuration runs as its own task that loads it; docs/sweeps.md)
SPLITS = ("none", "configurations")
CONFIG_KEYS = {"compressor", "params"}
_HINT = "Fix the entry in the sweep file (see docs/sweeps.md) and run the command again"


@dataclass
class ModelEntry:
    """One model and the SAEs read in its one FP pass."""

    name: str
    options: dict[str, Any]  # AuditOptions values (model, saes, hooks, adapter, dtype, device...)
    split: str = "none"


@dataclass
class ConfigEntry:
    """One compressor configuration (a grid point)."""

    compressor: str
    params: dict[str, Any]
    label: str


@dataclass
class SweepSpec:
    """A validated sweep file."""

    name: str
    text: str
    models: list[ModelEntry]
    configurations: list[ConfigEntry]
    seed: int = 0
    threads: int = 1
    max_retries: int = 2
    split: str = "none"
    source: str = ""
    common: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """SHA-256 of the sweep file's text (a changed file is detected on resume)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def bad(where: str, what: str, allowed: Any = None, hint: str = _HINT) -> FeatsurvError:
    return FeatsurvError(f"Sweep file, {where}: {what}", allowed=allowed, hint=hint)


def wrap(where: str, exc: FeatsurvError) -> FeatsurvError:
    """A FeatsurvError from a host check, told as the sweep entry it came from."""
    return FeatsurvError(f"Sweep file, {where}: {exc.message}")


def _table(doc: dict[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise bad(f"[{key}]", f"expected a table, got {value!r}")
    _known(value, allowed, f"[{key}]")
    return value


def _known(table: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise bad(where, f"unknown key {key!r}", allowed=sorted(allowed))


def _int(table: dict[str, Any], key: str, default: int, where: str, lo: int = 0) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise bad(f"{where} {key}", f"{value!r} is not a whole number of {lo} or more")
    return value


def split_value(table: dict[str, Any], where: str, default: str = "none") -> str:
    value = table.get("split", default)
    if value not in SPLITS:
        raise bad(f"{where} split", f"{value!r} is not a split mode", allowed=list(SPLITS),
                  hint='Write split = "configurations" to run each configuration as its own task, or drop it')
    return value


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeatsurvError(f"Cannot read the sweep file {str(path)!r}: {exc.strerror or exc}",
                            hint="Pass the path of a TOML sweep file (see docs/sweeps.md)") from None


def parse(text: str, source: str = "sweep.toml") -> dict[str, Any]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FeatsurvError(f"Sweep file {source!r} is not valid TOML: {exc}",
                            hint="Fix the TOML syntax (see docs/sweeps.md for a complete example)") from None
    _known(doc, TOP_KEYS, "top level")
    return doc


def load_spec(path: str | Path, registry: Any = None) -> SweepSpec:
    """Read and validate a sweep file completely; FeatsurvError (exit 2) naming the bad entry."""
    from ..plugins import get_registry
    from .validate import check_models, check_configurations

    text = read_text(path)
    doc = parse(text, str(path))
    registry = registry or get_registry()
    head = _table(doc, "sweep", SWEEP_KEYS)
    data = _table(doc, "data", DATA_KEYS)
    common = dict(doc.get("options", {})) if isinstance(doc.get("options", {}), dict) else None
    if common is None:
        raise bad("[options]", f"expected a table, got {doc.get('options')!r}")
    spec = SweepSpec(name=str(head.get("name", Path(path).stem)), text=text, models=[], configurations=[],
                     seed=_int(head, "seed", 0, "[sweep]"), threads=_int(head, "threads", 1, "[sweep]", 1),
                     max_retries=_int(head, "max_retries", 2, "[sweep]"), split=split_value(head, "[sweep]"),
                     source=str(path))
    spec.common = _common_options(common, data, spec.seed)
    spec.models = check_models(doc.get("models"), spec.common, registry, Path(path).parent, spec.split)
    spec.configurations = check_configurations(doc.get("configurations"), registry)
    return spec


def _common_options(options: dict[str, Any], data: dict[str, Any], seed: int) -> dict[str, Any]:
    """AuditOptions values shared by every job: [data] under friendlier names, then [options]."""
    names = {"tokens": "n_tokens", "bos": "prepend_bos"}
    values = {names.get(k, k): v for k, v in data.items()}
    for key in ("model", "saes", "hooks", "seed"):
        if key in options:
            raise bad("[options]", f"{key!r} is set per model ([[models]]) or in [sweep], not in [options]")
    values.update(options)
    values["seed"] = seed
    return values


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
