"""``manifest.json``: the last file of every folder featsurv writes, proving the folder complete.

It lists every other file (path relative to the folder, size, SHA-256, role: ``data`` for
run.json/summary.json/features.parquet, ``report`` for report.html and its figures, ``extra``
for files a metric added), the folder's ``kind`` (``run`` or ``report``), ``schema_version`` and
the featsurv version. A folder without it is unfinished (or was not written by featsurv); a
file that is missing or differs in size or checksum is refused, naming the file.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import FeatsurvError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
FORMAT = "featsurv-result"
ROLES = ("data", "report", "extra")
_RERUN = "Re-run the command that wrote it (`featsurv audit`, `compare` or `report`)"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_in(folder: Path) -> list[str]:
    """Every regular file under ``folder`` as a relative posix path, sorted."""
    out = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            out.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(out)


def build(folder: Path, kind: str, roles: dict[str, str]) -> dict[str, Any]:
    """The manifest of every file now in ``folder`` (``roles``: name -> role, default ``report``)."""
    from . import __version__

    entries = {}
    for name in files_in(folder):
        if name == MANIFEST_FILE:
            continue
        path = folder / name
        entries[name] = {"size": path.stat().st_size, "sha256": sha256(path), "role": roles.get(name, "report")}
    return {"format": FORMAT, "kind": kind, "schema_version": SCHEMA_VERSION, "featsurv_version": __version__,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "files": entries}


def write(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (flushed to disk) into a folder that is not yet in place."""
    path = folder / MANIFEST_FILE
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=2) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read(folder: Path, shown: str) -> dict[str, Any]:
    """The folder's manifest, checked for shape; FeatsurvError naming manifest.json otherwise."""
    path = folder / MANIFEST_FILE
    where = f"{shown.rstrip('/')}/{MANIFEST_FILE}"
    if not path.is_file():
        raise FeatsurvError(
            f"{shown!r} is not a complete featsurv result directory: it is missing {MANIFEST_FILE} (the run "
            "that wrote it did not finish, or featsurv did not write it; 0.1 results have none)", hint=_RERUN)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"{where!r} is unreadable or not JSON ({str(exc)[:120]})", hint=_RERUN) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(files, dict)
            or not all(isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
                       for e in files.values())):
        raise FeatsurvError(f"{where!r} is not a featsurv manifest", hint=_RERUN)
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise FeatsurvError(f"{where!r} has schema_version {version!r}; this featsurv reads up to {SCHEMA_VERSION}",
                            hint="Upgrade featsurv to read it")
    return manifest


def verify(folder: Path, manifest: dict[str, Any], shown: str, names: Iterable[str] | None = None) -> None:
    """Check that each listed file (or each of ``names``) exists with its recorded size and checksum."""
    files = manifest["files"]
    for name in (names if names is not None else sorted(files)):
        entry = files.get(name)
        path = folder / name
        where = f"{shown.rstrip('/')}/{name}"
        if entry is None:
            raise FeatsurvError(f"{where!r} is not listed in {MANIFEST_FILE}", hint=_RERUN)
        if not path.is_file():
            raise FeatsurvError(f"{where!r} is missing (listed in {MANIFEST_FILE})", hint=_RERUN)
        size = path.stat().st_size
        if size != entry["size"]:
            raise FeatsurvError(f"{where!r} has {size} bytes, but {MANIFEST_FILE} records {entry['size']}: "
                                "the file was truncated or changed after the run", hint=_RERUN)
        if sha256(path) != entry["sha256"]:
            raise FeatsurvError(f"{where!r} does not match its checksum in {MANIFEST_FILE}: the file was "
                                "changed or damaged after the run", hint=_RERUN)


def listed(folder: Path) -> set[str] | None:
    """The names a folder's manifest lists, or None when it has no readable manifest (never raises)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        return set(manifest["files"]) if isinstance(manifest.get("files"), dict) else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None
