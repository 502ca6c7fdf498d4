"""Where the embedded default artefacts live inside the installed package."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFIX = "featsurv:"


def data_root() -> Path:
    return Path(str(resources.files("featsurv") / "data"))


def resolve(value: str) -> str:
    """Turn ``featsurv:REL/PATH`` into the absolute path of packaged data; other values unchanged."""
    if value.startswith(PREFIX):
        return str(data_root() / value[len(PREFIX):])
    return value
