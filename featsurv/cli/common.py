"""Options shared by `audit` and `compare`, and turning them into AuditOptions.

Host options are declared once here; every metric option with a ``flag`` and every metric's
``enable_flag`` become flags too (read from the installed metrics when the command is built).
"""
from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import FeatsurvError

def opt(decls: list[str], **attrs: Any) -> tuple[list[str], dict[str, Any]]:
    return decls, attrs


HOST_OPTIONS: list[tuple[list[str], dict[str, Any]]] = [
    opt(["--preset"], default=None, help="Named preset (see `featsurv presets`); default: the embedded model."),
    opt(["--model"], default=None, help="Hub id or local directory of a Hugging Face causal LM."),
    opt(["--adapter"], default=None, help="Model adapter to use (default: chosen from the model's config)."),
    opt(["--adapter-option", "adapter_option_items"], multiple=True, metavar="KEY=VALUE",
        help="Option of the model adapter (repeat; `featsurv plugins` lists them), e.g. fold_ln=false."),
    opt(["--sae", "saes"], multiple=True, help="SAE: sae-lens directory or RELEASE:SAE_ID. Repeat for several hook points."),
    opt(["--hook", "hooks"], multiple=True, help="Hook point of each --sae (default: the SAE's metadata)."),
    opt(["--dataset"], default=None, help="file.txt, file.jsonl, hf:NAME[:CONFIG[:SPLIT]] or featsurv:heldout (default)."),
    opt(["--tokens", "n_tokens"], type=int, default=None, help="Token budget (contexts x context length; default 32768)."),
    opt(["--context"], type=int, default=None, help="Context length (default: the SAE's context_size, else 128)."),
    opt(["--bos/--no-bos", "prepend_bos"], default=None, help="Prepend BOS to each context (default: the SAE's metadata)."),
    opt(["--center-activations/--no-center-activations"], default=None,
                 help="Subtract each token's mean across d_model before encoding (TransformerLens's "
                      "center_writing_weights convention; default off)."),
    opt(["--keep-special"], is_flag=True, default=None, help="Use positions holding special tokens too."),
    opt(["--join"], type=click.Choice(["eos", "text"]), default=None, help="Join documents with EOS (default), or as one text with blank lines."),
    opt(["--batch-size"], type=int, default=None, help="Contexts per forward pass (default 8)."),
    opt(["--dtype"], type=click.Choice(["float32", "bfloat16", "float16"]), default=None, help="Model dtype (default float32)."),
    opt(["--device"], default=None, help="auto, cpu (default), cuda, cuda:N or mps; auto picks cuda, then mps, then cpu."),
    opt(["--seed"], type=int, default=None, help="Random seed, 0 to 2^32-1 (default 0)."),
    opt(["--scope"], default=None, help="Weights to compress: comma list of attn, mlp, embed, lm_head (default attn,mlp)."),
    opt(["--min-explained-variance"], type=float, default=None, help="Fit check threshold (default 0.5; 0 or less disables the fit check)."),
    opt(["--fit-margin"], type=float, default=None, help="Fit check: stop when the SAE fits a neighbouring hook point within this of its own (default 0.01)."),
    opt(["--max-l0-ratio"], type=float, default=None, help="Fit check: stop when the FP L0 differs from the L0 the SAE's metadata records by more than this factor (default 3; 0 disables)."),
    opt(["--calibration-tokens"], type=int, default=None, help="Tokens after the audit tokens set aside for data-aware compressors (default 8192 when one needs them)."),
    opt(["--metric", "metrics"], multiple=True, help="Also run this metric plugin."),
    opt(["--metric-option", "metric_option_items"], multiple=True, metavar="METRIC.KEY=VALUE",
                 help="A metric's option (see `featsurv plugins`), e.g. predictor.folds=10."),
    opt(["--trust-remote-code"], is_flag=True, default=None, help="Allow the model repo's own code (off by default)."),
    opt(["--require-safetensors"], is_flag=True, default=None, help="Refuse a model whose weights are only in a pickle file."),
    opt(["--out", "out_dir"], type=click.Path(file_okay=False), default=None, help="Result directory (default featsurv-runs/TIME-KIND)."),
    opt(["-q", "--quiet"], is_flag=True, help="No progress on stderr."),
]
#: keys of the options above that are not AuditOptions fields
CLI_ONLY = {"preset", "out_dir", "quiet", "keep_special", "metric_option_items", "adapter_option_items"}


def _metric_options(registry: Any) -> list[click.Option]:
    out = []
    for metric in registry.all("metrics"):
        if metric.enable_flag:
            out.append(click.Option([f"--{metric.enable_flag}", f"enable__{metric.name}"], is_flag=True, default=False,
                                    help=f"Also run the {metric.name} metric: {metric.description}."))
        for p in metric.options:
            if p.flag:
                kind = {int: int, float: float, str: str, bool: bool}.get(p.type, str)
                choices = click.Choice(list(p.choices)) if p.choices else kind
                out.append(click.Option([f"--{p.flag}", f"mopt__{metric.name}__{p.name}"], type=choices, default=None,
                                        help=f"{p.help[:1].upper()}{p.help[1:]} (metric {metric.name}; default {p.default})."))
    return out


