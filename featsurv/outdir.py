"""Result folders on disk: exclusive use, leftovers of killed runs, and one-step replacement.

- **Exclusive**: a run reserves its ``--out`` with a lock file beside it (``.NAME.lock``, an
  ``flock`` held for as long as the process uses the folder, holding its PID, host and
  command). A second process is refused with the first one's PID; a lock left by a dead process
  holds no ``flock`` and is taken over, with a note.
- **Leftovers**: a killed run can leave ``.NAME.PID-XXXX.partial`` (an unfinished new result)
  and ``.NAME.old-PID`` (the earlier result, moved aside). The next process that reserves the
  folder puts the earlier result back when ``NAME`` is missing and removes the rest, with a note.
- **Replacement**: on Linux the finished temporary folder and the old one are swapped atomically
  (``renameat2(RENAME_EXCHANGE)``); elsewhere (or with ``FEATSURV_NO_EXCHANGE=1``) the old
  folder is moved aside, the new one moved in, and the old one put back if that fails.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import errno
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import FeatsurvError

PAUSE_ENV, PAUSE_FILE_ENV = "FEATSURV_TEST_PAUSE_AT", "FEATSURV_TEST_PAUSE_FILE"
#: folders this process has put in place (for the crash message)
WRITTEN: list[Path] = []


def note(message: str) -> None:
    """A one-line note on stderr (never on stdout, which carries results)."""
    print(f"featsurv: {message}", file=sys.stderr, flush=True)


def pause(point: str) -> None:
    """Test hook: with ``FEATSURV_TEST_PAUSE_AT=point``, touch ``$FEATSURV_TEST_PAUSE_FILE.reached``
    and wait (up to 120 s) until ``$FEATSURV_TEST_PAUSE_FILE`` exists, so a test can signal the
    process at exactly this point. Points: ``reserved``, ``built``, ``replace``."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    release = Path(os.environ[PAUSE_FILE_ENV])
    Path(f"{release}.reached").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


# --------------------------------------------------------------------------- names
def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _partial_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.\d+-[A-Za-z0-9_]+\.partial$")


def _old_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.old-\d+$")


