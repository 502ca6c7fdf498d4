"""User-facing errors: one paragraph, exit code 2, never a traceback."""
from __future__ import annotations

from typing import Any, Iterable

import click


class FeatsurvError(click.ClickException):
    """An error caused by the user's input. The CLI prints it as one paragraph and exits 2."""

    exit_code = 2

    def __init__(self, message: str, *, allowed: Iterable[str] | str | None = None, hint: str | None = None):
        parts = [message.rstrip(".") + "."]
        if allowed is not None:
            if not isinstance(allowed, str):
                allowed = ", ".join(sorted(allowed)) or "(none)"
            parts.append(f"Allowed: {allowed}.")
        if hint:
            parts.append(hint.rstrip(".") + ".")
        super().__init__(" ".join(parts))

    def format_message(self) -> str:  # pragma: no cover - click API
        return self.message


def unknown(kind: str, value: str, available: Iterable[str], hint: str | None = None) -> FeatsurvError:
    """An error for a name that no plugin registered, listing what is available."""
    return FeatsurvError(
        f"Unknown {kind} {value!r}",
        allowed=list(available),
        hint=hint or "Run `featsurv plugins` to see every plugin and what it provides",
    )


def _plugin_of(exc: BaseException) -> tuple[str, str, str] | None:
    """``(plugin, distribution, version)`` of the innermost traceback frame in a plugin's code, if any."""
    import sys

    registry_mod = sys.modules.get("featsurv.plugins")
    registry = getattr(registry_mod, "_REGISTRY", None) if registry_mod else None
    if registry is None:
        return None
    owners: dict[str, Any] = {}  # module name (or package prefix) -> PluginInfo
    for info in registry.plugins.values():
        modules = {getattr(info.module, "__name__", None) or type(info.module).__module__}
        for items in info.registered.values():
            modules.update(type(item).__module__ for item in items.values())
        for mod in filter(None, modules):
            owners[mod] = info
            top = mod.split(".")[0]
            if top not in ("featsurv", "featsurv_plugins", "featsurv_registry") and info.distribution != "featsurv":
                owners.setdefault(top, info)  # the rest of a third-party package
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    for name in reversed(frames):
        info = owners.get(name) or owners.get(name.split(".")[0])
        if info is not None:
            return info.name, info.distribution, info.version
    return None


def _missing_module(exc: BaseException) -> str | None:
    """The module a ``ModuleNotFoundError`` in ``exc`` or its causes names (None: not a missing module)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def describe_crash(exc: BaseException) -> str:
    """One paragraph for an unexpected exception: what failed, which plugin raised it, what to do."""
    import sys
    import traceback

    what = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno}, in {last[0].name})" if last else ""
    debug = "Run again with --debug (or FEATSURV_DEBUG=1) to see the traceback."
    outdir = sys.modules.get("featsurv.outdir")
    written = list(getattr(outdir, "WRITTEN", []))
    done = f"The result at {str(written[-1])!r} was complete before the error." if written else "Nothing was written."
    plugin = _plugin_of(exc)
    missing = _missing_module(exc)
    if missing is not None:
        who = f"plugin {plugin[0]!r} (distribution {plugin[1]!r} {plugin[2]})" if plugin else "featsurv"
        top = missing.split(".")[0]
        return (f"Error: {who} needs the Python module {missing!r}, which is not installed in this environment "
                f"({sys.executable}). Install the package that provides it (for {top!r} that is usually "
                f"`pip install {top.replace('_', '-')}`), or reinstall featsurv with its dependencies. {done} {debug}")
    if plugin is not None:
        name, dist, version = plugin
        return (f"Error: plugin {name!r} (distribution {dist!r} {version}) failed: {what}{where}. This is a "
                f"bug in that plugin, not in your input: report it to its authors, or disable it with "
                f"FEATSURV_DISABLE_PLUGINS={name.split('@')[0]}. {done} {debug}")
    return (f"Error: unexpected {what}{where}. This is a bug in featsurv or a library it uses; please report "
            f"it with the traceback. {done} {debug}")
