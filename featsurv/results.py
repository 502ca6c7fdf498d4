"""The result directory of a run, written atomically and exclusively, and verified when read.

Layout (SPEC section 6):
- ``run.json``: configuration, versions, plugins, seed, device, timings;
- ``summary.json``: ``baseline``, ``results`` (one entry per configuration and hook),
  ``comparisons`` (compare), ``predictors`` (when run);
- ``features.parquet``: one row per (configuration, hook, feature);
- ``report.html`` and its PNG figures (rendered by the caller's ``render`` callback);
- extra files a metric produced (``RunResult.files``);
- ``manifest.json``, written last: every other file's size and SHA-256 (see manifest.py);
- every file's columns and keys, and the schema version (``featsurv.schema``): docs/results.md.

Everything is built in a hidden temporary folder beside the target, and put in place in one
step (outdir.py); the folder is reserved by a lock for as long as a process uses it. Readers
(:func:`load_run`, ``RunResult.load``) verify the manifest before trusting any file.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import manifest as M
from . import outdir
from .errors import FeatsurvError
from .manifest import MANIFEST_FILE

RUN_FILE, SUMMARY_FILE, FEATURES_FILE = "run.json", "summary.json", "features.parquet"
REPORT_FILE = "report.html"
DATA_FILES = (RUN_FILE, SUMMARY_FILE, FEATURES_FILE)
#: figures, and temporary files of featsurv's older in-place writes
_OWN_RE = re.compile(r"^(fig_[^/]+\.png|\.(report\.html|summary\.json|fig_[^/]+\.png)\.[A-Za-z0-9_]+\.tmp)$")
_RERUN = "Re-run the command that wrote it (`featsurv audit` or `featsurv compare`)"
_WHICH = "Pass the folder printed at the end of `featsurv audit` or `featsurv compare`"

Render = Callable[[Path], Any]


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


def make_readable(path: str | Path) -> None:
    """Give a mkstemp file (0600) the permissions a plain open() would have (0666 & ~umask)."""
    os.chmod(path, 0o666 & ~outdir._umask())


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, dumps(obj))


# --------------------------------------------------------------------------- the folder
def foreign_files(out: Path) -> list[str]:
    """What in folder ``out`` featsurv did not write (its manifest's files and its own names are not)."""
    listed = M.listed(out) or set()
    foreign: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            name = prefix + entry.name
            if entry.is_symlink():
                foreign.append(name)
            elif entry.is_dir():
                before = len(foreign)
                walk(Path(entry.path), name + "/")
                if len(foreign) == before and not any(n.startswith(name + "/") for n in listed):
                    foreign.append(name + "/")  # an empty folder of the user's
            elif not (name in listed or name in DATA_FILES or name in (MANIFEST_FILE, REPORT_FILE)
                      or _OWN_RE.match(name)):
                foreign.append(name)

    walk(out, "")
    return foreign


def _refuse_foreign(out: Path, shown: str) -> None:
    foreign = foreign_files(out) if out.is_dir() else []
    if foreign:
        listing = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise FeatsurvError(
            f"--out {shown!r} is a folder with other files in it ({listing}); featsurv replaces only empty "
            "folders and folders that hold nothing but its own files",
            hint="Pass a new folder name (it is created), e.g. --out featsurv-runs/my-audit, or move those files out")


def check_out_dir(out_dir: str | Path, *, reserve: bool = True) -> Path:
    """Resolve the result directory and refuse, before any work, one that cannot be written.

    Refused (FeatsurvError, exit 2, nothing written): a path that is a file; a parent that is a
    file; a place where no entry can be created (read-only filesystem, no permission); a folder
    holding files featsurv did not write; a folder another featsurv process is using.

    With ``reserve`` (the default) the folder is also reserved for this process (a lock file
    ``.NAME.lock`` beside it) until :func:`write_run` has written it, the CLI command ends, the
    process exits, or :func:`release_out_dir` is called. Reserving recovers leftovers of a
    killed run (see outdir.py).
    """
    shown = str(out_dir)
    out = Path(out_dir).expanduser().resolve()
    if out.parent == out:
        raise FeatsurvError(f"--out {shown!r} is a filesystem root", hint="Pass a folder name, e.g. --out featsurv-runs/NAME")
    if os.path.lexists(out) and not out.is_dir():
        raise FeatsurvError(f"--out {shown!r} is a file, not a folder",
                            hint="Pass a new folder name, or an earlier featsurv result folder to replace")
    outdir.check_writable(out, shown)
    taken = reserve and outdir.held(out) is None
    if reserve:
        try:
            outdir.reserve(out, shown)
        except OSError as exc:
            raise outdir.describe_write_error(exc, out, shown) from None
    try:
        _refuse_foreign(out, shown)
    except FeatsurvError:
        if taken:
            outdir.release(out)
        raise
    return out


def release_out_dir(out_dir: str | Path) -> None:
    """Give up this process's reservation of a result directory (no-op when it holds none)."""
    outdir.release(Path(out_dir).expanduser().resolve())


def _check_file_name(name: Any) -> str:
    if (not isinstance(name, str) or not name or name.startswith(("/", ".")) or "\\" in name
            or any(part in ("", ".", "..") for part in name.split("/"))
            or name in DATA_FILES or name in (MANIFEST_FILE, REPORT_FILE)):
        raise ValueError(f"bad result file name {name!r}: use a relative path that is not one of featsurv's own files")
    return name


def _fsync_tree(folder: Path) -> None:
    for name in M.files_in(folder):
        fd = os.open(folder / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    outdir.fsync_dir(folder)


def _write_data(tmp: Path, result: "RunResult") -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp / RUN_FILE).write_text(dumps(result.run), encoding="utf-8")
    (tmp / SUMMARY_FILE).write_text(dumps(result.summary), encoding="utf-8")
    from .schema import parquet_metadata

    features = result.features if result.features is not None else pd.DataFrame()
    table = pa.Table.from_pandas(features, preserve_index=False)
    meta = parquet_metadata(result.summary, result.run)  # schema_version and run id (docs/results.md)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    pq.write_table(table, tmp / FEATURES_FILE)


def _write_files(tmp: Path, files: dict[str, Any]) -> list[str]:
    names = []
    for name, content in files.items():
        path = tmp / _check_file_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (bytes, bytearray, memoryview)):
            path.write_bytes(bytes(content))
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        elif callable(content):
            content(path)
            if not path.is_file():
                raise RuntimeError(f"the callable for result file {name!r} did not write {str(path)!r}")
        else:
            raise TypeError(f"result file {name!r}: expected bytes, str or callable(path), got {type(content).__name__}")
        names.append(name)
    return names


