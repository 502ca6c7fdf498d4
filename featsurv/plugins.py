"""Finding, loading and indexing plugins.

Every plugin, built-in or third-party, is a module named by an entry point in the ``featsurv``
group. Each entry point is loaded on its own: one that fails to import or register is a warning
naming it and its distribution (``FEATSURV_STRICT_PLUGINS=1`` re-raises instead).

Controls (environment):
- ``FEATSURV_LOAD_PLUGINS``: comma-separated allow-list of third-party distributions to load
  (set but empty: none). Built-ins (distribution ``featsurv``) are always loaded unless disabled.
- ``FEATSURV_DISABLE_PLUGINS``: comma-separated plugin or distribution names to skip, built-ins included.
- ``FEATSURV_PLUGINS_DIR`` (or ``featsurv --plugins-dir DIR``): load every ``*.py`` in a folder as a plugin.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .base import Compressor, DatasetSource, Metric, ModelAdapter, SAESource
from .errors import FeatsurvError, unknown

BUILTIN_DISTRIBUTION = "featsurv"

#: kind -> (hook name, base class, singular noun for messages)
KIND_SPECS: dict[str, tuple[str, type, str]] = {
    "compressors": ("register_compressors", Compressor, "compressor"),
    "model_adapters": ("register_model_adapters", ModelAdapter, "model adapter"),
    "sae_sources": ("register_sae_sources", SAESource, "SAE source"),
    "metrics": ("register_metrics", Metric, "metric"),
    "datasets": ("register_datasets", DatasetSource, "dataset source"),
}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; it was skipped."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: Any = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    #: kind -> name -> the item this plugin registered (kept even when the name is in conflict)
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: messages of the name conflicts this plugin is part of
    conflicts: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = {"name": self.name, "distribution": self.distribution, "version": self.version,
               "provides": {k: sorted(v) for k, v in self.provides.items() if v}}
        if self.conflicts:
            out["conflicts"] = list(self.conflicts)
        return out


@dataclass
class Entry:
    item: Any
    plugin: str


_DISABLE_HINT = "Uninstall or disable one of them (FEATSURV_DISABLE_PLUGINS=NAME)"


class _Conflicts:
    """Name conflicts between plugins: recorded while loading, raised when a name in conflict is used."""

    plugins: dict[str, PluginInfo]
    items: dict[str, dict[str, Entry]]
    aliases: dict[str, dict[str, Entry]]
    conflicts: dict[str, dict[str, list[str]]]
    blocked: dict[str, str]

    def conflict_error(self, kind: str, name: str) -> FeatsurvError:
        plugins = self.conflicts[kind][name]
        return FeatsurvError(f"Two plugins register a {KIND_SPECS[kind][2]} named {name!r}: "
                             + " and ".join(repr(p) for p in plugins), hint=_DISABLE_HINT)

    def conflict_messages(self) -> list[str]:
        """Every conflict, one line each (for `featsurv plugins`)."""
        lines = [self.conflict_error(kind, name).message for kind in KIND_SPECS for name in sorted(self.conflicts[kind])]
        return lines + sorted(set(self.blocked.values()))

    def _record_conflict(self, kind: str, key: str, plugin: str, existing: str | None) -> None:
        plugins = self.conflicts[kind].setdefault(key, [existing] if existing else [])
        if plugin not in plugins:
            plugins.append(plugin)
        message = self.conflict_error(kind, key).message
        for name in plugins:
            info = self.plugins.get(name)
            if info is not None:
                info.conflicts = [m for m in info.conflicts if f"named {key!r}:" not in m] + [message]
        if os.environ.get("FEATSURV_STRICT_PLUGINS") == "1":
            raise self.conflict_error(kind, key)

    def _check_usable(self, kind: str, name: str, entry: Entry | None) -> None:
        if name in self.conflicts[kind]:
            raise self.conflict_error(kind, name)
        if entry is not None and entry.plugin in self.blocked:
            raise FeatsurvError(self.blocked[entry.plugin].rstrip(".") + f"; the {KIND_SPECS[kind][2]} {name!r} "
                                "comes from one of them", hint="Rename or disable one of them (FEATSURV_DISABLE_PLUGINS=DISTRIBUTION)")

    def _forget_conflicts(self, kind: str, name: str) -> None:
        """Plugin ``name`` is gone: a conflict it was part of may be over (the survivor's item takes the name)."""
        for key, plugins in list(self.conflicts[kind].items()):
            if name not in plugins:
                continue
            plugins.remove(name)
            if len(plugins) > 1:
                continue
            del self.conflicts[kind][key]
            for other in plugins:
                survivor = self.plugins[other]
                survivor.conflicts = [m for m in survivor.conflicts if f"named {key!r}:" not in m]
                for item_name, item in survivor.registered.get(kind, {}).items():
                    if key == item_name:
                        self.items[kind][key] = Entry(item, other)
                    elif key in getattr(item, "aliases", ()):
                        self.aliases[kind][key] = Entry(item, other)


class Registry(_Conflicts):
    """Everything the loaded plugins registered, with who registered it.

    A name registered by two plugins (or two plugins of one name) is recorded as a conflict,
    not raised while loading: `featsurv plugins` still lists everything and shows it, and using
    an item of that name raises the conflict (``FEATSURV_STRICT_PLUGINS=1`` raises at once).
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("featsurv")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.items: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_SPECS}
        self.aliases: dict[str, dict[str, Entry]] = {kind: {} for kind in KIND_SPECS}
        #: kind -> name -> plugins registering it (two or more)
        self.conflicts: dict[str, dict[str, list[str]]] = {kind: {} for kind in KIND_SPECS}
        #: plugin key -> message, for plugins sharing their name with another plugin
        self.blocked: dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def make_register(self, kind: str, plugin: str) -> Callable[[Any], Any]:
        """The validating ``register`` callback handed to one plugin's hook for one kind."""
        _, base, noun = KIND_SPECS[kind]

        def register(item: Any) -> Any:
            if isinstance(item, type):
                item = item()
            if not isinstance(item, base):
                raise TypeError(f"plugin {plugin!r} registered {item!r} as a {noun}, "
                                f"but it is not a featsurv.{base.__name__}")
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name or any(c.isspace() or c in ",=:" for c in name):
                raise TypeError(f"plugin {plugin!r} registered a {noun} with a bad name {name!r}: "
                                "use a non-empty name without spaces, commas, '=' or ':'")
            names = [name, *getattr(item, "aliases", ())]
            info = self.plugins[plugin]
            info.provides.setdefault(kind, []).append(name)
            info.registered.setdefault(kind, {})[name] = item
            for i, key in enumerate(names):
                existing = self.items[kind].get(key) or self.aliases[kind].get(key)
                if existing is not None or key in self.conflicts[kind]:
                    self._record_conflict(kind, key, plugin, existing.plugin if existing else None)
                    continue
                (self.items if i == 0 else self.aliases)[kind][key] = Entry(item, plugin)
            return item

        return register

    def add_plugin(self, module: Any, name: str, distribution: str, version: str) -> None:
        """Register one plugin object and run its register hooks, isolating failures."""
        key = name
        if name in self.plugins:  # load it under another key; using what either registers is refused
            first = self.plugins[name]
            message = f"Two plugins are named {name!r} ({first.distribution} and {distribution})"
            if os.environ.get("FEATSURV_STRICT_PLUGINS") == "1":
                raise FeatsurvError(message, hint="Rename or disable one of them")
            key = f"{name}@{distribution}"
            self.blocked[name] = self.blocked[key] = message
            first.conflicts.append(message)
        self.plugins[key] = PluginInfo(key, distribution, version, module)
        if key in self.blocked:
            self.plugins[key].conflicts.append(self.blocked[key])
        try:
            self.pm.register(module, name=key)
            self.pm.check_pending()
        except Exception as exc:  # a broken plugin must not take the host down
            self.remove_plugin(key)
            _plugin_failed(name, distribution, exc)
            return
        for kind, (hook, _, _) in KIND_SPECS.items():
            if not self.call_plugin(key, hook, register=self.make_register(kind, key)):
                self.remove_plugin(key)
                return

    def call_plugin(self, name: str, hook: str, **kwargs: Any) -> bool:
        """The one path into a plugin's hook implementation: call plugin ``name``'s ``hook``
        (if it has one) with ``kwargs``, attributing any failure to it. Returns False when it
        failed (a warning naming the plugin and its distribution; FEATSURV_STRICT_PLUGINS=1
        re-raises). A FeatsurvError (e.g. a duplicate name) is the user's to see and propagates."""
        info = self.plugins.get(name)
        try:
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(**kwargs)
        except FeatsurvError:
            raise
        except Exception as exc:
            _plugin_failed(name, info.distribution if info else "?", exc)
            return False
        return True

    def remove_plugin(self, name: str) -> None:
        info = self.plugins.pop(name, None)
        if info is None:
            return
        for kind in self.items:
            self.items[kind] = {k: e for k, e in self.items[kind].items() if e.plugin != name}
            self.aliases[kind] = {k: e for k, e in self.aliases[kind].items() if e.plugin != name}
            self._forget_conflicts(kind, name)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        return sorted(set(self.items[kind]) | set(self.conflicts[kind]))

    def get(self, kind: str, name: str) -> Any:
        entry = self.items[kind].get(name) or self.aliases[kind].get(name)
        self._check_usable(kind, name, entry)
        if entry is None:
            hint = None
            if self.blocked:
                hint = "; ".join(sorted(set(self.blocked.values()))) + ": disable one of them (FEATSURV_DISABLE_PLUGINS=DISTRIBUTION)"
            raise unknown(KIND_SPECS[kind][2], name, self.names(kind), hint=hint)
        return entry.item

    def provider(self, kind: str, name: str) -> PluginInfo:
        entry = self.items[kind].get(name) or self.aliases[kind][name]
        return self.plugins[entry.plugin]

    def all(self, kind: str) -> list[Any]:
        """Every item of a kind, in name order; a name conflict in that kind raises (which one is meant is unknown)."""
        for name in sorted(self.conflicts[kind]):
            raise self.conflict_error(kind, name)
        for name, entry in sorted(self.items[kind].items()):
            self._check_usable(kind, name, entry)
        return [self.items[kind][n].item for n in sorted(self.items[kind])]


def _plugin_failed(name: str, distribution: str, exc: BaseException) -> None:
    if os.environ.get("FEATSURV_STRICT_PLUGINS") == "1":
        raise exc
    warnings.warn(
        f"featsurv: plugin {name!r} (distribution {distribution!r}) failed to load and was skipped: "
        f"{type(exc).__name__}: {exc}. Set FEATSURV_STRICT_PLUGINS=1 to see the traceback, or "
        f"FEATSURV_DISABLE_PLUGINS={name} to silence this.",
        PluginWarning, stacklevel=3)


def _csv_env(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group="featsurv"), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))


