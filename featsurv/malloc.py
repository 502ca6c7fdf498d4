"""glibc malloc settings for the ``featsurv`` command: large tensors reuse freed memory.

By default glibc serves every allocation above a threshold (at most 32 MiB) with a fresh ``mmap``
and returns it with ``munmap`` when freed, so each batch's ``[tokens, d_sae]`` tensors fault in
new zeroed pages: on the issue-16 workload that was about half the audit's system time. The
command turns that off (``M_MMAP_MAX = 0``: large blocks come from the heap and are reused) and
keeps up to 2 GiB of freed memory before trimming. Peak memory is about the same (a few
percent higher); ``FEATSURV_MALLOC=default`` keeps glibc's settings. Nothing happens on other C
libraries or platforms, or when featsurv is imported as a library (only the command calls
:func:`tune`).
"""
from __future__ import annotations

import os
import sys

ENV = "FEATSURV_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)


def tune() -> bool:
    """Apply the settings (once per process); True when glibc took them."""
    if os.environ.get(ENV, "").strip().lower() in ("default", "off", "0", "no", "false"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False  # not glibc (musl has no mallopt worth calling)
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
