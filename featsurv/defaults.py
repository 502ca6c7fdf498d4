"""What a run takes when the user does not say: one place for the CLI and the Python API.

- options: the named preset's values (the default preset when no model is given), under what
  the user gave; metric options from the preset's ``[metrics.NAME]`` tables, under the user's;
- configurations: the compressor's declared defaults for every parameter not given, or the
  preset's recipe (``[audit]``, ``[compare]``) when the preset's compressor is the one asked for;
- notes: one line for each default a preset overrides, shown in the progress output.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable

from .errors import FeatsurvError

Configuration = tuple[str, dict[str, Any]]
#: option keys that belong to the model and SAE pairing a preset is for (not reported as overrides)
PAIRING = ("model", "saes", "hooks", "adapter", "adapter_options", "preset", "metric_options", "dataset")


def resolve_options(given: dict[str, Any], metric_opts: dict[str, dict[str, Any]] | None = None,
                    enabled: list[str] | tuple[str, ...] = (), preset_name: str | None = None) -> tuple[Any, Any]:
    """AuditOptions from the values given over the preset's; returns (options, preset or None).

    Raises OptionError naming the bad field (the CLI shows it as its flag)."""
    from .data_paths import resolve
    from .metric_set import parse_metric_options
    from .options import make_options
    from .plugins import get_registry
    from .presets import get_preset

    preset = get_preset(preset_name) if preset_name or "model" not in given else None
    values: dict[str, Any] = dict(preset.options) if preset else {}
    if preset and "model" in given and "saes" not in given:
        raise FeatsurvError("A model was given without an SAE (--sae, saes=)",
                            hint="Pass the SAEs of the model, or drop the model to use the preset's")
    if "saes" in given and "hooks" not in given:
        values.pop("hooks", None)  # the preset's hooks belong to the preset's SAEs
    given = dict(given)
    if "adapter" in given and given["adapter"] != values.get("adapter"):
        values.pop("adapter_options", None)  # the preset's options belong to the preset's adapter
    if given.get("adapter_options"):  # given adapter options override the preset's one by one
        given["adapter_options"] = {**values.get("adapter_options", {}), **given["adapter_options"]}
    merged = {m: dict(o) for m, o in (values.pop("metric_options", None) or {}).items()}
    for metric, opts in (metric_opts or {}).items():
        merged.setdefault(metric, {}).update(opts)
    values.update(given)
    values["metrics"] = list(dict.fromkeys([*values.get("metrics", []), *enabled]))
    values["saes"] = [resolve(s) for s in values.get("saes", [])]
    if preset:
        values["preset"] = preset.name
    options = make_options(**values, metric_options=merged).validate()
    parse_metric_options(get_registry(), merged)  # bad metric options fail here, before any work
    return options, preset


def option_notes(preset: Any, given: dict[str, Any], name: Callable[[str], str] = str) -> list[str]:
    """A line naming each audit option the preset sets to other than its declared default."""
    from .options import AuditOptions

    if preset is None:
        return []
    declared = {f.name: f.default for f in fields(AuditOptions) if f.default is not MISSING}
    changed = []
    for key, value in preset.options.items():
        if key in PAIRING or key in given or key not in declared:
            continue
        default = declared[key]
        if value != default and not (isinstance(default, tuple) and tuple(value) == default):
            shown = "from the SAE's metadata" if default is None else _show(default)
            changed.append(f"{name(key)} {_show(value)} (default {shown})")
    if not changed:
        return []
    return [f"preset {preset.name} sets " + ", ".join(changed)]


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in params.items()) or "no parameters"


def as_raw(params: dict[str, Any] | None) -> dict[str, list[Any]]:
    """Python parameter values (a value, or a list to sweep) as the raw lists expand_grid takes."""
    return {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (params or {}).items()}


def audit_configurations(registry: Any, compressor: str, raw: dict[str, list[Any]],
                         preset: Any = None, shown: str | None = None) -> tuple[list[Configuration], list[str]]:
    """Configurations of an audit; with no parameters given, the preset's recipe for this compressor.
    ``shown``: the parameters as the user wrote them (`-p` text), for the error message."""
    from .params import expand_grid

    comp = registry.get("compressors", compressor)
    notes = []
    recipe = (preset.audit if preset else {}) or {}
    if not raw and recipe.get("params") and _same(registry, recipe.get("compressor"), comp):
        raw = as_raw(recipe["params"])
        declared = {p.name: p.default for p in comp.params if p.name in raw}
        notes.append(f"preset {preset.name} runs {comp.name} {_params_text(raw)} "
                     f"(declared default {_params_text(declared)}); give parameters to change it")
    configurations = [(compressor, cfg) for cfg in expand_grid(comp.params, raw, compressor)]
    if not configurations:
        what = f"-p values {shown!r}" if shown else f"parameters {raw!r}"
        raise FeatsurvError(f"The {what} give no configuration to run",
                            hint="Give each parameter at least one value, e.g. -p bits=8,6")
    return configurations, notes


def _same(registry: Any, name: Any, comp: Any) -> bool:
    return bool(name) and registry.get("compressors", str(name)).name == comp.name


@dataclass
class CompareSetup:
    """Everything `compare` runs with: A's and B's parameters and how B's knob is searched."""

    a: Configuration
    b: Configuration
    knob: str | None = None
    knob_range: tuple[float, float] | None = None
    steps: int = 8
    rtol: float = 0.005
    search_tokens: int | None = None
    notes: list[str] = field(default_factory=list)

    def run_kwargs(self) -> dict[str, Any]:
        return {"knob": self.knob, "knob_range": self.knob_range, "steps": self.steps, "rtol": self.rtol,
                "search_tokens": self.search_tokens}


