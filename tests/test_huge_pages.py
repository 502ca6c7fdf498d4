"""The command asks PyTorch for transparent huge pages on large CPU tensors (THP_MEM_ALLOC_ENABLE)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import sys
from featsurv.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
import torch
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
def anon_huge_kib():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0
print(anon_huge_kib())
"""

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode() -> str | None:
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def huge_kib(env_value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, timeout=300)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(thp_mode() != "madvise" or not Path("/proc/self/smaps_rollup").exists(),
                    reason="needs Linux with transparent huge pages on madvise (the tensor's pages tell)")
def test_the_command_puts_large_tensors_on_huge_pages_unless_told_not_to():
    assert huge_kib(None) >= 32 * 1024  # most of the 64 MiB tensor
    assert huge_kib("0") < 8 * 1024  # the user's THP_MEM_ALLOC_ENABLE=0 is kept: 4 KiB pages


def test_the_command_sets_it_only_as_a_default(monkeypatch):
    from featsurv.cli import main

    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
