"""Result folders: manifest, exclusive use, one-step replacement, recovery, write failures.

The concurrency, interruption and full-disk cases are real: two processes, a signal sent at a
point where the writer waits (FEATSURV_TEST_PAUSE_AT), a small tmpfs or an RLIMIT_FSIZE limit.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import featsurv
from featsurv.errors import FeatsurvError
from featsurv.results import RunResult, check_out_dir, load_run, write_folder, write_run

CHILD = r"""
import signal
import sys
# Ctrl-C raises KeyboardInterrupt even when the test process was started with SIGINT ignored
# (an ignored signal is inherited across exec, and Python then installs no handler of its own)
signal.signal(signal.SIGINT, signal.default_int_handler)
import pandas as pd
from featsurv.errors import FeatsurvError
from featsurv.results import RunResult, write_run

out, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = RunResult({"command": "child"}, {"baseline": {"perplexity": 10.0, "n_tokens": n},
                   "results": [{"label": label, "survived": 0.95, "perplexity_change": 0.0}]},
                   pd.DataFrame({"config": [label] * n, "feature": range(n), "r": [0.99] * n}))
try:
    write_run(out, result, render=lambda tmp: (tmp / "report.html").write_text("<p>" + label + "." * 4 * n))
except FeatsurvError as exc:
    exc.show()
    sys.exit(2)
