"""Checks of the sweep file's [[models]] and [[configurations]] entries (before any work)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import FeatsurvError
from .spec import CONFIG_KEYS, MODEL_KEYS, ConfigEntry, ModelEntry, _known, bad, split_value, wrap


def _entries(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise bad(f"[[{key}]]", "expected at least one [[" + key + "]] table",
                  hint=f"Add a [[{key}]] table (see docs/sweeps.md)")
    return value


def _local(path: str, base: Path) -> Path | None:
    """The local path a model/SAE entry names (relative to the sweep file), or None for a hub id."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = base / p
    return p if p.exists() or path.startswith((".", "/", "~")) else None


def _width(folder: Path, names: tuple[str, ...]) -> int | None:
    for file in ("config.json", "cfg.json"):
        try:
            cfg = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for name in names:
            if isinstance(cfg.get(name), int):
                return cfg[name]
    return None


def _check_saes(where: str, saes: Any, model_dir: Path | None, base: Path) -> list[str]:
    from ..data_paths import resolve

    if not isinstance(saes, list) or not saes or not all(isinstance(s, str) and s for s in saes):
        raise bad(f"{where} saes", f"{saes!r} is not a list of SAE directories or RELEASE:SAE_ID")
    width = _width(model_dir, ("hidden_size", "n_embd", "d_model")) if model_dir else None
    out = []
    for i, sae in enumerate(saes):
        spec = resolve(sae)
        local = _local(spec, base)
        if local is None and ":" in spec:  # RELEASE:SAE_ID: checked when loaded
            out.append(spec)
            continue
        local = local or (base / spec)
        if not local.is_dir() or not (local / "cfg.json").is_file():
            raise bad(f"{where} saes[{i}]", f"SAE {sae!r} does not exist (no folder with a cfg.json at {str(local)!r})",
                      hint="Pass an sae-lens SAE folder (relative to the sweep file) or RELEASE:SAE_ID")
        d_in = _width(local, ("d_in",))
        if width and d_in and d_in != width:
            raise bad(f"{where} saes[{i}]", f"SAE {sae!r} reads {d_in}-wide activations but the model is {width} wide",
                      hint="Pair each model with SAEs trained on it")
        out.append(str(local.resolve()))
    return out


def check_model(i: int, entry: dict[str, Any], common: dict[str, Any], registry: Any, base: Path,
                split: str = "none") -> ModelEntry:
    """One [[models]] entry as a validated ModelEntry (its full AuditOptions are built and checked)."""
    from ..options import OptionError, make_options

    name = entry.get("name") or entry.get("path")
    where = f"[[models]] #{i + 1}" + (f" ({name})" if isinstance(name, str) else "")
    _known(entry, MODEL_KEYS, where)
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise bad(where, "no 'path' (a local model directory or a hub id)")
    local = _local(path, base)
    if local is not None and not local.is_dir():
        raise bad(f"{where} path", f"model directory {path!r} does not exist")
    values = {**common, "model": str(local.resolve()) if local else path}
    values["saes"] = _check_saes(where, entry.get("saes"), local, base)
    for key in ("adapter", "dtype", "device", "hooks", "trust_remote_code"):
        if key in entry:
            values[key] = entry[key]
    if values.get("adapter") is not None and isinstance(values["adapter"], str):
        try:
            registry.get("model_adapters", values["adapter"])
        except FeatsurvError as exc:
            raise wrap(f"{where} adapter", exc) from None
    try:
        options = make_options(registry, **values).validate()
        from ..metric_set import parse_metric_options

        parse_metric_options(registry, options.metric_options)
    except OptionError as exc:
        raise bad(where, f"{exc.option} = {exc.value!r} is not allowed", allowed=exc.allowed) from None
    except FeatsurvError as exc:
        raise wrap(where, exc) from None
    return ModelEntry(str(name), options.record(), split_value(entry, where, split))


def check_models(value: Any, common: dict[str, Any], registry: Any, base: Path,
                 split: str = "none") -> list[ModelEntry]:
    models = [check_model(i, e, common, registry, base, split) for i, e in enumerate(_entries(value, "models"))]
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise bad("[[models]]", f"model name {dupes[0]!r} is used twice", hint="Give each model a unique name")
    return models


def check_configurations(value: Any, registry: Any) -> list[ConfigEntry]:
    """Every [[configurations]] entry expanded into its grid (parameters checked by the compressor)."""
    from ..params import expand_grid

    out: list[ConfigEntry] = []
    for i, entry in enumerate(_entries(value, "configurations")):
        name = entry.get("compressor")
        where = f"[[configurations]] #{i + 1}" + (f" ({name})" if isinstance(name, str) else "")
        _known(entry, CONFIG_KEYS, where)
        params = entry.get("params", {})
        if not isinstance(params, dict):
            raise bad(f"{where} params", f"expected a table of parameter values, got {params!r}")
        try:
            comp = registry.get("compressors", name)
            raw = {k: (v if isinstance(v, list) else [v]) for k, v in params.items()}
            grid = expand_grid(comp.params, raw, str(name))
        except FeatsurvError as exc:
            raise wrap(where, exc) from None
        out.extend(ConfigEntry(comp.name, cfg, comp.label(cfg)) for cfg in grid)
    labels = [c.label for c in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise bad("[[configurations]]", f"configuration {dupes[0]!r} appears twice", hint="List each grid point once")
    return out