def _write_files_beside(tmp: Path, files: dict[str, Any], render: Render | None) -> list[str]:
    """:func:`_write_files` and ``render(tmp)`` (the report) at once, when there is both work to share.

    Writing large tables (Parquet encoding, which releases the GIL) runs in a worker thread while
    the report renders in this one; both only read the result and write their own files into
    ``tmp``. The thread is always waited for, so nothing writes into ``tmp`` once this returns or
    raises; the first error (the report's, else the files') is raised.
    """
    if render is None or not any(callable(c) for c in files.values()):
        names = _write_files(tmp, files)
        if render is not None:
            render(tmp)
        return names
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="featsurv-write") as pool:  # exit waits
        written = pool.submit(_write_files, tmp, files)
        render(tmp)
        return written.result()


def _write(out_dir: str | Path, kind: str, result: "RunResult | None", render: Render | None,
           carry: Iterable[str] = ()) -> tuple[Path, dict[str, Any]]:
    """Build a folder in a temporary sibling, write its manifest last, put it in place."""
    shown = str(out_dir)
    out = Path(out_dir).expanduser().resolve()
    carry = list(carry)
    tmp: Path | None = None
    try:
        check_out_dir(out_dir)  # reserves it (or reuses this process's reservation)
        old_manifest = M.read(out, shown) if carry else None
        try:
            tmp = outdir.make_temp_dir(out)
            roles: dict[str, str] = {}
            if result is not None:
                _write_data(tmp, result)
                roles.update(dict.fromkeys(DATA_FILES, "data"))
                if carry:  # with kept files the report renders after them, as before
                    names = _write_files(tmp, result.files)
                else:  # the report renders beside the files
                    names, render = _write_files_beside(tmp, result.files, render), None
                roles.update(dict.fromkeys(names, "extra"))
            for name in carry:  # files of the folder being rewritten that this write keeps
                if name in roles:
                    continue
                M.verify(out, old_manifest, shown, [name])
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out / name, tmp / name)
                roles[name] = old_manifest["files"][name].get("role", "extra")
            if render is not None:
                render(tmp)
            _fsync_tree(tmp)
            built = M.build(tmp, kind, roles)
            M.write(tmp, built)
            outdir.fsync_dir(tmp)
            outdir.pause("built")
            _refuse_foreign(out, shown)  # files may have been added since the run started
            outdir.replace_dir(tmp, out)
        except OSError as exc:
            raise outdir.describe_write_error(exc, out, shown) from None
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        outdir.release(out)
    return out, built