def load_directory(registry: Registry, folder: str | Path) -> None:
    """Load every ``*.py`` module in ``folder`` as a one-off plugin (``--plugins-dir``)."""
    path = Path(folder)
    if not path.is_dir():
        raise FeatsurvError(f"Plugins directory {str(folder)!r} does not exist or is not a folder",
                            hint="Pass a folder holding plugin modules (*.py) to --plugins-dir")
    block = _csv_env("FEATSURV_DISABLE_PLUGINS") or set()
    for file in sorted(path.glob("*.py")):
        name = file.stem
        if name in block:
            continue
        mod_name = f"featsurv_dir_plugin_{name}"
        try:
            spec = importlib.util.spec_from_file_location(mod_name, file)
            assert spec and spec.loader
            module: ModuleType = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            _plugin_failed(name, str(file), exc)
            continue
        registry.add_plugin(module, name, f"(directory {path})", "local")


def build_registry(plugins_dir: str | Path | None = None) -> Registry:
    """Load every enabled plugin into a fresh registry."""
    registry = Registry()
    allow = _csv_env("FEATSURV_LOAD_PLUGINS")
    block = _csv_env("FEATSURV_DISABLE_PLUGINS") or set()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist else "(unknown)"
        version = ep.dist.version if ep.dist else "?"
        if ep.name in block or dist in block:
            continue
        if allow is not None and dist != BUILTIN_DISTRIBUTION and dist not in allow:
            continue
        try:
            module = ep.load()
        except Exception as exc:
            _plugin_failed(ep.name, dist, exc)
            continue
        registry.add_plugin(module, ep.name, dist, version)
    plugins_dir = plugins_dir or os.environ.get("FEATSURV_PLUGINS_DIR")
    if plugins_dir:
        load_directory(registry, plugins_dir)
    return registry


_REGISTRY: Registry | None = None
_PLUGINS_DIR: str | None = None


def set_plugins_dir(folder: str | None) -> None:
    """Use ``folder`` as a one-off plugin folder for the registry built next."""
    global _PLUGINS_DIR, _REGISTRY
    _PLUGINS_DIR = folder
    _REGISTRY = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(_PLUGINS_DIR)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded plugins; the next `get_registry()` loads them again."""
    global _REGISTRY
    _REGISTRY = None
