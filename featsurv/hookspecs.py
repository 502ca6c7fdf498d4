"""The hooks a featsurv plugin can implement.

Every ``register_<things>`` hook fires once, when the plugin manager is first built (the first
time a command needs plugins). The host passes a ``register`` callback that validates each item
and records which plugin provided it; registering a name twice is an error naming both plugins.
"""
from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("featsurv")
hookimpl = pluggy.HookimplMarker("featsurv")


@hookspec
def register_compressors(register: Callable[[Any], None]) -> None:
    """Fires at plugin load. Call ``register(compressor)`` with a ``featsurv.Compressor`` instance."""


@hookspec
def register_model_adapters(register: Callable[[Any], None]) -> None:
    """Fires at plugin load. Call ``register(adapter)`` with a ``featsurv.ModelAdapter`` instance."""


@hookspec
def register_sae_sources(register: Callable[[Any], None]) -> None:
    """Fires at plugin load. Call ``register(source)`` with a ``featsurv.SAESource`` instance."""


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Fires at plugin load. Call ``register(metric)`` with a ``featsurv.Metric`` instance."""


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Fires at plugin load. Call ``register(source)`` with a ``featsurv.DatasetSource`` instance."""


@hookspec
def register_commands(cli: Any) -> None:
    """Fires when the CLI starts. Add click commands to the ``cli`` group (``@cli.command()``)."""
