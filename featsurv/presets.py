"""Declarative presets (the ``featsurv_registry`` package, folder registry/): known model/SAE pairings and recipes.

A preset fills in every audit option a user did not give; ``[metrics.NAME]`` tables set metric
options (validated against what each metric declares when the run starts). Paths written ``featsurv:REL`` point
into the installed package's data folder, so presets work after a non-editable install.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .errors import FeatsurvError

#: top-level keys a preset may set, and the AuditOptions field each fills
OPTION_KEYS = {
    "model": "model", "revision": "revision", "adapter": "adapter", "dtype": "dtype", "saes": "saes", "hooks": "hooks",
    "dataset": "dataset", "tokens": "n_tokens", "context": "context", "prepend_bos": "prepend_bos",
    "exclude_special": "exclude_special", "join": "join", "batch_size": "batch_size", "scope": "scope",
    "min_explained_variance": "min_explained_variance", "center_activations": "center_activations",
    "adapter_options": "adapter_options",
}
KNOWN_TABLES = {"metrics", "audit", "compare", "published"}
META_KEYS = {"name", "description", "default", "reference"}


@dataclass
class Preset:
    name: str
    description: str
    options: dict[str, Any]
    audit: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    default: bool = False
    reference: str = ""


def _parse(name: str, data: dict[str, Any]) -> Preset:
    unknown_keys = set(data) - set(OPTION_KEYS) - KNOWN_TABLES - META_KEYS
    if unknown_keys:
        raise FeatsurvError(f"Preset {name!r} has unknown keys {sorted(unknown_keys)}",
                            allowed=sorted(set(OPTION_KEYS) | KNOWN_TABLES | META_KEYS))
    for key in ("model", "saes", "description"):
        if key not in data:
            raise FeatsurvError(f"Preset {name!r} lacks the key {key!r}")
    options = {OPTION_KEYS[k]: v for k, v in data.items() if k in OPTION_KEYS}
    if "scope" in options:
        options["scope"] = tuple(options["scope"])
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        raise FeatsurvError(f"Preset {name!r}: [metrics.NAME] tables must hold metric options")
    if metrics:
        options["metric_options"] = {m: dict(v) for m, v in metrics.items()}
    return Preset(data.get("name", name), data["description"], options, data.get("audit", {}),
                  data.get("compare", {}), data.get("published", {}), bool(data.get("default", False)),
                  data.get("reference", ""))


def load_presets() -> dict[str, Preset]:
    """Every preset shipped in registry/ (the installed ``featsurv_registry`` package)."""
    out: dict[str, Preset] = {}
    root = resources.files("featsurv_registry")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            stem = entry.name[:-5]
            try:
                data = tomllib.loads(entry.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise FeatsurvError(f"Preset file {entry.name!r} is not valid TOML: {exc}") from None
            preset = _parse(stem, data)
            out[preset.name] = preset
    return out


def get_preset(name: str | None) -> Preset:
    """The named preset, or the default one when ``name`` is None."""
    presets = load_presets()
    if name is None:
        for p in presets.values():
            if p.default:
                return p
        raise FeatsurvError("No default preset is installed", hint="Pass --model and --sae")
    if name not in presets:
        raise FeatsurvError(f"Unknown preset {name!r}", allowed=list(presets), hint="Run `featsurv presets` to list them")
    return presets[name]