def write_run(out_dir: str | Path, result: "RunResult", render: Render | None = None) -> Path:
    """Write a run (data files, ``result.files``, what ``render(tmp)`` writes, the manifest) to ``out_dir``.

    ``render`` is called with the temporary folder and writes the report there (report.html,
    figures) so that it lands together with the data. An earlier featsurv folder at ``out_dir``
    is replaced in one step; a folder with other files is refused. Write failures (disk full,
    read-only) are a FeatsurvError and leave ``out_dir`` as it was.
    """
    out, built = _write(out_dir, "run", result, render)
    result.path, result.manifest = out, built
    return out


def write_folder(out_dir: str | Path, render: Render) -> Path:
    """Write a folder holding only what ``render(tmp)`` writes (e.g. `featsurv report RUN --out DIR`)."""
    return _write(out_dir, "report", None, render)[0]


# --------------------------------------------------------------------------- reading
def _json_file(folder: Path, name: str, shown: str) -> dict[str, Any]:
    where = f"{shown.rstrip('/')}/{name}"
    try:
        obj = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"Cannot read {where!r}: {str(exc)[:160]}", hint=_RERUN) from None
    if not isinstance(obj, dict):
        raise FeatsurvError(f"{where!r} holds {outdir.describe(obj)}, not a featsurv {name[:-5]} (a JSON object)",
                            hint=_RERUN)
    return obj


def check_summary(summary: Any, where: str = SUMMARY_FILE) -> dict[str, Any]:
    """Refuse a summary whose shape featsurv cannot read (naming the bad part)."""
    if not isinstance(summary, dict):
        raise FeatsurvError(f"{where!r} holds {outdir.describe(summary)}, not a featsurv summary (a JSON object)",
                            hint=_RERUN)
    for key, kind in (("results", list), ("comparisons", list), ("baseline", dict), ("options", dict)):
        value = summary.get(key)
        if value is not None and not isinstance(value, kind):
            raise FeatsurvError(f"{key!r} in {where!r} is {outdir.describe(value)}, not {outdir.describe(kind())}",
                                hint=_RERUN)
        if kind is list:
            for i, item in enumerate(value or []):
                if not isinstance(item, dict):
                    raise FeatsurvError(f"{key}[{i}] in {where!r} is {item!r}, not an object", hint=_RERUN)
    return summary


def _check_parquet(path: Path, where: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(0, path.stat().st_size - 4))
        tail = fh.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise FeatsurvError(f"{where!r} is not a Parquet file (truncated or damaged)", hint=_RERUN)


