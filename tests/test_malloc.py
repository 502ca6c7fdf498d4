"""The command's glibc malloc settings: large blocks come from the reused heap, not fresh mmaps."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, sys
from featsurv.malloc import tune

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune()
before = libc.mallinfo2().hblks
block = libc.malloc(96 * 2**20)  # a [1024, 24576] float32 batch
during = libc.mallinfo2().hblks
libc.free(block)
again = libc.malloc(96 * 2**20)
libc.free(again)
print(tuned, during - before)
"""


def glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    return sys.platform.startswith("linux") and hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


pytestmark = pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")


def run(env_value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "FEATSURV_MALLOC"}
    if env_value is not None:
        env["FEATSURV_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    tuned, mmapped = out.stdout.split()
    return tuned, int(mmapped)


def test_the_command_serves_large_blocks_from_the_heap():
    assert run(None) == ("True", 0)


def test_featsurv_malloc_default_keeps_glibcs_settings():
    assert run("default") == ("False", 1)  # glibc's own: a fresh mmap for the 96 MiB block


def test_the_command_calls_it(monkeypatch):
    from featsurv import malloc
    from featsurv.cli import main

    calls = []
    monkeypatch.setattr(malloc, "tune", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and calls == [1]
