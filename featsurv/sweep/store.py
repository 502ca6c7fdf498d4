"""The sweep directory: the sweep file it was made from, one verified run folder per piece,
and sweep.parquet gathering every piece's summary.

Layout::

    DIR/sweep.toml            the sweep file as it was run (a changed file is refused on resume)
    DIR/sweep.json            its SHA-256, the jobs and their pieces
    DIR/pieces/JOB/PIECE/     a run folder (run.json, summary.json, features.parquet, manifest.json)
    DIR/fp/JOB/               a split job's FP state (fp_state.json, fp_arrays.npz, manifest.json)
    DIR/sweep.parquet         one row per model x hook point x configuration (written last)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import FeatsurvError
from ..results import load_run, write_json_atomic, write_text_atomic
from .jobs import Job, Piece

SPEC_FILE, INDEX_FILE, TABLE_FILE, PIECES, FP_STATES = "sweep.toml", "sweep.json", "sweep.parquet", "pieces", "fp"
#: summary fields that measure time, left out of sweep.parquet (it is identical across executors)
TIMING = ("seconds", "time", "wall")


def piece_path(out: Path, job: Job, piece: Piece) -> Path:
    return out / PIECES / job.id / piece.key


def fp_state_path(out: Path, job: Job) -> Path:
    """Where a split job keeps its FP state (shared by its piece tasks; a cache, safe to delete)."""
    return out / FP_STATES / job.id


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


def open_sweep(out_dir: str | Path, spec: Any, jobs: list[Job], force: bool) -> Path:
    """Create or reopen a sweep directory; a sweep file changed since is refused without ``force``."""
    out = Path(out_dir).expanduser().resolve()
    index = out / INDEX_FILE
    if out.exists() and not out.is_dir():
        raise FeatsurvError(f"--out {str(out_dir)!r} is a file, not a folder", hint="Pass a folder for the sweep")
    if index.is_file():
        old = read_index(out)
        if old.get("digest") != spec.digest and not force:
            raise FeatsurvError(
                f"The sweep file {spec.source!r} changed since the sweep in {str(out_dir)!r} started",
                hint="Re-run with --force to run the changed entries there (finished pieces of unchanged entries "
                     "are kept), or pass a new --out")
    elif out.is_dir() and any(out.iterdir()):
        raise FeatsurvError(f"--out {str(out_dir)!r} is a folder with other files in it and no {INDEX_FILE}",
                            hint="Pass a new folder (it is created) or an earlier sweep directory to resume")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SPEC_FILE, spec.text)
    write_json_atomic(index, {"format": "featsurv-sweep", "name": spec.name, "digest": spec.digest,
                              "jobs": [{"id": j.id, "model": j.model, "pieces": [p.key for p in j.pieces]}
                                       for j in jobs]})
    return out


def read_index(out: Path) -> dict[str, Any]:
    try:
        obj = json.loads((out / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FeatsurvError(f"Cannot read {str(out / INDEX_FILE)!r}: {exc}",
                            hint="Pass a folder written by `featsurv sweep`") from None
    if not isinstance(obj, dict) or obj.get("format") != "featsurv-sweep":
        raise FeatsurvError(f"{str(out / INDEX_FILE)!r} is not a featsurv sweep index",
                            hint="Pass a folder written by `featsurv sweep`")
    return obj


def piece_done(path: Path, key: str) -> bool:
    """True when the piece's folder is complete and verified against its manifest."""
    if not path.is_dir():
        return False
    try:
        run = load_run(path, features=False)
    except FeatsurvError:
        return False
    return run.run.get("sweep_piece") == key


def discard_piece(path: Path) -> None:
    """Remove a partial or corrupt piece folder so that it is recomputed from scratch."""
    if path.is_dir():
        shutil.rmtree(path)


def load_sweep_pieces(out: Path) -> list[tuple[dict[str, Any], Any]]:
    """(job entry of sweep.json, verified RunResult) of every piece; a missing or damaged piece is refused."""
    index = read_index(out)
    pieces = []
    for job in index.get("jobs", []):
        for key in job["pieces"]:
            path = out / PIECES / job["id"] / key
            if not path.is_dir():
                raise FeatsurvError(f"Piece {job['id']}/{key} of sweep {str(out)!r} is not finished",
                                    hint="Re-run `featsurv sweep` on the same file and --out to finish it")
            pieces.append((job, load_run(path, features=False)))
    return pieces


def sweep_summary(out: str | Path) -> dict[str, Any]:
    """Every piece's summary entries as one summary (labels ``MODEL: CONFIG``), e.g. for `featsurv gate`."""
    results = []
    for job, run in load_sweep_pieces(Path(out)):
        for entry in run.summary.get("results") or []:
            results.append({**entry, "label": f"{job['model']}: {entry.get('label')}"})
    return {"results": results}
