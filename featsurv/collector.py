"""Python's cyclic garbage collector in the ``featsurv`` command (a one-shot process).

Importing torch, transformers and sae-lens leaves about 600k objects that live until the
process exits. With Python's default thresholds (the young generation collected every 700
allocations) the collector scanned all of them eight times during start-up and once more at
exit: about 2 s of a 5-configuration audit, for no memory back. The command instead collects
the young generation every 100k allocations (older generations proportionally rarely, as
Python's own ratio rule still applies) and freezes whatever is alive before the interpreter's
final collection. :func:`featsurv.cli.main` does this only when run as the command (no
``argv``): the Python API and in-process callers keep the collector as they set it.
"""
from __future__ import annotations

import gc

#: (generation 0, 1, 2) thresholds of the command; Python's defaults are (700, 10, 10)
THRESHOLDS = (100_000, 20, 10)


def tune_for_command() -> None:
    """Collect less often: the command's long-lived objects are modules, not garbage."""
    gc.set_threshold(*THRESHOLDS)


def freeze_before_exit() -> None:
    """Move every tracked object to the permanent generation, which the interpreter's final
    collection skips (the process ends; nothing would be reclaimed that exit does not free)."""
    gc.freeze()
