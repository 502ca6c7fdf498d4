"""The base classes a plugin implements, one per kind of thing it can register.

Nothing here imports torch at module level: plugin registration must stay cheap so that
`featsurv --help` is fast. Heavy work happens inside the methods.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

from .errors import FeatsurvError
from .params import Param

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

KINDS = ("compressors", "model_adapters", "sae_sources", "metrics", "datasets")


# --------------------------------------------------------------------------- models
@dataclass
class WeightTarget:
    """One weight matrix a compressor may change.

    ``role`` is one of q, k, v, qkv (fused), o, mlp_in, mlp_gate, mlp_out, embed, lm_head.
    ``head_layout`` describes the output rows of attention projections as
    ``(n_heads, n_parts, d_head)`` (``n_parts`` is 3 for a fused QKV, else 1); None elsewhere.

    ``weight`` is always a 2-D ``[out, in]`` tensor that a compressor changes in place. Most
    adapters hand out ``module.weight`` itself. An adapter whose storage has another layout
    (GPT-2's transposed ``Conv1D``, a slice of a fused matrix, TransformerLens's per-head
    ``W_Q``) passes ``tensor``: a view of the storage, or a materialized ``[out, in]`` copy
    together with ``write_back``, which the host calls after every change so the model sees it.
    """

    name: str
    module: Any
    role: str
    layer: int | None = None
    head_layout: tuple[int, int, int] | None = None
    tensor: Any = None
    write_back: Callable[["torch.Tensor"], None] | None = None

    @property
    def weight(self) -> "torch.Tensor":
        return self.module.weight if self.tensor is None else self.tensor

    def sync(self) -> None:
        """Make the model see ``weight`` (the host calls this after compressing and restoring)."""
        if self.write_back is not None:
            self.write_back(self.weight)


@dataclass
class LoadedModel:
    """A model ready for auditing: the HF model, its tokenizer and the adapter that maps it."""

    model: Any
    tokenizer: Any
    adapter: "ModelAdapter"
    source: str
    dtype: str
    device: str


class ModelAdapter(ABC):
    """Maps a model family's modules to sae-lens hook names and compressible weights."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Hugging Face ``config.model_type`` values this adapter handles (empty: any decoder-only).
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Options a user sets with ``--adapter-option KEY=VALUE`` (or a preset's ``adapter_options``).
    options: ClassVar[tuple[Param, ...]] = ()
    #: The values of ``options`` this instance was configured with (see ``configure``).
    settings: dict[str, Any] = {}

    def configure(self, values: dict[str, Any]) -> "ModelAdapter":
        """A copy of this adapter holding validated ``values`` for its ``options`` (defaults filled in)."""
        import copy

        known = {p.name: p for p in self.options}
        for key in values:
            if key not in known:
                raise FeatsurvError(
                    f"Unknown option {key!r} for model adapter {self.name!r}",
                    allowed=list(known) or "none (this adapter takes no options)",
                    hint="Run `featsurv plugins` to see each adapter's options")
        settings = {}
        for name, p in known.items():
            if name not in values:
                settings[name] = p.default
                continue
            try:
                settings[name] = p.parse(values[name], f"model adapter {self.name!r}")
            except FeatsurvError:
                raise FeatsurvError(f"Bad value {values[name]!r} for option {name!r} of model adapter {self.name!r}",
                                    allowed=p.allowed(), hint=f"Pass --adapter-option {name}=VALUE") from None
        clone = copy.copy(self)
        clone.settings = settings
        return clone

    def option(self, name: str) -> Any:
        """The configured value of option ``name``, else its declared default."""
        if name in self.settings:
            return self.settings[name]
        return {p.name: p.default for p in self.options}[name]

    def matches(self, config: Any) -> bool:
        """Whether this adapter can map a model with this HF config."""
        return getattr(config, "model_type", None) in self.model_types

    @abstractmethod
    def load(self, source: str, *, dtype: str = "float32", device: str = "cpu",
             trust_remote_code: bool = False) -> LoadedModel:
        """Load model and tokenizer from a hub id or a local directory.

        An adapter that can refuse pickle weights also takes ``require_safetensors: bool = False``;
        featsurv passes it only when the user asks (``--require-safetensors``).
        """

    @abstractmethod
    def layers(self, model: Any) -> Sequence[Any]:
        """The decoder blocks, in order."""

    @abstractmethod
    def hook_point(self, model: Any, hook_name: str) -> tuple[Any, str]:
        """Resolve a sae-lens hook name to ``(module, "output" | "input")``."""

    @abstractmethod
    def compressible_weights(self, model: Any, scope: Sequence[str] = ("attn", "mlp")) -> list[WeightTarget]:
        """The weight matrices in ``scope`` (attn, mlp, embed, lm_head)."""

    def forward(self, model: Any, input_ids: "torch.Tensor") -> "torch.Tensor":
        """Logits ``[batch, ctx, vocab]`` of one forward pass (default: a Hugging Face causal LM)."""
        return model(input_ids, use_cache=False).logits

    def width(self, model: Any) -> int:
        """The residual stream width ``d_model`` (default: ``config.hidden_size``)."""
        return int(model.config.hidden_size)

    def hook_width(self, model: Any, hook_name: str) -> int:
        """The size of one token's activation at a hook, flattened (default: ``width``)."""
        return self.width(model)

    def max_positions(self, model: Any) -> int | None:
        """The most positions one context may have, or None when unbounded."""
        return getattr(model.config, "max_position_embeddings", None)


# --------------------------------------------------------------------------- SAEs
@dataclass
class LoadedSAE:
    """A frozen SAE and what featsurv needs to know about it."""

    sae: Any
    spec: str
    hook_name: str | None
    d_in: int
    d_sae: int
    model_name: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    architecture: str = ""
    source: str = ""
    #: The SAE's Neuronpedia id (sae-lens ``cfg.metadata.neuronpedia_id``, e.g. ``gpt2-small/0-res-jb``):
    #: feature N's page is https://neuronpedia.org/{neuronpedia_id}/N.
    neuronpedia_id: str | None = None
    #: What the SAE's metadata records of its firing where it was trained, where it does:
    #: ``{"l0": mean active features per token, "dead_fraction": ..., "source": "where from"}``.
    #: The fit check compares the audit's FP firing with it (featsurv/firing_profile.py).
    expected_profile: dict[str, Any] = field(default_factory=dict)

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.sae.encode(x)

    def decode(self, f: "torch.Tensor") -> "torch.Tensor":
        return self.sae.decode(f)

    def feature_stats(self) -> dict[str, "np.ndarray"]:
        """Per-feature weight statistics (decoder-row norm, encoder-column norm, bias, threshold)."""
        return {}


class SAESource(ABC):
    """Loads SAEs from a spec string (a release id, a directory, ...)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def can_load(self, spec: str) -> bool:
        """Cheap check: does this source recognise the spec (without loading it)?"""

    @abstractmethod
    def load(self, spec: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedSAE:
        """Load the SAE."""


# --------------------------------------------------------------------------- compressors
class Compressor(ABC):
    """A compression method, simulated in place on the weights it is given.

    The host snapshots the targets' weights before ``compress`` and restores them afterwards,
    so a compressor never needs to undo its work.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    #: The parameter `featsurv compare` bisects on to match perplexity, and its default range.
    knob: ClassVar[str | None] = None
    knob_range: ClassVar[tuple[float, float] | None] = None
    #: True when a larger knob value compresses harder (sparsity); False when smaller does (bits).
    knob_increases_compression: ClassVar[bool] = True
    #: Default parameters when this compressor is the reference side (A) of `compare`.
    compare_default: ClassVar[dict[str, Any]] = {}
    #: Other names this compressor answers to (listed by `featsurv plugins`; a clash is an error).
    aliases: ClassVar[tuple[str, ...]] = ()
    #: True when ``calibrate`` must run before ``compress`` (data-aware methods: Wanda, GPTQ...).
    needs_calibration: ClassVar[bool] = False

    def needs_calibration_for(self, params: dict[str, Any]) -> bool:
        """Whether a configuration with these parameters needs ``calibrate`` first."""
        return self.needs_calibration

    def search_knob(self, params: dict[str, Any]) -> str | None:
        """The knob `compare` may bisect for these fixed parameters (None: nothing left to search,
        e.g. an N:M pattern that fixes sparsity). Default: ``knob``."""
        return self.knob

    def transform(self, model: LoadedModel, targets: list[WeightTarget], params: dict[str, Any]) -> Any:
        """A change to the model beyond its weights for one configuration (activation or KV-cache
        quantization): return a context manager, or None. The host enters it after ``compress``
        for the configuration's forward passes and always exits it (in a ``finally``)."""
        return None

    def calibrate(self, model: LoadedModel, targets: list[WeightTarget], calibration: Any) -> None:
        """Fires once per audit, after the FP pass and before any configuration, when
        ``needs_calibration`` is set. ``calibration`` is a token set disjoint from the audit
        tokens (``calibration.batches(batch_size)`` yields ``(input_ids, keep)``); keep what
        ``compress`` needs on ``self``. The model is full precision during the call."""

    @abstractmethod
    def compress(self, targets: list[WeightTarget], params: dict[str, Any]) -> None:
        """Change the target weights in place (under ``torch.no_grad()``)."""

    def label(self, params: dict[str, Any]) -> str:
        """A short label for one configuration, e.g. ``rtn bits=6``."""
        shown = [f"{p.name}={params[p.name]}" for p in self.params
                 if p.name in params and (params[p.name] != p.default or p.name == self.knob)]
        return " ".join([self.name, *shown])


# --------------------------------------------------------------------------- datasets
class DatasetSource(ABC):
    """Yields documents (plain text) from a dataset spec."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def can_load(self, spec: str) -> bool:
        """Cheap check: does this source recognise the spec?"""

    @abstractmethod
    def documents(self, spec: str) -> Iterator[str]:
        """The documents, in a deterministic order."""


# --------------------------------------------------------------------------- metrics
@dataclass
class FeatureResult:
    """What a feature metric reports for one (configuration, hook).

    ``summary`` joins the configuration's summary entry (under ``metrics.<name>``, or at the
    top level for the metric the host treats as primary); ``per_feature`` arrays of length
    ``d_sae`` become columns of features.parquet; ``tables`` are extra tables (name -> pandas
    DataFrame) that the host concatenates over configurations and hooks (adding ``config`` and
    ``hook`` columns) into ``<name>.parquet`` in the run directory.
    """

    summary: dict[str, Any]
    per_feature: dict[str, "np.ndarray"] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)


class FPAccumulator(ABC):
    """Streams the FP features of one hook during the FP pass (once per audit)."""

    @abstractmethod
    def update(self, fp: "torch.Tensor", batch: Batch) -> None:
        """``fp`` is ``[tokens, d_sae]`` for the kept tokens of ``batch``."""

    @abstractmethod
    def result(self) -> Any:
        """Finish; the host hands this to the metric's ``feature_accumulator(..., fp_result=...)``."""


