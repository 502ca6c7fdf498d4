"""The result directory of a run: run.json, summary.json, features.parquet (written atomically).

Layout (SPEC section 6):
- ``run.json``: configuration, versions, plugins, seed, device, timings;
- ``summary.json``: ``baseline``, ``results`` (one entry per configuration and hook),
  ``comparisons`` (compare), ``predictors`` (when run);
- ``features.parquet``: one row per (configuration, hook, feature);
- every file's columns and keys, and the schema version (``featsurv.schema``): docs/results.md;
- ``report.html`` and its PNG figures, added by `featsurv report` (also at the end of a run).

A run is built in a hidden temporary folder beside the target and renamed into place only when
every file is complete; an interrupted run leaves no folder that looks finished.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FeatsurvError

RUN_FILE, SUMMARY_FILE, FEATURES_FILE = "run.json", "summary.json", "features.parquet"


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write one text file atomically (temp file in the same folder, then rename)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write one file atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give a mkstemp file (0600) the permissions a plain open() would have (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~_umask())


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, dumps(obj))


@dataclass
class RunResult:
    """A finished run, in memory or loaded from its directory."""

    run: dict[str, Any]
    summary: dict[str, Any]
    features: Any  # pandas.DataFrame
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        import pandas as pd

        p = Path(path)
        missing = [f for f in (RUN_FILE, SUMMARY_FILE, FEATURES_FILE) if not (p / f).is_file()]
        if not p.is_dir() or missing:
            raise FeatsurvError(
                f"{str(path)!r} is not a featsurv result directory" + (f" (missing {', '.join(missing)})" if p.is_dir() else ""),
                hint="Pass the folder printed at the end of `featsurv audit` or `featsurv compare`")
        from .schema import check_run, migrate

        summary = json.loads((p / SUMMARY_FILE).read_text())
        version = check_run(p, summary, p / FEATURES_FILE)  # another schema: migrated, or refused
        result = cls(json.loads((p / RUN_FILE).read_text()), summary,
                     migrate(version, summary, pd.read_parquet(p / FEATURES_FILE)), p)
        result.extra["schema_version"] = version
        return result

    def save_summary(self) -> None:
        """Rewrite summary.json in place (atomically), e.g. after `featsurv predict`."""
        assert self.path is not None
        write_json_atomic(self.path / SUMMARY_FILE, self.summary)


def check_out_dir(out_dir: str | Path) -> Path:
    """Resolve the result directory and refuse one that holds anything but an earlier result.

    Called before any work starts, and again just before writing.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise FeatsurvError(f"--out {str(out_dir)!r} is a file, not a folder",
                                hint="Pass a new folder name, or an earlier featsurv result folder to replace")
        is_result = (out / RUN_FILE).is_file() and (out / SUMMARY_FILE).is_file()
        if any(out.iterdir()) and not is_result:
            raise FeatsurvError(
                f"--out {str(out_dir)!r} is a folder with other files in it; featsurv replaces only "
                "empty folders and its own earlier results",
                hint="Pass a new folder name (it is created), e.g. --out featsurv-runs/my-audit")
    return out


def write_run(out_dir: str | Path, result: RunResult) -> Path:
    """Write run.json, summary.json and features.parquet into ``out_dir`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .schema import parquet_metadata

    out = check_out_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        (tmp / RUN_FILE).write_text(dumps(result.run), encoding="utf-8")
        (tmp / SUMMARY_FILE).write_text(dumps(result.summary), encoding="utf-8")
        table = pa.Table.from_pandas(result.features, preserve_index=False)
        meta = parquet_metadata(result.summary, result.run)
        if meta:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        pq.write_table(table, tmp / FEATURES_FILE)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; a result is not
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.path = out
    return out
