"""The version of the results schema (docs/results.md), and reading runs written under an older one.

summary.json and run.json carry ``schema_version`` at the top level; features.parquet carries it
in its key-value metadata (``featsurv.schema_version``). A run without it was written before
versioning began: version 1. Reading a run:

- version 1 is migrated in memory (the files are left as they are): inactive features lose their
  band, and the rows gain ``params`` and ``param.NAME`` from the summary's entries (``run_id``
  stays null: version 1 had none);
- a version newer than :data:`SCHEMA_VERSION`, or one that is not a whole number, is a
  FeatsurvError (read it with the featsurv that wrote it, or a newer one);
- summary.json and features.parquet of different versions are a FeatsurvError.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import FeatsurvError

#: the schema this featsurv writes and reads (1: runs written before schema_version existed)
SCHEMA_VERSION = 2
META_VERSION, META_RUN_ID = b"featsurv.schema_version", b"featsurv.run_id"
PARAM_PREFIX = "param."
#: pandas dtype of a ``param.NAME`` column by the parameter's type (others: inferred)
PARAM_DTYPES: dict[Any, str] = {int: "Int64", bool: "boolean", float: "float64"}


def version_of(obj: dict[str, Any], where: str) -> int:
    """The schema version stored in summary.json (or run.json); 1 when absent."""
    value = obj.get("schema_version", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FeatsurvError(f"{where} has schema_version {value!r}, which is not a featsurv results schema",
                            allowed=f"whole numbers 1 to {SCHEMA_VERSION}",
                            hint="The folder was not written by featsurv, or was edited by hand")
    if value > SCHEMA_VERSION:
        from . import __version__

        raise FeatsurvError(f"{where} uses results schema {value}, newer than the schema {SCHEMA_VERSION} that "
                            f"featsurv {__version__} reads", hint="Upgrade featsurv to read it (pip install -U featsurv)")
    return value


def parquet_metadata(summary: dict[str, Any], run: dict[str, Any]) -> dict[bytes, bytes]:
    """The key-value metadata features.parquet is written with (nothing for an unversioned result)."""
    if "schema_version" not in summary:
        return {}
    out = {META_VERSION: str(summary["schema_version"]).encode()}
    if run.get("run_id"):
        out[META_RUN_ID] = str(run["run_id"]).encode()
    return out


def parquet_version(path: Path) -> int:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(META_VERSION)
    try:
        return 1 if raw is None else int(raw.decode())
    except ValueError:
        raise FeatsurvError(f"{str(path)!r} has schema version {raw!r} in its metadata, not a whole number") from None


def check_run(path: Path, summary: dict[str, Any], features_path: Path) -> int:
    """The run's schema version; raises FeatsurvError when it cannot be read by this featsurv."""
    version = version_of(summary, str(path / "summary.json"))
    in_parquet = parquet_version(features_path)
    if in_parquet != version:
        raise FeatsurvError(f"{str(features_path)!r} has results schema {in_parquet} but summary.json has {version}",
                            hint="The folder mixes files of two runs; re-run the audit")
    return version


def migrate(version: int, summary: dict[str, Any], features: Any) -> Any:
    """features.parquet of an older schema as this schema's table (summary.json is kept as it is)."""
    if version == SCHEMA_VERSION or features is None or len(features) == 0:
        return features
    features = features.copy()
    if "band" in features.columns and "active" in features.columns:
        features["band"] = features["band"].astype(object).where(features["active"].astype(bool), None)
    by_label = {str(e.get("label")): e.get("params") or {} for e in summary.get("results") or [] if isinstance(e, dict)}
    if "config" in features.columns and "params" not in features.columns:
        labels = features["config"].astype(str)
        features["params"] = labels.map(lambda lab: json.dumps(by_label.get(lab, {}), default=str))
        import pandas as pd

        for name in dict.fromkeys(k for p in by_label.values() for k in p):  # the dtypes version 2 writes
            values = [by_label.get(lab, {}).get(name) for lab in labels]
            kind = next((type(v) for v in values if v is not None), None)
            features[PARAM_PREFIX + name] = pd.Series(values, index=features.index, dtype=PARAM_DTYPES.get(kind))
    if "run_id" not in features.columns:
        features.insert(0, "run_id", None)
    return features