@dataclass
class ReportSection:
    """A metric's part of report.html: an HTML fragment, and files written beside it."""

    title: str
    html: str
    files: dict[str, bytes] = field(default_factory=dict)
    order: int = 50


@dataclass
class Batch:
    """Where the kept tokens of one batch come from.

    ``context_sizes[i]`` kept tokens belong to context ``first_context + i``, in order; they sum
    to the number of rows of the feature tensors. ``positions`` ``[tokens]`` is each kept
    token's position in its context, ``input_ids`` ``[batch, ctx]`` the batch's token ids.
    """

    index: int
    first_context: int
    context_sizes: list[int]
    positions: Any = None
    input_ids: Any = None
    tokenizer: Any = None


class FeatureAccumulator(ABC):
    """Streams FP and compressed SAE features of the same tokens, batch by batch."""

    @abstractmethod
    def update(self, fp: "torch.Tensor", compressed: "torch.Tensor", batch: Batch) -> None:
        """``fp`` and ``compressed`` are ``[tokens, d_sae]`` for the same kept tokens of ``batch``."""

    @abstractmethod
    def result(self, fp_stats: dict[str, "np.ndarray"]) -> FeatureResult:
        """Finish; ``fp_stats`` holds the FP per-feature statistics (firing_rate, mean, peak...)."""