"""


def make_result(label: str = "a", n: int = 10) -> RunResult:
    return RunResult({"command": "test"}, {"baseline": {"perplexity": 10.0, "n_tokens": n},
                     "results": [{"label": label, "survived": 0.95, "perplexity_change": 0.0}]},
                     pd.DataFrame({"config": [label] * n, "feature": range(n), "r": [0.99] * n}))


def label_at(out: Path) -> str:
    return load_run(out).summary["results"][0]["label"]


def hidden(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}*"))


def spawn(out: Path, label: str, *, n: int = 10, pause: str | None = None, flag: Path | None = None,
          env: dict[str, str] | None = None, preexec=None) -> subprocess.Popen:
    full = {**os.environ, **(env or {})}
    if pause:
        full.update(FEATSURV_TEST_PAUSE_AT=pause, FEATSURV_TEST_PAUSE_FILE=str(flag))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), label, str(n)], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)


def wait_reached(flag: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not Path(f"{flag}.reached").exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited {proc.returncode} before the pause: {proc.communicate()}")
        assert time.monotonic() < deadline, "child never reached the pause point"
        time.sleep(0.02)


# --------------------------------------------------------------------------- manifest
def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    result = make_result()
    result.files = {"extra.csv": b"a,b\n1,2\n", "notes/info.txt": "text", "made.bin": lambda p: p.write_bytes(b"\0" * 7)}
    out = write_run(tmp_path / "run", result, render=lambda t: ((t / "report.html").write_text("<html>"),
                                                                (t / "fig_x.png").write_bytes(b"png")))
    manifest = json.loads((out / "manifest.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    roles = {n: e["role"] for n, e in manifest["files"].items()}
    assert roles == {"run.json": "data", "summary.json": "data", "features.parquet": "data", "extra.csv": "extra",
                     "notes/info.txt": "extra", "made.bin": "extra", "report.html": "report", "fig_x.png": "report"}
    assert manifest["schema_version"] == 1 and manifest["featsurv_version"] == featsurv.__version__
    assert manifest["kind"] == "run"
    assert hidden(out) == []  # no lock, no temporary folder left
    with pytest.raises(ValueError, match="bad result file name"):
        write_run(tmp_path / "bad", RunResult({}, {}, None, files={"../escape": b""}))
    assert not (tmp_path / "bad").exists() and hidden(tmp_path / "bad") == []


def test_large_files_are_written_while_the_report_renders(tmp_path):
    """A callable result file (a table) runs in a worker thread beside the report: each sees the
    other working (an Event either way; run one after the other, both would time out)."""
    import threading

    table_started, report_started = threading.Event(), threading.Event()
    seen = {}

    def table(path):
        table_started.set()
        seen["report while table"] = report_started.wait(20)
        path.write_bytes(b"table")

    def render(tmp):
        report_started.set()
        seen["table while report"] = table_started.wait(20)
        (tmp / "report.html").write_text("<html>")

    result = make_result()
    result.files = {"contexts.parquet": table}
    out = write_run(tmp_path / "run", result, render=render)
    assert seen == {"report while table": True, "table while report": True}
    assert (out / "contexts.parquet").read_bytes() == b"table" and (out / "report.html").is_file()
    assert set(json.loads((out / "manifest.json").read_text())["files"]) >= {"contexts.parquet", "report.html"}


@pytest.mark.parametrize("failing", ["report", "table"])
def test_a_failure_beside_the_other_writer_leaves_nothing(tmp_path, failing):
    """Whichever of the two fails, the error is raised after the other has finished, and the
    earlier result is untouched (no half-written folder)."""
    import threading

    write_run(tmp_path / "run", make_result("old"))
    finished = threading.Event()

    def table(path):
        time.sleep(0.3)  # still writing when the report fails
        if failing == "table":
            raise RuntimeError("table broke")
        path.write_bytes(b"table")
        finished.set()

    def render(tmp):
        if failing == "report":
            raise RuntimeError("report broke")
        (tmp / "report.html").write_text("<html>")

    result = make_result("new")
    result.files = {"contexts.parquet": table}
    with pytest.raises(RuntimeError, match=f"{failing} broke"):
        write_run(tmp_path / "run", result, render=render)
    if failing == "report":
        assert finished.is_set()  # the worker was waited for before the error left
    assert label_at(tmp_path / "run") == "old" and hidden(tmp_path / "run") == []


def test_save_rewrites_summary_and_manifest_in_one_step_keeping_report_and_extras(tmp_path):
    result = make_result()
    result.files = {"extra.csv": b"1\n"}
    out = write_run(tmp_path / "run", result, render=lambda t: (t / "report.html").write_text("old report"))
    loaded = load_run(out)
    loaded.summary["predictors"] = {"x": 1}
    loaded.save()  # no render: the report and extra files are kept
    again = load_run(out)
    assert again.summary["predictors"] == {"x": 1}
    assert (out / "report.html").read_text() == "old report" and (out / "extra.csv").read_bytes() == b"1\n"
    again.save(render=lambda t: (t / "report.html").write_text("new report"))
    assert load_run(out).manifest["files"]["report.html"]["size"] == len("new report")
    assert (out / "extra.csv").read_bytes() == b"1\n" and hidden(out) == []


def test_report_command_in_place_and_into_another_folder(tmp_path, capsys):
    from featsurv.cli import main

    def render(tmp):
        (tmp / "report.html").write_text("<html>")

    out = write_run(tmp_path / "run", make_result("rtn int8"), render=render)
    with pytest.raises(SystemExit) as done:
        main(["report", str(out)])
    assert done.value.code == 0
    files = load_run(out).manifest["files"]
    assert {"report.html", "fig_bands.png"} <= set(files) and files["report.html"]["role"] == "report"
    with pytest.raises(SystemExit) as done:
        main(["gate", str(out)])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["report", str(out), "--out", str(tmp_path / "rep")])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / "rep" / "report.html"))
    assert json.loads((tmp_path / "rep" / "manifest.json").read_text())["kind"] == "report"
    with pytest.raises(FeatsurvError, match="holds a featsurv 'report' folder, not a run"):
        load_run(tmp_path / "rep")
    write_folder(tmp_path / "rep", render)  # a report folder is featsurv's own: replaced
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["manifest.json", "report.html"]


# --------------------------------------------------------------------------- replacing only featsurv's folders
def test_only_folders_of_featsurv_files_are_replaced(tmp_path):
    out = write_run(tmp_path / "run", make_result("first"))
    (out / "analysis.ipynb").write_text("{}")
    with pytest.raises(FeatsurvError, match=r"other files in it \(analysis.ipynb\)"):
        write_run(out, make_result("second"))
    assert (out / "analysis.ipynb").read_text() == "{}" and label_at(out) == "first"
    (out / "analysis.ipynb").unlink()
    (out / "mine").mkdir()
    with pytest.raises(FeatsurvError, match=r"mine/"):
        write_run(out, make_result("second"))
    (out / "mine").rmdir()
    write_run(out, make_result("second"))
    assert label_at(out) == "second" and hidden(out) == []
    old_style = tmp_path / "old"  # written by featsurv 0.1: no manifest, only its own file names
    old_style.mkdir()
    for name in ("run.json", "summary.json", "features.parquet", "report.html", "fig_bands.png"):
        (old_style / name).write_text("x")
    write_run(old_style, make_result("new"))
    assert label_at(old_style) == "new" and not (old_style / "fig_bands.png").exists()


# --------------------------------------------------------------------------- exclusive use
def test_two_processes_into_one_out_the_second_is_refused_naming_the_first(tmp_path):
    out, flag = tmp_path / "run", tmp_path / "go"
    first = spawn(out, "first", pause="reserved", flag=flag)
    try:
        wait_reached(flag, first)
        lock = json.loads((tmp_path / ".run.lock").read_text())
        assert lock["pid"] == first.pid and lock["host"] == socket.gethostname()
        second = spawn(out, "second")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"PID {first.pid}" in err and "in use by another featsurv process" in err and "Traceback" not in err
    finally:
        flag.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert label_at(out) == "first" and hidden(out) == []


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    write_run(tmp_path / "run", make_result())
    assert f"PID {dead.pid}" in capsys.readouterr().err and hidden(tmp_path / "run") == []


def test_reservation_at_start_holds_until_written(tmp_path):
    out = check_out_dir(tmp_path / "run")  # what an audit does before any work
    assert (tmp_path / ".run.lock").is_file()
    other = spawn(out, "other")
    _, err = other.communicate(timeout=120)
    assert other.returncode == 2 and f"PID {os.getpid()}" in err
    write_run(out, make_result())
    assert hidden(out) == []


# --------------------------------------------------------------------------- interruption
@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-swap", "two-renames"])
def test_kill_during_replace_leaves_old_or_new_and_the_next_run_recovers(tmp_path, exchange, capsys):
    out, flag = tmp_path / "run", tmp_path / "go"
    write_run(out, make_result("old"))
    env = {} if exchange else {"FEATSURV_NO_EXCHANGE": "1"}
    child = spawn(out, "new", pause="replace", flag=flag, env=env)
    wait_reached(flag, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    if exchange:
        assert label_at(out) == "new"  # swapped in one step: the new result is complete at --out
    else:
        assert not out.exists() and any(n.startswith(".run.old-") for n in hidden(out))
        assert label_at(out) == "old"  # the loader puts the earlier result back
        assert "restored the earlier result" in capsys.readouterr().err
    write_run(out, make_result("next"))  # the next run removes whatever is left
    assert label_at(out) == "next" and hidden(out) == []


def test_sigint_between_the_two_renames_puts_the_old_result_back(tmp_path):
    out, flag = tmp_path / "run", tmp_path / "go"
    write_run(out, make_result("old"))
    child = spawn(out, "new", pause="replace", flag=flag, env={"FEATSURV_NO_EXCHANGE": "1"})
    wait_reached(flag, child)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    assert label_at(out) == "old" and hidden(out) == []


def test_kill_after_building_keeps_the_old_result_and_the_leftover_is_removed(tmp_path, capsys):
    out, flag = tmp_path / "run", tmp_path / "go"
    write_run(out, make_result("old"))
    child = spawn(out, "new", pause="built", flag=flag)
    wait_reached(flag, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert label_at(out) == "old" and any(n.endswith(".partial") for n in hidden(out))
    write_run(out, make_result("next"))
    assert "left beside" in capsys.readouterr().err and hidden(out) == []


# --------------------------------------------------------------------------- write failures
@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs (needs root, or a user namespace); skipped where mount is not permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or res.returncode}): full-disk case "
                    "runs through RLIMIT_FSIZE only")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int) -> None:
    free = shutil.disk_usage(mnt).free
    (mnt / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_full_disk_while_writing_the_report_changes_nothing(small_fs, tmp_path):
    out = write_run(small_fs / "run", make_result("old"), render=lambda t: (t / "report.html").write_text("old"))
    fill(small_fs, 48 * 1024)

    def big_report(tmp):
        (tmp / "fig_bands.png").write_bytes(os.urandom(32 * 1024))
        (tmp / "report.html").write_bytes(os.urandom(64 * 1024))

    with pytest.raises(FeatsurvError, match="No space left on device") as info:
        write_run(out, make_result("new"), render=big_report)
    assert "the earlier result there is untouched" in str(info.value)
    assert label_at(out) == "old" and (out / "report.html").read_text() == "old" and hidden(out) == []
    with pytest.raises(FeatsurvError, match="No space left on device"):
        write_run(small_fs / "fresh", make_result("new"), render=big_report)
    assert not (small_fs / "fresh").exists() and hidden(small_fs / "fresh") == []


def test_full_disk_through_the_report_command(small_fs, tmp_path, capsys):
    from featsurv.cli import main

    run = write_run(tmp_path / "run", make_result("rtn int8", n=200))
    fill(small_fs, 24 * 1024)
    with pytest.raises(SystemExit) as done:
        main(["report", str(run), "--out", str(small_fs / "rep")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not (small_fs / "rep").exists() and hidden(small_fs / "rep") == []


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_a_write_that_fails_in_a_real_process_leaves_the_earlier_result(tmp_path):
    out = write_run(tmp_path / "run", make_result("old"))
    child = spawn(out, "new", n=20_000, preexec=_limit_file_size)  # its report.html has 80 kB
    _, err = child.communicate(timeout=120)
    assert child.returncode == 2, err
    assert "File too large" in err and "Traceback" not in err
    assert label_at(out) == "old" and hidden(out) == []


def test_unwritable_out_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
        if res.returncode != 0:
            pytest.skip("root without mount: cannot make a read-only folder")
        why = "Read-only file system"
    else:
        ro.chmod(0o555)
        why = "Permission denied"
    try:
        with pytest.raises(FeatsurvError, match=why) as info:
            check_out_dir(ro / "deeper" / "run")
        assert "cannot be written" in str(info.value) and "deeper/run" in str(info.value)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatsurvError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "file" / "run")