def _one(params: Any, raw: dict[str, list[Any]], owner: str, what: str) -> dict[str, Any]:
    from .params import expand_grid

    grid = expand_grid(params, raw, owner)
    if len(grid) != 1:
        raise FeatsurvError(f"compare takes {what}, not a sweep", hint="Give each parameter one value")
    return grid[0]


def compare_setup(registry: Any, a: str, b: str, raw_a: dict[str, list[Any]], raw_b: dict[str, list[Any]],
                  preset: Any = None, *, knob: str | None = None, knob_range: tuple[float, float] | None = None,
                  steps: int | None = None, rtol: float | None = None,
                  search_tokens: int | None = None) -> CompareSetup:
    """A's and B's parameters: given, else the preset's ``[compare]`` recipe when it names the same
    compressor, else A's declared ``compare_default``; the search settings likewise."""
    comp_a, comp_b = registry.get("compressors", a), registry.get("compressors", b)
    spec = (preset.compare if preset else {}) or {}
    notes = []
    if not raw_a:
        own = dict(comp_a.compare_default or {})
        chosen = spec.get("a_params") if _same(registry, spec.get("a"), comp_a) else own
        raw_a = as_raw(chosen)
        if chosen != own:
            notes.append(f"preset {preset.name} runs A as {comp_a.name} {_params_text(chosen or {})} "
                         f"({comp_a.name}'s own compare default: {_params_text(own)}); give A's parameters to change it")
    same_b = _same(registry, spec.get("b"), comp_b)
    if not raw_b and same_b and spec.get("b_params"):
        raw_b = as_raw(spec["b_params"])
    setup = CompareSetup((a, _one(comp_a.params, raw_a, a, "one configuration of A")),
                         (b, _one(comp_b.params, raw_b, b, "fixed values for B's other parameters")), knob, notes=notes)
    setup.knob_range = knob_range or (tuple(spec["range"]) if same_b and "range" in spec else None)
    setup.steps = steps if steps is not None else ((spec.get("steps") if same_b else None) or 8)
    setup.rtol = rtol if rtol is not None else (spec.get("rtol") if same_b and "rtol" in spec else 0.005)
    setup.search_tokens = search_tokens if search_tokens is not None else (spec.get("search_tokens") if same_b else None)
    return setup
