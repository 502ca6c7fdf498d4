"""Handing freed heap memory back to the operating system between the phases of an audit.

An audit's long-lived tensors (the FP cache, per-context moments) are allocated between the
batch loop's temporaries; glibc keeps the pages those temporaries freed mapped until asked
(``malloc_trim``), so resident memory would otherwise grow with the number of batches, not
with what is still alive. Elsewhere (no glibc: macOS, Windows, musl) this does nothing.
"""
from __future__ import annotations

from typing import Any, Callable

_TRIM: Callable[[int], Any] | None = None
_LOOKED = False


def _malloc_trim() -> Callable[[int], Any] | None:
    global _TRIM, _LOOKED
    if not _LOOKED:
        _LOOKED = True
        try:
            import ctypes

            _TRIM = ctypes.CDLL(None).malloc_trim  # the process's own C library
        except (OSError, AttributeError):
            _TRIM = None
    return _TRIM


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``); False where that is not available."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