class ModelAccumulator(ABC):
    """Streams the model's logits on the audit contexts, in the same forward pass as the features."""

    @abstractmethod
    def update(self, logits: "torch.Tensor", input_ids: "torch.Tensor") -> None:
        """``logits`` ``[batch, ctx, vocab]`` and the ``input_ids`` ``[batch, ctx]`` they came from."""

    @abstractmethod
    def result(self) -> dict[str, Any]:
        """Finish and report."""


@dataclass(frozen=True)
class Column:
    """One column a metric adds to the results table (CLI and report).

    ``key`` is a field of a summary entry; ``format`` is ``pct`` (0.5 -> 50.0%), ``signed_pct``
    (+1.23%), ``float`` (3 decimals) or ``num`` (4 significant digits).
    """

    key: str
    header: str
    format: str = "float"
    width: int = 9


class Metric(ABC):
    """A measurement. Override the hooks that apply; the host calls each at its time.

    Per audit, in this order:
    - ``setup``: once, after the model and tokens load, before the FP pass; returns derived
      settings (recorded in run.json) or None. Raise FeatsurvError for options the model cannot take.
    - ``fp_accumulator``: once per hook point, fed the FP features during the FP pass.
    - ``model_accumulator``: once for FP and once per configuration, fed logits of the audit pass.
    - ``evaluate``: once for FP and once per configuration, with the model in that state.
    - ``feature_accumulator``: once per (configuration, hook point), fed FP and compressed
      features (``fp_result``: what this metric's FP accumulator returned, when it has one).
    - ``entry``: once per (configuration, hook point), after every metric measured it: fields for
      the summary entry, given the entry so far (other metrics' fields) and the FP baseline.
    - ``compare``: once per hook point in `featsurv compare`, on both configurations' results.
    - ``analyze``: once per run, after every configuration, on the finished result; the return
      value is stored in summary.json under ``summary_key`` (default: the metric's name).
    Presentation: ``columns`` (results table), ``text`` (lines printed after the table),
    ``report_sections`` (report.html).

    ``options`` passed to every hook holds this metric's declared ``options`` (parsed, with
    defaults) plus the run-wide ``seed``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Run by default (True) or only when asked for with --metric NAME or ``enable_flag``.
    default: ClassVar[bool] = True
    #: A CLI flag of audit/compare that turns this metric on (e.g. ``predict`` for --predict).
    enable_flag: ClassVar[str | None] = None
    #: Typed options (``--metric-option NAME.KEY=VALUE``; a Param with ``flag`` also gets --FLAG).
    options: ClassVar[tuple[Param, ...]] = ()
    #: Where ``analyze``'s result goes in summary.json (default: ``name``).
    summary_key: ClassVar[str | None] = None
    #: Metrics run (and add their summary fields and columns) in ascending order, then by name.
    order: ClassVar[int] = 50
    #: Prefix of this metric's per-feature columns in features.parquet (None: ``"<name>."``).
    feature_prefix: ClassVar[str | None] = None
    #: Set when ``match_value`` gives the model-level value `featsurv compare` matches (a label
    #: for messages, e.g. ``perplexity``); the first metric in order that sets it is used.
    match_label: ClassVar[str | None] = None

    def match_value(self, model_result: Any) -> float | None:
        """The value `compare` matches, from what this metric measured on one configuration."""
        return None

    def baseline(self, fp: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        """Fields for summary.json's ``baseline`` after the FP pass (``fp.model_metrics``: each
        metric's FP result; ``fp.hooks``: hook point -> state with ``sae`` and ``fp_stats``)."""
        return None

    def setup(self, model: LoadedModel, tokens: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def fp_accumulator(self, d_sae: int, options: dict[str, Any]) -> FPAccumulator | None:
        return None

    def feature_accumulator(self, d_sae: int, options: dict[str, Any], fp_result: Any = None) -> FeatureAccumulator | None:
        return None

    def model_accumulator(self, options: dict[str, Any]) -> ModelAccumulator | None:
        return None

    def evaluate(self, model: LoadedModel, tokens: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def entry(self, entry: dict[str, Any], outcome: Any, baseline: dict[str, Any],
              options: dict[str, Any]) -> dict[str, Any] | None:
        """Fields for one summary entry. ``outcome.model_metrics[name]`` and
        ``outcome.features[hook][name]`` hold what this metric measured."""
        return None

    def compare(self, a: dict[str, FeatureResult], b: dict[str, FeatureResult],
                options: dict[str, Any]) -> dict[str, Any] | None:
        """Statistics between two configurations at one hook point (each: metric name -> result)."""
        return None

    def analyze(self, run: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def columns(self) -> list[Column]:
        return []

    def row_flags(self, entry: dict[str, Any]) -> list[str]:
        """Short warnings for one summary entry (the row is highlighted, e.g. a damage flag)."""
        return []

    def row_notes(self, entry: dict[str, Any]) -> list[str]:
        """Lines printed under an entry's row in the CLI table (e.g. a confidence interval)."""
        return []

    def text(self, summary: dict[str, Any]) -> list[str]:
        """Lines printed after the results table (e.g. a comparison or a predictor table)."""
        return []

    def report_sections(self, run: Any) -> list[ReportSection]:
        return []
