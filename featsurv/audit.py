"""An audit session: load once, run the FP pass once, then measure any number of configurations.

Data flow (docs/architecture.md): documents -> TokenSet -> FP pass (every hook point read in one
forward pass, FP features kept sparse per batch, FP statistics, fit check) -> per configuration:
compress, forward, encode, stream (FP, compressed) feature pairs into the metrics, restore.
The jobs live in their own modules: loading (workbench), the batch loop (passes), the FP pass
(fp_pass), one configuration (configuration), result assembly (assembly).
"""
from __future__ import annotations

import time
from typing import Any

from .configuration import Group, Outcome, run_configuration
from .fp_pass import fp_pass
from .metric_set import MetricSet
from .options import AuditOptions, make_options
from .plugins import Registry, get_registry
from .progress import Progress
from .workbench import HookState, Workbench, load_workbench

__all__ = ["AuditOptions", "AuditSession", "HookState", "Outcome", "make_options"]


class AuditSession:
    """Loads once, runs the FP pass once, then measures any number of configurations."""

    def __init__(self, options: AuditOptions, registry: Registry | None = None, progress: Progress | None = None):
        self.options = options
        self.registry = registry or get_registry()
        self.progress = progress or Progress()
        self.metrics = MetricSet(self.registry, options.metrics, options.metric_options, options.seed)
        self.bench: Workbench | None = None
        self.baseline: dict[str, Any] = {}
        self.derived: dict[str, Any] = {}
        self.calibrated: dict[str, float] = {}

    @property
    def loaded(self) -> Any:
        return self.bench.loaded if self.bench else None

    @property
    def hooks(self) -> dict[str, HookState]:
        return self.bench.hooks if self.bench else {}

    @property
    def tokens(self) -> Any:
        return self.bench.tokens if self.bench else None

    @property
    def timings(self) -> dict[str, float]:
        return self.bench.timings if self.bench else {}

    def compressor(self, name: str) -> Any:
        return self.registry.get("compressors", name)

    def prepare(self, needs_calibration: bool = False) -> None:
        """Load model, SAEs and tokens, let metrics set up, run the FP pass and the fit check."""
        self.bench = load_workbench(self.options, self.registry, self.progress, needs_calibration)
        self.derived = {"device": self.bench.device, "metrics": self.metrics.setup(self.loaded, self.tokens)}
        self.baseline = fp_pass(self.bench, self.metrics)

    def run(self, name: str, params: dict[str, Any], *, features: bool = True, tokens: Any = None,
            groups: list[Group] | None = None, label: str | None = None) -> Outcome:
        """Measure one configuration; FP weights are restored afterwards whatever happens.
        ``groups``: compress only these groups of weight matrices, each with its own parameters."""
        compressor = self.compressor(name)
        if compressor.needs_calibration_for(params) and compressor.name not in self.calibrated:
            self.calibrate(compressor)
        self.progress.configuration(label or compressor.label(params))
        return run_configuration(self.bench, self.metrics, compressor, params, features, tokens, groups, label)

    def calibrate(self, compressor: Any) -> None:
        """Give a data-aware compressor its calibration tokens (disjoint from the audit tokens)."""
        from .errors import FeatsurvError

        calib = self.bench.calibration
        if calib is None:
            raise FeatsurvError(f"Compressor {compressor.name!r} needs calibration data, but no calibration "
                                "tokens were set aside", hint="Pass --calibration-tokens N (e.g. 8192)")
        t0 = time.perf_counter()
        self.progress(f"calibrating {compressor.name} on {calib.n_tokens} tokens after the audit tokens")
        targets = self.loaded.adapter.compressible_weights(self.loaded.model, self.options.scope)
        compressor.calibrate(self.loaded, targets, calib)
        self.calibrated[compressor.name] = round(time.perf_counter() - t0, 3)
        self.bench.timed("calibration", t0)