def audit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the host options (metric flags are added by :func:`add_metric_options`)."""
    for decls, attrs in reversed(HOST_OPTIONS):
        func = click.option(*decls, **attrs)(func)
    return func


def add_metric_options(command: click.Command) -> click.Command:
    """Give a command the flags of the metrics installed now (again when the plugins change)."""
    from ..plugins import get_registry

    registry = get_registry()
    if getattr(command, "_featsurv_registry", None) is not registry:
        command.params = [p for p in command.params if not (p.name or "").startswith(("enable__", "mopt__"))]
        command.params.extend(_metric_options(registry))
        command._featsurv_registry = registry  # type: ignore[attr-defined]
    return command


def flag_of(option: str) -> str:
    """The CLI flag of an AuditOptions field, for messages (``n_tokens`` -> ``--tokens``)."""
    for decls, attrs in HOST_OPTIONS:
        parsed = click.Option(decls, **attrs)
        if parsed.name == option:
            return max(parsed.opts, key=len)
    return "--" + option.replace("_", "-")


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """(host option values given, metric options given, metrics enabled by flag) from click's kwargs."""
    from ..metric_set import parse_assignments

    host, metric_opts, enabled = {}, parse_assignments(kwargs.get("metric_option_items") or ()), []
    for key, value in kwargs.items():
        if key.startswith("enable__"):
            if value:
                enabled.append(key.split("__", 1)[1])
        elif key.startswith("mopt__"):
            if value is not None:
                _, metric, option = key.split("__", 2)
                metric_opts.setdefault(metric, {})[option] = value
        elif key not in CLI_ONLY and value not in (None, (), []):
            host[key] = list(value) if isinstance(value, tuple) else value
    if kwargs.get("keep_special"):
        host["exclude_special"] = False
    return host, metric_opts, enabled


def build_options(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """AuditOptions from CLI values over the preset's values; returns (options, preset or None)."""
    from ..data_paths import resolve
    from ..options import OptionError, make_options
    from ..presets import get_preset

    given, metric_opts, enabled = split_kwargs(kwargs)
    preset = get_preset(kwargs.get("preset")) if kwargs.get("preset") or "model" not in given else None
    values: dict[str, Any] = dict(preset.options) if preset else {}
    if preset and "model" in given and "saes" not in given:
        raise FeatsurvError("--model was given without --sae", hint="Pass --sae for the model, or drop --model to use the preset")
    if "saes" in given and "hooks" not in given:
        values.pop("hooks", None)  # the preset's hooks belong to the preset's SAEs
    if "adapter" in given and given["adapter"] != values.get("adapter"):
        values.pop("adapter_options", None)  # the preset's options belong to the preset's adapter
    adapter_opts = _adapter_options(kwargs.get("adapter_option_items") or ())
    if adapter_opts:  # given options override the preset's one by one
        values["adapter_options"] = {**values.get("adapter_options", {}), **adapter_opts}
    merged = {m: dict(o) for m, o in (values.pop("metric_options", None) or {}).items()}
    for metric, opts in metric_opts.items():
        merged.setdefault(metric, {}).update(opts)
    values.update(given)
    values["metrics"] = list(dict.fromkeys([*values.get("metrics", []), *enabled]))
    values["saes"] = [resolve(s) for s in values.get("saes", [])]
    if preset:
        values["preset"] = preset.name
    try:
        options = make_options(**values, metric_options=merged).validate()
        from ..metric_set import parse_metric_options
        from ..plugins import get_registry

        parse_metric_options(get_registry(), merged)  # bad metric options fail here, before any work
    except OptionError as exc:
        raise exc.shown_as(flag_of(exc.option)) from None
    return options, preset


def _adapter_options(items: tuple[str, ...]) -> dict[str, str]:
    """``("fold_ln=false", ...)`` as a dict; each key once."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise FeatsurvError(f"Bad --adapter-option {item!r}: expected KEY=VALUE",
                                hint="Write e.g. `--adapter-option fold_ln=false`")
        if key in out:
            raise FeatsurvError(f"Adapter option {key!r} given twice", hint="Give each --adapter-option key once")
        out[key] = value
    return out


def published_for(options: Any, preset: Any) -> Any:
    """The preset, when the run used its model and SAEs (so its published figures compare), else None."""
    from ..data_paths import resolve

    if preset is None or options.model != preset.options.get("model"):
        return None
    if [resolve(s) for s in preset.options.get("saes", [])] != list(options.saes):
        return None
    return preset


def progress_for(quiet: bool) -> Any:
    from ..progress import Progress

    return Progress(quiet=quiet)


def parse_configurations(registry: Any, compressor: str, params: tuple[str, ...],
                         preset_params: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Validate `-p` values against the compressor's declared parameters and expand sweeps."""
    from ..params import expand_grid, parse_assignments

    comp = registry.get("compressors", compressor)
    raw = parse_assignments(params)
    if not raw and preset_params:
        raw = {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in preset_params.items()}
    configurations = [(compressor, cfg) for cfg in expand_grid(comp.params, raw, compressor)]
    if not configurations:
        raise FeatsurvError(f"The -p values {' '.join(params)!r} give no configuration to run",
                            hint="Give each -p key at least one value, e.g. -p bits=8,6")
    return configurations