def _recover_missing(p: Path, shown: str) -> None:
    """A result that a killed run moved aside is put back before reading (under the folder's lock)."""
    out = p.resolve()
    if os.path.lexists(out) or out.parent == out or not any(outdir.leftovers(out)):
        return
    outdir.reserve(out, shown)
    outdir.release(out)


def load_run(path: str | Path, *, features: bool = True) -> "RunResult":
    """Read a run folder after verifying its manifest; FeatsurvError (naming the file) otherwise.

    ``features=False`` skips parsing features.parquet (its checksum is still verified).
    """
    shown = str(path)
    p = Path(path).expanduser()
    _recover_missing(p, shown)
    if not p.is_dir():
        why = "it is a file" if os.path.lexists(p) else "it does not exist"
        raise FeatsurvError(f"{shown!r} is not a featsurv result directory ({why})", hint=_WHICH)
    man = M.read(p, shown)
    if man.get("kind") != "run":
        raise FeatsurvError(f"{shown!r} holds a featsurv {man.get('kind')!r} folder, not a run", hint=_WHICH)
    missing = [f for f in DATA_FILES if f not in man["files"]]
    if missing:
        raise FeatsurvError(f"{shown!r} is not a complete featsurv result (its {MANIFEST_FILE} lists no "
                            f"{', '.join(missing)})", hint=_RERUN)
    M.verify(p, man, shown)
    run = _json_file(p, RUN_FILE, shown)
    summary = check_summary(_json_file(p, SUMMARY_FILE, shown), f"{shown.rstrip('/')}/{SUMMARY_FILE}")
    where = f"{shown.rstrip('/')}/{FEATURES_FILE}"
    _check_parquet(p / FEATURES_FILE, where)
    table = None
    try:
        if features:
            import pandas as pd

            table = pd.read_parquet(p / FEATURES_FILE)
        else:  # the footer only: cheap, and a damaged file still fails
            import pyarrow.parquet as pq

            pq.read_metadata(p / FEATURES_FILE)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise FeatsurvError(f"Cannot read {where!r}: {type(exc).__name__}: {str(exc)[:160]}", hint=_RERUN) from None
    from .schema import check_run, migrate

    version = check_run(p, summary, p / FEATURES_FILE)  # another schema: migrated in memory, or refused
    result = RunResult(run, summary, migrate(version, summary, table), p, manifest=man)
    result.extra["schema_version"] = version
    return result


@dataclass
class RunResult:
    """A finished run, in memory or loaded from its directory.

    ``files``: extra files to write with the run, name -> bytes, str or ``callable(path)``.
    """

    run: dict[str, Any]
    summary: dict[str, Any]
    features: Any  # pandas.DataFrame
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path, *, features: bool = True) -> "RunResult":
        """Read and verify a result directory (see :func:`load_run`)."""
        return load_run(path, features=features)

    def save(self, render: Render | None = None) -> Path:
        """Rewrite this run's folder in one step (summary, manifest; the report when ``render`` is given).

        Without ``render`` the folder's report files are kept as they are; extra files of the
        folder are kept unless ``files`` replaces them.
        """
        if self.path is None:
            raise ValueError("RunResult.save needs a result loaded from or written to a folder")
        keep = [name for name, entry in ((self.manifest or {}).get("files") or {}).items()
                if name not in self.files and (entry.get("role") == "extra"
                                               or (render is None and entry.get("role") == "report"))]
        out, built = _write(self.path, "run", self, render, carry=keep)
        self.path, self.manifest = out, built
        return out

    def save_summary(self) -> None:
        """Rewrite summary.json (and the manifest) atomically, e.g. after `featsurv predict`."""
        self.save()


def release_all_reservations() -> None:
    """Give up every result folder this process reserved (the CLI calls it when a command ends)."""
    outdir.release_all()
