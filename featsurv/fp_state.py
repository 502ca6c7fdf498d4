"""The FP state of a session, saved to a folder and loaded back instead of re-running the FP pass.

What the configuration passes need from the FP pass: per hook point the FP feature batches
(sparse CSR), FP statistics, explained variance, fit evidence and each metric's FP accumulator
result; the baseline (summary.json ``baseline``). The folder holds ``fp_state.json`` (the tree
and what it was computed from: the options and a digest of the audit tokens), ``fp_arrays.npz``
(every array, no pickle) and a ``manifest.json`` (kind ``fp_state``) written last; a folder
that fails its manifest, or was computed from other options or tokens, is not loaded.
Used by ``featsurv sweep`` with ``split = "configurations"`` (docs/sweeps.md).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import manifest as M
from . import outdir
from .errors import FeatsurvError
from .state_codec import Decoder, Encoder

KIND, FORMAT, VERSION = "fp_state", "featsurv-fp-state", 1
STATE_FILE, ARRAYS_FILE = "fp_state.json", "fp_arrays.npz"
HOOK_FIELDS = ("fp_batches", "fp_stats", "fp_results", "explained_variance", "fit")


class StaleState(Exception):
    """The folder holds no usable FP state (missing, damaged, or computed from something else)."""


def identity(session: Any) -> dict[str, Any]:
    """What the FP state depends on: the audit options and the exact audit tokens."""
    import numpy as np

    tokens = session.tokens
    digest = hashlib.sha256()
    for t in (tokens.contexts, tokens.keep):
        digest.update(np.ascontiguousarray(t.cpu().numpy()).tobytes())
    options = json.dumps(session.options.record(), sort_keys=True, default=str)
    return {"options": hashlib.sha256(options.encode("utf-8")).hexdigest(), "tokens": digest.hexdigest(),
            "hooks": list(session.hooks)}


def export_state(session: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON tree, arrays) of a prepared session's FP state."""
    enc = Encoder({"tokenizer": session.loaded.tokenizer})
    hooks = {h: {k: getattr(s, k) for k in HOOK_FIELDS} for h, s in session.hooks.items()}
    tree = {"format": FORMAT, "version": VERSION, "identity": identity(session),
            "fp_pass_seconds": session.timings.get("fp_pass"),
            "baseline": enc.encode(session.baseline, "the baseline"), "hooks": enc.encode(hooks, "the hook states")}
    return tree, enc.arrays


def save_state(session: Any, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the FP state into ``folder`` atomically (a temporary sibling, manifest last, one rename)."""
    import numpy as np

    tree, arrays = export_state(session)
    tree.update(extra or {})
    out = Path(folder).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = outdir.make_temp_dir(out)
    try:
        (tmp / STATE_FILE).write_text(json.dumps(tree, sort_keys=True), encoding="utf-8")
        np.savez(tmp / ARRAYS_FILE, **arrays)
        M.write(tmp, M.build(tmp, KIND, dict.fromkeys((STATE_FILE, ARRAYS_FILE), "data")))
        outdir.fsync_dir(tmp)
        outdir.replace_dir(tmp, out)
    except OSError as exc:
        raise outdir.describe_write_error(exc, out, str(folder)) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_state(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tree, arrays) of a verified FP state folder; StaleState naming the problem otherwise."""
    import zipfile

    import numpy as np

    path = Path(folder)
    try:
        manifest = M.read(path, str(folder))
        if manifest.get("kind") != KIND:
            raise StaleState(f"{str(folder)!r} is a {manifest.get('kind')!r} folder, not an FP state")
        M.verify(path, manifest, str(folder), [STATE_FILE, ARRAYS_FILE])
        tree = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except FeatsurvError as exc:
        raise StaleState(exc.message) from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise StaleState(f"{str(folder)!r} cannot be read: {exc}") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT or tree.get("version") != VERSION:
        raise StaleState(f"{str(folder)!r} is not a featsurv FP state of version {VERSION}")
    return tree, arrays


def load_state(session: Any, folder: str | Path) -> dict[str, Any]:
    """Put a saved FP state into a session whose workbench is loaded (model, SAEs, tokens)."""
    t0 = time.perf_counter()
    tree, arrays = read_state(folder)
    if tree.get("identity") != identity(session):
        raise StaleState(f"{str(folder)!r} was computed from other options, SAEs or tokens")
    dec = Decoder(arrays, {"tokenizer": session.loaded.tokenizer}, session.bench.device)
    try:
        hooks, baseline = dec.decode(tree["hooks"]), dec.decode(tree["baseline"])
        values = {hook: {key: hooks[hook][key] for key in HOOK_FIELDS} for hook in session.hooks}
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:  # RuntimeError: bad CSR
        raise StaleState(f"{str(folder)!r} holds a damaged FP state ({exc})") from None
    for hook, state in session.hooks.items():  # all decoded first: a damaged state changes nothing
        for key, value in values[hook].items():
            setattr(state, key, value)
    session.baseline = baseline
    session.bench.timed("fp_state_load", t0)
    return tree


def prepare_from_state(session: Any, folder: str | Path, needs_calibration: bool = False) -> bool:
    """``session.prepare`` with the FP pass replaced by loading ``folder``; when that folder holds no
    usable state the FP pass runs after all. True when the state was loaded."""
    from .fp_pass import fp_pass
    from .workbench import load_workbench

    session.bench = load_workbench(session.options, session.registry, session.progress, needs_calibration)
    session.derived = {"device": session.bench.device, "metrics": session.metrics.setup(session.loaded, session.tokens)}
    try:
        load_state(session, folder)
        return True
    except StaleState as exc:
        session.progress(f"FP state not used ({exc}); running the FP pass")
    session.baseline = fp_pass(session.bench, session.metrics)
    return False
