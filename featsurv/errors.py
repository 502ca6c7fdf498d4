"""User-facing errors: one paragraph, exit code 2, never a traceback."""
from __future__ import annotations

from typing import Iterable

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
