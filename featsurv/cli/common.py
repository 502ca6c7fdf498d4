"""Options shared by `audit` and `compare`, and turning them into AuditOptions.

Host options are declared once here; every metric option with a ``flag`` and every metric's
``enable_flag`` become flags too (read from the installed metrics when the command is built).
"""
from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import FeatsurvError

def opt(decls: list[str], shown: str, **attrs: Any) -> tuple[list[str], dict[str, Any]]:
    """A host option; ``shown`` is its default as help shows it (the preset's value is added)."""
    attrs["help"] = attrs["help"].rstrip() + f" [default: {shown}]"
    return decls, attrs


HOST_OPTIONS: list[tuple[list[str], dict[str, Any]]] = [
    opt(["--preset"], "featsurv-tiny, the embedded model, when --model is not given", default=None,
        help="Named preset (see `featsurv presets`): model, SAEs, dataset, tokens and recipe."),
    opt(["--model"], "the preset's", default=None, help="Hub id or local directory of a Hugging Face causal LM."),
    opt(["--revision"], "the hub's default branch", default=None,
        help="Branch, tag or commit of a hub model (ignored for a local directory)."),
    opt(["--adapter"], "chosen from the model's config", default=None, help="Model adapter to use."),
    opt(["--adapter-option", "adapter_option_items"], "each option's own (`featsurv plugins` lists them)",
        multiple=True, metavar="KEY=VALUE", help="Option of the model adapter (repeat), e.g. fold_ln=false."),
    opt(["--sae", "saes"], "the preset's", multiple=True,
        help="SAE: sae-lens directory or RELEASE:SAE_ID. Repeat for several hook points."),
    opt(["--hook", "hooks"], "the SAE's metadata", multiple=True, help="Hook point of each --sae."),
    opt(["--dataset"], "featsurv:heldout", default=None, help="file.txt, file.jsonl, hf:NAME[:CONFIG[:SPLIT]] or featsurv:heldout."),
    opt(["--tokens", "n_tokens"], "32768", type=int, default=None, help="Token budget (contexts x context length)."),
    opt(["--context"], "the SAE's context_size, else 128", type=int, default=None, help="Context length in tokens."),
    opt(["--bos/--no-bos", "prepend_bos"], "the SAE's metadata, else on", default=None, help="Prepend BOS to each context."),
    opt(["--center-activations/--no-center-activations"], "off", default=None,
        help="Subtract each token's mean across d_model before encoding (TransformerLens's "
             "center_writing_weights convention)."),
    opt(["--keep-special"], "off: special tokens are left out", is_flag=True, default=None,
        help="Use positions holding special tokens too."),
    opt(["--join"], "eos", type=click.Choice(["eos", "text"]), default=None,
        help="Join documents with EOS, or as one text with blank lines."),
    opt(["--batch-size"], "8", type=int, default=None, help="Contexts per forward pass."),
    opt(["--dtype"], "float32", type=click.Choice(["float32", "bfloat16", "float16"]), default=None, help="Model dtype."),
    opt(["--device"], "cpu", default=None, help="auto, cpu, cuda, cuda:N or mps; auto picks cuda, then mps, then cpu."),
    opt(["--seed"], "0", type=int, default=None, help="Random seed, 0 to 2^32-1."),
    opt(["--scope"], "attn,mlp", default=None, help="Weights to compress: comma list of attn, mlp, embed, lm_head."),
    opt(["--min-explained-variance"], "0.5", type=float, default=None,
        help="Fit check threshold (0 or less disables the fit check)."),
    opt(["--fit-margin"], "0.01", type=float, default=None,
        help="Fit check: stop when the SAE fits a neighbouring hook point within this of its own."),
    opt(["--max-l0-ratio"], "3; 0 disables", type=float, default=None,
        help="Fit check: stop when the FP L0 differs from the L0 the SAE's metadata records by more than this factor."),
    opt(["--calibration-tokens"], "8192 when a compressor needs them, else 0", type=int, default=None,
        help="Tokens after the audit tokens set aside for data-aware compressors."),
    opt(["--metric", "metrics"], "the default metrics only", multiple=True, help="Also run this metric plugin."),
    opt(["--metric-option", "metric_option_items"], "each option's own (see `featsurv plugins`)", multiple=True,
        metavar="METRIC.KEY=VALUE", help="A metric's option, e.g. predictor.folds=10."),
    opt(["--trust-remote-code"], "off", is_flag=True, default=None, help="Allow the model repo's own code."),
    opt(["--require-safetensors"], "off", is_flag=True, default=None,
        help="Refuse a model whose weights are only in a pickle file."),
    opt(["--out", "out_dir"], "featsurv-runs/TIME-KIND", type=click.Path(file_okay=False), default=None,
        help="Result directory."),
    opt(["--json", "as_json"], "off: a table", is_flag=True,
        help="Print one JSON document on stdout (path, run id, summary) instead of the table; progress stays on stderr."),
    opt(["-q", "--quiet"], "off", is_flag=True, help="No progress on stderr."),
]
#: keys of the options above that are not AuditOptions fields
CLI_ONLY = {"preset", "out_dir", "quiet", "keep_special", "metric_option_items", "adapter_option_items", "as_json"}