def make_temp_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` (same filesystem, so renames are atomic)."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}-", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a result is not
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- writability
def nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_writable(out: Path, shown: str) -> None:
    """Refuse an ``--out`` that cannot be created: a parent that is a file, or a folder
    (read-only filesystem, no permission) where no entry can be created. Writes nothing."""
    base = nearest_existing(out.parent)
    if not base.is_dir():
        raise FeatsurvError(f"--out {shown!r} cannot be created: {str(base)!r} is a file, not a folder",
                            hint="Pass an --out whose parent folders are folders")
    try:
        os.rmdir(tempfile.mkdtemp(dir=base, prefix=".featsurv-write-test-"))
    except OSError as exc:
        raise FeatsurvError(f"--out {shown!r} cannot be written: creating an entry in {str(base)!r} failed "
                            f"({exc.strerror or exc})",
                            hint="Pass an --out on a writable disk, e.g. --out ~/featsurv-runs/NAME") from None


# --------------------------------------------------------------------------- exclusive use
class Reservation:
    """This process's exclusive use of one result folder (an flock on ``.NAME.lock``)."""

    def __init__(self, out: Path, fd: int, created: list[Path]) -> None:
        self.out, self.fd, self.created = out, fd, created

    def release(self) -> None:
        _HELD.pop(self.out, None)
        if self.fd < 0:
            return
        try:
            lock_path(self.out).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        if not os.path.lexists(self.out):  # nothing was written: remove the parents this run created
            for folder in reversed(self.created):
                try:
                    folder.rmdir()
                except OSError:
                    break


_HELD: dict[Path, Reservation] = {}


def _holder_text(raw: str) -> str:
    try:
        info = json.loads(raw)
        return (f"PID {info.get('pid')} on host {info.get('host')!r}, since {info.get('since')}"
                + (f": {info['command']}" if info.get("command") else ""))
    except (ValueError, AttributeError):
        return raw.strip()[:200] or "unknown process"


def _mkdirs(folder: Path) -> list[Path]:
    missing = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def reserve(out: Path, shown: str | None = None) -> Reservation:
    """Take (or return, when this process holds it) the lock of result folder ``out``.

    Raises FeatsurvError naming the other process when one holds it; recovers leftovers of a
    killed run once the lock is ours.
    """
    import fcntl

    held = _HELD.get(out)
    if held is not None:
        return held
    shown = shown or str(out)
    created = _mkdirs(out.parent)
    lock = lock_path(out)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _holder_text(os.read(fd, 4096).decode("utf-8", "replace"))
            os.close(fd)
            raise FeatsurvError(f"--out {shown!r} is in use by another featsurv process ({holder})",
                                hint=f"Wait for it to finish, or pass another --out; the lock is {str(lock)!r}") from None
        try:  # the file we locked must still be the one at the path (a releaser unlinks it)
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = os.read(fd, 4096).decode("utf-8", "replace")
    if previous.strip():
        note(f"took over the lock {lock.name} left by a process that is no longer running ({_holder_text(previous)})")
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": _dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv[:8])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    reservation = Reservation(out, fd, created)
    _HELD[out] = reservation
    try:
        recover(out)
    except BaseException:
        reservation.release()
        raise
    pause("reserved")
    return reservation


def held(out: Path) -> Reservation | None:
    return _HELD.get(out)


def release(out: Path) -> None:
    """Give up this process's reservation of ``out`` (no-op when it holds none)."""
    reservation = _HELD.get(out)
    if reservation is not None:
        reservation.release()


def release_all() -> None:
    for reservation in list(_HELD.values()):
        reservation.release()


atexit.register(release_all)


# --------------------------------------------------------------------------- leftovers
def leftovers(out: Path) -> tuple[list[Path], list[Path]]:
    """``(old, partial)`` folders an interrupted run left beside ``out``; old ones newest first."""
    if not out.parent.is_dir():
        return [], []
    old_re, partial_re = _old_re(out.name), _partial_re(out.name)
    old, partial = [], []
    for entry in out.parent.iterdir():
        if old_re.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            old.append(entry)
        elif partial_re.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            partial.append(entry)
    old.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return old, partial


def recover(out: Path) -> None:
    """Put back an earlier result that a killed run moved aside; remove the rest. Needs the lock."""
    old, partial = leftovers(out)
    if old and not os.path.lexists(out):
        os.rename(old[0], out)
        note(f"restored the earlier result at {str(out)!r} from {old[0].name}, which an interrupted run had moved aside")
        old = old[1:]
    for folder in old + partial:
        shutil.rmtree(folder, ignore_errors=True)
        note(f"removed {folder.name}, left beside {str(out)!r} by an interrupted run")


# --------------------------------------------------------------------------- replacement
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False when this system cannot."""
    if sys.platform != "linux" or os.environ.get("FEATSURV_NO_EXCHANGE") == "1":
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``; at every moment ``out`` holds the old or the new one
    (or, on systems without an atomic swap, the old one is back in place after any failure or
    interruption, and after a kill the next run puts it back)."""
    if not os.path.lexists(out):
        os.rename(tmp, out)
    elif _exchange(tmp, out):
        pause("replace")
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old result
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        try:
            pause("replace")
            os.rename(tmp, out)
        except BaseException:
            if not os.path.lexists(out):
                os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)
    WRITTEN.append(out)


def describe_write_error(exc: OSError, out: Path, shown: str) -> FeatsurvError:
    """A user-facing error for a failed write (disk full, read-only, quota, file too large)."""
    where = f" ({Path(exc.filename).name})" if getattr(exc, "filename", None) else ""
    why = exc.strerror or str(exc) or type(exc).__name__
    return FeatsurvError(
        f"Writing the result for --out {shown!r} failed: {why}{where}. Nothing was changed at "
        f"{str(out)!r}" + (" (the earlier result there is untouched)" if os.path.lexists(out) else ""),
        hint="Free some space or pass --out on another disk, then run again")


def describe(obj: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(type(obj), type(obj).__name__)
