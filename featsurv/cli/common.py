"""Options shared by `audit` and `compare`, and turning them into AuditOptions."""
from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import FeatsurvError

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--preset", default=None, help="Named preset (see `featsurv presets`); default: the embedded model."),
    click.option("--model", default=None, help="Hub id or local directory of a Hugging Face causal LM."),
    click.option("--adapter", default=None, help="Model adapter to use (default: chosen from the model's config)."),
    click.option("--adapter-option", "adapter_options", multiple=True, metavar="KEY=VALUE",
                 help="Option of the model adapter (repeat; `featsurv plugins` lists them)."),
    click.option("--sae", "saes", multiple=True, help="SAE: sae-lens directory or RELEASE:SAE_ID. Repeat for several hooks."),
    click.option("--hook", "hooks", multiple=True, help="Hook of each --sae (default: the SAE's metadata)."),
    click.option("--dataset", default=None, help="file.txt, file.jsonl, hf:NAME[:CONFIG[:SPLIT]] or featsurv:heldout."),
    click.option("--tokens", "n_tokens", type=click.IntRange(min=1), default=None, help="Token budget (contexts x context length)."),
    click.option("--context", type=click.IntRange(min=2), default=None, help="Context length (default: the SAE's context_size, else 128)."),
    click.option("--bos/--no-bos", "prepend_bos", default=None, help="Prepend BOS to each context (default: the SAE's metadata)."),
    click.option("--center-activations/--no-center-activations", default=None,
                 help="Subtract each token's mean across d_model before encoding (TransformerLens's "
                      "center_writing_weights convention)."),
    click.option("--keep-special", is_flag=True, default=None, help="Use positions holding special tokens too."),
    click.option("--join", type=click.Choice(["eos", "text"]), default=None, help="Join documents with EOS, or as one text with blank lines."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Contexts per forward pass."),
    click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None),
    click.option("--device", default=None, help="cpu, cuda, cuda:1, ..."),
    click.option("--seed", type=int, default=None, help="Random seed (default 0)."),
    click.option("--scope", default=None, help="Weights to compress: comma list of attn, mlp, embed, lm_head."),
    click.option("--min-explained-variance", type=float, default=None, help="Fit check threshold (default 0.5; 0 disables)."),
    click.option("--min-firing-rate", type=float, default=None, help="Active feature: FP firing rate above this (default 0.001)."),
    click.option("--perplexity", "perplexity_mode", type=click.Choice(["window", "sliding"]), default=None),
    click.option("--ppl-window", type=int, default=None, help="Sliding perplexity window (default min(2048, model positions))."),
    click.option("--ppl-stride", type=int, default=None, help="Sliding perplexity stride (default window / 4)."),
    click.option("--ppl-tolerance", type=float, default=None, help="'Perplexity misses damage' tolerance (default 0.01)."),
    click.option("--survival-target", type=float, default=None, help="'Perplexity misses damage' survival target (default 0.9)."),
    click.option("--bootstrap", type=click.IntRange(min=0), default=None, help="Bootstrap resamples for confidence intervals (0: off; default 1000)."),
    click.option("--metric", "metrics", multiple=True, help="Also run this metric plugin."),
    click.option("--trust-remote-code", is_flag=True, default=None, help="Allow the model repo's own code (off by default)."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Result directory (default featsurv-runs/TIME-KIND)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
]

NON_OPTION_KEYS = {"preset", "out_dir", "quiet", "params", "compressor", "a", "b", "predict", "knob", "search_range",
                   "steps", "rtol", "a_params", "b_params"}


def audit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def build_options(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """AuditOptions from CLI values over the preset's values; returns (options, preset or None)."""
    from ..audit import AuditOptions
    from ..presets import get_preset

    given = {k: v for k, v in kwargs.items() if k not in NON_OPTION_KEYS and v not in (None, (), [])}
    if given.get("keep_special"):
        given["exclude_special"] = False
    given.pop("keep_special", None)
    for key in ("saes", "hooks", "metrics"):
        if key in given:
            given[key] = list(given[key])
    if "adapter_options" in given:
        given["adapter_options"] = _adapter_options(given["adapter_options"])
    if "scope" in given:
        given["scope"] = tuple(s.strip() for s in given["scope"].split(",") if s.strip())
    preset = None
    if kwargs.get("preset") or "model" not in given:
        preset = get_preset(kwargs.get("preset"))
    values: dict[str, Any] = dict(preset.options) if preset else {}
    if preset and "model" in given and "saes" not in given:
        raise FeatsurvError("--model was given without --sae", hint="Pass --sae for the model, or drop --model to use the preset")
    if "saes" in given and "hooks" not in given:
        values.pop("hooks", None)  # the preset's hooks belong to the preset's SAEs
    if "adapter" in given and given["adapter"] != values.get("adapter"):
        values.pop("adapter_options", None)  # the preset's options belong to the preset's adapter
    if "adapter_options" in given:  # given options override the preset's one by one
        given["adapter_options"] = {**values.get("adapter_options", {}), **given["adapter_options"]}
    values.update(given)
    if "saes" not in values:
        raise FeatsurvError("No SAE given", hint="Pass --sae DIR_OR_RELEASE:ID (repeat for several hooks)")
    from ..data_paths import resolve

    values["saes"] = [resolve(s) for s in values["saes"]]
    if preset:
        values["preset"] = preset.name
    return AuditOptions(**values), preset


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
    return [(compressor, cfg) for cfg in expand_grid(comp.params, raw, compressor)]
