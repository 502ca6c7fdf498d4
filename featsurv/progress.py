"""Progress on stderr: short timestamped lines, and a counter for long loops."""
from __future__ import annotations

import sys
import time


class Progress:
    """Writes ``[featsurv  12.3s] message`` lines to stderr (nothing when quiet)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[featsurv {time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)

    def step(self, label: str, i: int, n: int) -> None:
        """Report loop progress at about every 25% (and at the end)."""
        if self.quiet or n <= 0:
            return
        marks = {max(1, round(n * q)) for q in (0.25, 0.5, 0.75, 1.0)}
        if i in marks:
            self(f"{label}: {i}/{n} batches")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
