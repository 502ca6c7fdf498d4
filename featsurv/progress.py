"""Progress of a run: messages and "configuration i of n" with rate and ETA, to stderr, logging or a callback.

A run is a sequence of passes over the audit tokens: the FP pass, then one per configuration
(compare's bisection steps included). The host says how many configurations it plans
(:meth:`Progress.plan`), when one starts (:meth:`Progress.configuration`) and how far a pass is
(:meth:`Progress.step`); the meter turns that into a fraction, a rate (seconds per pass) and an
ETA, formatted by tqdm. Where it goes:

- ``"stderr"`` (the CLI): ``[featsurv  12.3s] message`` lines; on a terminal a status line kept
  at the bottom, redrawn in place; otherwise a progress line at most once per ``interval`` seconds;
- ``"logging"``: the ``featsurv`` logger (INFO), progress lines throttled the same way;
- a callable: called with a :class:`ProgressEvent` for every message, every configuration start
  and (throttled) progress in between.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

LOGGER = "featsurv"
FORMAT = "{desc}: {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}]"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}, {rate_fmt}]"


@dataclass
class ProgressEvent:
    """One thing to report. ``kind``: ``message``, ``start`` (a pass begins) or ``progress``."""

    message: str
    kind: str = "message"
    configuration: int | None = None  # 0: the FP pass, then 1, 2, ... per configuration
    configurations: int | None = None  # planned configurations (None: not known)
    label: str | None = None
    fraction: float | None = None  # of all planned passes, 0..1
    elapsed: float = 0.0  # seconds since the run started
    eta: float | None = None  # seconds left (None: not known yet)

    def __str__(self) -> str:
        return self.message


class Meter:
    """Where a run stands: pass ``current`` (0 = FP pass) of ``planned + 1``, and how far into it."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.passes_t0: float | None = None  # when the first pass began: rates leave loading out
        self.planned: int | None = None
        self.current = 0
        self.within = 0.0
        self.label = "FP pass"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def pass_time(self) -> float:
        return 0.0 if self.passes_t0 is None else time.perf_counter() - self.passes_t0

    def begin(self) -> None:
        if self.passes_t0 is None:
            self.passes_t0 = time.perf_counter()

    def total(self) -> int | None:
        return None if self.planned is None else self.planned + 1

    def done(self) -> float:
        return self.current + min(self.within, 1.0)

    def eta(self) -> float | None:
        total, done = self.total(), self.done()
        if total is None or done <= 0:
            return None
        return max(self.pass_time() / done * (total - done), 0.0)

    def describe(self) -> str:
        if self.current == 0:
            return "FP pass"
        of = f" of {self.planned}" if self.planned is not None else ""
        return f"configuration {self.current}{of}: {self.label}"

    def line(self, ncols: int | None = None) -> str:
        from tqdm import tqdm

        fmt = BAR_FORMAT if ncols else FORMAT
        if self.total() is None:
            fmt = "{desc} [{elapsed}, {rate_fmt}]"
        return tqdm.format_meter(self.done(), self.total(), self.pass_time(), prefix=self.describe(), unit="pass",
                                 ncols=ncols, bar_format=fmt)

    def event(self, message: str, kind: str) -> ProgressEvent:
        total = self.total()
        return ProgressEvent(message, kind, self.current, self.planned, self.label,
                             None if total is None else min(self.done() / total, 1.0), self.elapsed(), self.eta())


class Progress:
    """Reports a run's progress; see the module docstring. ``quiet``: report nothing."""

    def __init__(self, quiet: bool = False, mode: str | Callable[[ProgressEvent], Any] | logging.Logger = "stderr",
                 interval: float = 1.0, stream: Any = None):
        self.quiet = quiet
        self.mode = mode
        self.interval = interval
        self.stream = stream
        self.meter = Meter()
        self.start = self.meter.t0
        self._last = -float("inf")
        self._status = False  # a status line is drawn on the terminal

    # ------------------------------------------------------------------ what the host reports
    def __call__(self, message: str) -> None:
        if not self.quiet:
            self._emit(self.meter.event(message, "message"))

    def plan(self, configurations: int) -> None:
        """The run will measure this many configurations after the FP pass (again when it changes)."""
        self.meter.planned = max(int(configurations), self.meter.current)

    def configuration(self, label: str) -> None:
        """The next configuration's pass begins."""
        m = self.meter
        m.current, m.within, m.label = m.current + 1, 0.0, label
        if m.planned is not None and m.current > m.planned:
            m.planned = m.current
        if not self.quiet:
            self._emit(m.event(m.line(), "start"))
            self._last = time.perf_counter()

    def step(self, label: str, i: int, n: int) -> None:
        """Batch ``i`` of ``n`` of the current pass is done (``i = 0``: the pass begins)."""
        if n <= 0:
            return
        self.meter.begin()
        self.meter.within = i / n
        now = time.perf_counter()
        if i == 0:  # a pass begins: nothing done yet to report
            return
        if self.quiet or (now - self._last < self.interval and i < n):
            return
        self._last = now
        self._emit(self.meter.event(self.meter.line(self._ncols()), "progress"))

    def close(self) -> None:
        """Clear the terminal status line (call at the end of a run)."""
        if self._status:
            self._stream().write("\r\x1b[K")
            self._status = False

    def elapsed(self) -> float:
        return self.meter.elapsed()

    # ------------------------------------------------------------------ where it goes
    def _stream(self) -> Any:
        return self.stream or sys.stderr

    def _tty(self) -> bool:
        isatty = getattr(self._stream(), "isatty", None)
        return bool(isatty and isatty())

    def _ncols(self) -> int | None:
        if self.mode != "stderr" or not self._tty():
            return None
        import shutil

        return max(40, min(shutil.get_terminal_size((100, 20)).columns - 1, 120))

    def _emit(self, event: ProgressEvent) -> None:
        if callable(self.mode):
            self.mode(event)
        elif self.mode == "logging" or isinstance(self.mode, logging.Logger):
            logger = self.mode if isinstance(self.mode, logging.Logger) else logging.getLogger(LOGGER)
            logger.info(event.message)
        else:
            self._write(event)

    def _write(self, event: ProgressEvent) -> None:
        out = self._stream()
        stamp = f"[featsurv {event.elapsed:7.1f}s] "
        if self._tty() and event.kind == "progress":
            out.write("\r\x1b[K" + event.message)
            self._status = True
        else:
            out.write(("\r\x1b[K" if self._status else "") + stamp + event.message + "\n")
            if self._status:  # redraw the status line under the message
                out.write(self.meter.line(self._ncols()))
        out.flush()


def make_progress(progress: Any) -> Progress:
    """A Progress for the Python API: None -> logging, False -> quiet, "stderr", a callable or a Logger."""
    if isinstance(progress, Progress):
        return progress
    if progress is None:
        return Progress(mode="logging")
    if progress is False:
        return Progress(quiet=True)
    if progress == "stderr" or progress == "logging" or callable(progress) or isinstance(progress, logging.Logger):
        return Progress(mode=progress)
    from .errors import FeatsurvError

    raise FeatsurvError(f"Bad progress {progress!r}",
                        allowed="None (logging), False (quiet), 'stderr', 'logging', a callable or a logging.Logger")
