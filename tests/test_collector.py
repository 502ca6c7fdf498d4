"""The command tunes Python's garbage collector for a one-shot process; in-process callers keep theirs."""
from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from featsurv.collector import THRESHOLDS

CHILD = r"""
import gc, json, sys
sys.argv = ["featsurv", "--version"]
from featsurv.cli import main
before = gc.get_threshold()
try:
    main()
except SystemExit:
    pass
print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))
"""


def test_the_command_collects_rarely_and_freezes_before_exit():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=300)
    before, after, frozen = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(before) == (700, 10, 10)  # Python's defaults
    assert tuple(after) == THRESHOLDS
    assert frozen > 1000  # the imported modules' objects, skipped by the final collection


def test_main_with_arguments_leaves_the_collector_alone():
    from featsurv.cli import main

    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(SystemExit):
        main(["--version"])
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == frozen