def _metric_options(registry: Any) -> list[click.Option]:
    out = []
    for metric in registry.all("metrics"):
        if metric.enable_flag:
            out.append(click.Option([f"--{metric.enable_flag}", f"enable__{metric.name}"], is_flag=True, default=False,
                                    help=f"Also run the {metric.name} metric: {metric.description}. [default: off]"))
        for p in metric.options:
            if p.flag:
                kind = {int: int, float: float, str: str, bool: bool}.get(p.type, str)
                choices = click.Choice(list(p.choices)) if p.choices else kind
                out.append(click.Option([f"--{p.flag}", f"mopt__{metric.name}__{p.name}"], type=choices, default=None,
                                        help=f"{p.help[:1].upper()}{p.help[1:]} (metric {metric.name}). "
                                             f"[default: {p.default}]"))
    return out


def _default_preset_values() -> tuple[str, dict[str, Any]]:
    """(name, option values) of the default preset, for help texts; nothing when none loads."""
    from ..presets import get_preset

    try:
        preset = get_preset(None)
    except FeatsurvError:
        return "", {}
    return preset.name, dict(preset.options)


def with_preset_default(decls: list[str], attrs: dict[str, Any], preset: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """Help that also names the default preset's value where it differs from the option's own default."""
    from ..defaults import PAIRING, _show

    name, values = preset
    dest = click.Option(decls, **attrs).name
    if dest in PAIRING or dest not in values:
        return attrs
    shown = _show(values[dest])
    head, sep, tail = attrs["help"].rpartition(" [default: ")
    if not sep or tail.rstrip("]") == shown:
        return attrs
    return {**attrs, "help": f"{head} [default: {tail.rstrip(']')}; with the {name} preset: {shown}]"}


def audit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the host options (metric flags are added by :func:`add_metric_options`); an
    option the command declares itself (e.g. its own ``--json``) is left to the command."""
    preset = _default_preset_values()
    own = {p.name for p in getattr(func, "__click_params__", [])}
    for decls, attrs in reversed(HOST_OPTIONS):
        if click.Option(decls, **attrs).name not in own:
            func = click.option(*decls, **with_preset_default(decls, attrs, preset))(func)
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
    adapter_opts = _adapter_options(kwargs.get("adapter_option_items") or ())
    if adapter_opts:  # over the preset's adapter options, one by one (featsurv.defaults)
        host["adapter_options"] = adapter_opts
    return host, metric_opts, enabled


def build_options(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """AuditOptions from CLI values over the preset's values; returns (options, preset or None)."""
    from ..defaults import resolve_options
    from ..options import OptionError

    given, metric_opts, enabled = split_kwargs(kwargs)
    try:
        return resolve_options(given, metric_opts, enabled, kwargs.get("preset"))
    except OptionError as exc:
        raise exc.shown_as(flag_of(exc.option)) from None


def preset_notes(kwargs: dict[str, Any], preset: Any) -> list[str]:
    """Lines naming each default the preset overrides, by its flag (for the progress output)."""
    from ..defaults import option_notes

    given, _, _ = split_kwargs(kwargs)
    return option_notes(preset, given, flag_of)


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
                         preset: Any = None) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Validate `-p` values against the compressor's declared parameters and expand sweeps
    (the preset's recipe when no -p is given); returns (configurations, notes)."""
    from ..defaults import audit_configurations
    from ..params import parse_assignments

    return audit_configurations(registry, compressor, parse_assignments(params), preset, " ".join(params))
