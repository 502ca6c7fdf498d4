"""A catalogue of bad inputs and faults, through the real `featsurv` entry point (main()).

Every case asserts the exit code, a message naming the bad value (the file, the path, the
plugin), no traceback, and that nothing was written: the test folder's files are the same
before and after. Loader cases share one tiny finished run, copied and damaged per case.
The concurrency, interruption and full-disk cases with real processes are in
test_results_dir.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from featsurv import manifest as M
from featsurv.audit import make_options
from featsurv.cli import main
from featsurv.runs import run_audit

LABELS = ("rtn int8", "rtn int4")


# --------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_models, tiny_sae, tiny_corpus) -> Path:
    """One tiny audit (two configurations), written once for every loader case."""
    opts = make_options(model=str(tiny_models["gpt_neox"]), saes=[str(tiny_sae(tiny_models["gpt_neox"]))],
                        dataset=str(tiny_corpus), n_tokens=512, context=32, batch_size=8, bootstrap=0)
    out = tmp_path_factory.mktemp("finished") / "run"
    run_audit(opts, [("rtn", {"bits": 8, "symmetric": True, "granularity": "channel"}),
                     ("rtn", {"bits": 4, "symmetric": True, "granularity": "channel"})], out_dir=out)
    return out


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """Copies of the tiny GPT-NeoX with damaged or unsafe weights files."""
    import pickle

    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bad-models")
    good = tiny_models["gpt_neox"]
    weights = (good / "model.safetensors").read_bytes()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    def copy(name: str, drop_safetensors: bool = False) -> Path:
        d = root / name
        shutil.copytree(good, d)
        if drop_safetensors:
            (d / "model.safetensors").unlink()
        return d

    models = {"truncated": copy("truncated"), "garbage": copy("garbage"), "evil": copy("evil", True),
              "garbage_bin": copy("garbage_bin", True), "pickle": copy("pickle", True)}
    (models["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (models["garbage"] / "model.safetensors").write_bytes(os.urandom(4096))
    torch.save({"x": Evil()}, models["evil"] / "pytorch_model.bin")
    (models["garbage_bin"] / "pytorch_model.bin").write_bytes(pickle.dumps([1, 2])[:-3] + os.urandom(64))
    torch.save(load_file(good / "model.safetensors"), models["pickle"] / "pytorch_model.bin")
    models["root"] = root
    return models


@pytest.fixture
def featsurv_main(capsys, monkeypatch):
    """Run ``main(argv)`` in this process: ``(exit code, stdout + stderr)``."""
    from featsurv import plugins

    monkeypatch.delenv("FEATSURV_DEBUG", raising=False)

    def run(argv: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            plugins.set_plugins_dir(None)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (bytecode caches aside) with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def reseal(folder: Path) -> None:
    """Rewrite a folder's manifest over its current files (a consistent manifest over bad content)."""
    roles = {n: e["role"] for n, e in json.loads((folder / "manifest.json").read_text())["files"].items()}
    M.write(folder, M.build(folder, "run", roles))


# --------------------------------------------------------------------------- the cases
@dataclass
class Ctx:
    tmp: Path
    base: list[str]
    finished: Path
    models: dict[str, Path]
    cleanup: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def run(self) -> Path:
        """A private copy of the finished run (made on first use)."""
        run = self.tmp / "run"
        if not run.exists():
            shutil.copytree(self.finished, run)
        return run

    def audit(self, out: Path | None = None) -> list[str]:
        return ["audit", "rtn", "-p", "bits=8", *self.base, "--out", str(out or self.tmp / "out")]

    def with_option(self, flag: str, value: str) -> list[str]:
        args = list(self.base)
        args[args.index(flag) + 1] = value
        return ["audit", "rtn", "-p", "bits=8", *args, "--out", str(self.tmp / "out")]

    def plugin_dir(self, source: str, name: str = "boom") -> Path:
        folder = self.tmp / "plugins"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        return folder


@dataclass
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]  # prepares files, returns argv
    code: int
    needles: Callable[[Ctx], list[str]]


CASES: list[Case] = []


def case(id: str, code: int, needles: Callable[[Ctx], list[str]] | list[str]):
    def deco(setup: Callable[[Ctx], list[str]]) -> Callable[[Ctx], list[str]]:
        CASES.append(Case(id, setup, code, needles if callable(needles) else (lambda c, n=needles: n)))
        return setup
    return deco


# ---- --out of an audit
@case("out-is-a-file", 2, ["is a file", "out'"])
def _(c):
    (c.tmp / "out").write_text("x")
    return c.audit()


@case("out-parent-is-a-file", 2, lambda c: ["is a file, not a folder", str(c.tmp / "file")])
def _(c):
    (c.tmp / "file").write_text("x")
    return c.audit(out=c.tmp / "file" / "sub" / "out")


@case("out-read-only", 2, lambda c: ["cannot be written", str(c.tmp / "ro")])
def _(c):
    ro = c.tmp / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode != 0:
            pytest.skip("root without mount: cannot make a read-only folder")
        c.cleanup.append(lambda: subprocess.run(["umount", "-l", str(ro)]))
    else:
        ro.chmod(0o555)
        c.cleanup.append(lambda: ro.chmod(0o755))
    return c.audit(out=ro / "out")


@case("out-holds-a-user-file", 2, ["other files", "notes.txt"])
def _(c):
    (c.tmp / "out").mkdir()
    (c.tmp / "out" / "notes.txt").write_text("keep me")
    return c.audit()


@case("out-holds-a-user-folder", 2, ["other files", "sub/a.txt"])
def _(c):
    (c.tmp / "out" / "sub").mkdir(parents=True)
    (c.tmp / "out" / "sub" / "a.txt").write_text("keep me")
    return c.audit()


@case("out-holds-a-symlink", 2, ["other files", "link"])
def _(c):
    (c.tmp / "out").mkdir()
    (c.tmp / "out" / "link").symlink_to(c.tmp)
    return c.audit()


@case("out-is-a-result-with-a-notebook", 2, ["other files", "analysis.ipynb"])
def _(c):
    shutil.copytree(c.finished, c.tmp / "out")
    (c.tmp / "out" / "analysis.ipynb").write_text("{}")
    return c.audit()


@case("out-in-use-by-another-process", 2, lambda c: ["in use by another featsurv process", f"PID {c.holder.pid}"])
def _(c):
    lock = c.tmp / ".out.lock"
    code = ("import fcntl, json, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'here', 'since': 'now'}).encode())\n"
            "print('ready', flush=True)\ntime.sleep(120)\n")
    c.holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    c.cleanup.append(lambda: (c.holder.kill(), c.holder.wait()))
    assert c.holder.stdout.readline().strip() == "ready"
    return c.audit()


@case("out-is-the-filesystem-root", 2, ["'/'", "filesystem root"])
def _(c):
    return c.audit(out=Path("/"))


# ---- --out of `report`
@case("report-out-is-a-file", 2, ["is a file, not a folder", "existing.html"])
def _(c):
    (c.tmp / "existing.html").write_text("<p>mine")
    return ["report", str(c.run), "--out", str(c.tmp / "existing.html")]


@case("report-out-holds-a-user-file", 2, ["other files", "notes.txt"])
def _(c):
    (c.tmp / "rep").mkdir()
    (c.tmp / "rep" / "notes.txt").write_text("keep me")
    return ["report", str(c.run), "--out", str(c.tmp / "rep")]


@case("report-out-parent-is-a-file", 2, lambda c: ["is a file, not a folder", str(c.tmp / "file")])
def _(c):
    (c.tmp / "file").write_text("x")
    return ["report", str(c.run), "--out", str(c.tmp / "file" / "rep")]


# ---- damaged or incomplete result folders, for each command that reads one
def _set(name: str, data: bytes | str, sealed: bool = False) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        if sealed:
            reseal(run)
    return apply


def _truncate(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        raw = (run / name).read_bytes()
        (run / name).write_bytes(raw[: len(raw) // 2])
    return apply


def _same_size_garbage(name: str) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).write_bytes(os.urandom((run / name).stat().st_size))
    return apply


def _future_schema(run: Path) -> None:
    data = json.loads((run / "manifest.json").read_text())
    data["schema_version"] = 99
    (run / "manifest.json").write_text(json.dumps(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "no-manifest": (lambda run: (run / "manifest.json").unlink(), ["manifest.json", "missing"]),
    "manifest-not-json": (_set("manifest.json", "{not json"), ["manifest.json", "not JSON"]),
    "manifest-a-list": (_set("manifest.json", "[]"), ["manifest.json", "not a featsurv manifest"]),
    "manifest-from-the-future": (_future_schema, ["manifest.json", "schema_version 99"]),
    "parquet-truncated": (_truncate("features.parquet"), ["features.parquet", "bytes", "truncated"]),
    "parquet-garbage": (_same_size_garbage("features.parquet"), ["features.parquet", "checksum"]),
    "summary-edited": (_truncate("summary.json"), ["summary.json", "truncated"]),
    "run-json-missing": (lambda run: (run / "run.json").unlink(), ["run.json", "missing"]),
    "report-changed": (_same_size_garbage("report.html"), ["report.html", "checksum"]),
    "summary-a-list": (_set("summary.json", "[1, 2]", True), ["summary.json", "a list"]),
    "summary-not-json": (_set("summary.json", "{oops", True), ["summary.json", "Cannot read"]),
    "results-not-objects": (_set("summary.json", '{"results": [1, "x"]}', True), ["results[0]", "not an object"]),
    "results-not-a-list": (_set("summary.json", '{"results": "abc"}', True), ["'results'", "a string"]),
    "baseline-not-an-object": (_set("summary.json", '{"baseline": [1], "results": []}', True), ["'baseline'", "a list"]),
    "run-json-a-list": (_set("run.json", "[]", True), ["run.json", "a list"]),
    "parquet-garbage-sealed": (_set("features.parquet", b"PAR1" + os.urandom(300) + b"PAR1", True),
                               ["features.parquet", "Cannot read"]),
    "parquet-not-parquet-sealed": (_set("features.parquet", b"not parquet at all", True),
                                   ["features.parquet", "not a Parquet file"]),
    "parquet-empty-sealed": (_set("features.parquet", b"", True), ["features.parquet", "not a Parquet file"]),
}
READERS: dict[str, Callable[[Path], list[str]]] = {
    "gate": lambda run: ["gate", str(run)],
    "report": lambda run: ["report", str(run)],
    "predict": lambda run: ["predict", str(run)],
    "overlap": lambda run: ["overlap", str(run), *LABELS],
}
MATRIX = {
    "gate": list(DAMAGE),
    "report": ["no-manifest", "parquet-truncated", "summary-a-list", "summary-not-json", "parquet-garbage-sealed"],
    "predict": ["no-manifest", "parquet-garbage", "summary-a-list", "results-not-objects", "parquet-garbage-sealed"],
    "overlap": ["no-manifest", "parquet-truncated", "parquet-garbage-sealed"],
}


def _reader_case(command: str, damage: str) -> None:
    apply, needles = DAMAGE[damage]

    def setup(c: Ctx) -> list[str]:
        apply(c.run)
        return READERS[command](c.run)

    CASES.append(Case(f"{command}-{damage}", setup, 2, lambda c, n=needles: n))


for _command, _damages in MATRIX.items():
    for _damage in _damages:
        _reader_case(_command, _damage)


@case("gate-on-a-file", 2, ["not a featsurv result directory", "it is a file"])
def _(c):
    (c.tmp / "summary.json").write_text("{}")
    return ["gate", str(c.tmp / "summary.json")]


@case("gate-on-nothing", 2, ["nowhere", "does not exist"])
def _(c):
    return ["gate", str(c.tmp / "nowhere")]


@case("gate-on-a-report-folder", 2, ["'report' folder, not a run"])
def _(c):
    from featsurv.results import write_folder

    write_folder(c.tmp / "rep", lambda t: (t / "report.html").write_text("<p>"))
    return ["gate", str(c.tmp / "rep")]


# ---- damaged or unsafe model weights
@case("model-safetensors-truncated", 2, ["model.safetensors", "damaged", "SafetensorError"])
def _(c):
    return c.with_option("--model", str(c.models["truncated"]))


@case("model-safetensors-garbage", 2, ["model.safetensors", "damaged", "garbage"])
def _(c):
    return c.with_option("--model", str(c.models["garbage"]))


@case("model-pickle-with-code", 2, ["pytorch_model.bin", "weights_only=True", "evil"])
def _(c):
    return c.with_option("--model", str(c.models["evil"]))


@case("model-pickle-garbage", 2, ["pytorch_model.bin", "damaged", "garbage_bin"])
def _(c):
    return c.with_option("--model", str(c.models["garbage_bin"]))


# ---- datasets
def _dataset(name: str, data: bytes) -> Callable[[Ctx], list[str]]:
    def setup(c: Ctx) -> list[str]:
        (c.tmp / name).write_bytes(data)
        return c.with_option("--dataset", str(c.tmp / name))
    return setup


for _id, _name, _data, _needles in [
    ("jsonl-not-utf8", "d.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n', ["d.jsonl", "not UTF-8", "line 2"]),
    ("jsonl-text-a-number", "d.jsonl", b'{"text": 42}\n', ["d.jsonl", "Line 1", "'text'", "42", "not a string"]),
    ("jsonl-text-null", "d.jsonl", b'{"text": "ok"}\n{"text": null}\n', ["Line 2", "null", "not a string"]),
    ("jsonl-line-not-an-object", "d.jsonl", b'["text"]\n', ["Line 1", "d.jsonl", "'text' field"]),
    ("jsonl-bad-json", "d.jsonl", b'{"text": "a"}\n\n{"text": \n', ["Line 3", "not valid JSON"]),
    ("txt-not-utf8", "d.txt", b"caf\xe9 " * 100, ["d.txt", "not UTF-8"]),
]:
    CASES.append(Case(f"dataset-{_id}", _dataset(_name, _data), 2, lambda c, n=_needles: n))


# ---- plugins
RAISING_COMPRESSOR = '''
from featsurv import Compressor, hookimpl


class Boom(Compressor):
    name = "boom"
    description = "raises while compressing"

    def compress(self, targets, params):
        raise RuntimeError("kaboom in compress")


@hookimpl
def register_compressors(register):
    register(Boom())
'''
RAISING_DATASET = '''
from featsurv import DatasetSource, hookimpl


class Broken(DatasetSource):
    name = "broken"
    description = "raises while reading"

    def can_load(self, spec):
        return spec.startswith("broken:")

    def documents(self, spec):
        raise RuntimeError("kaboom in documents")


@hookimpl
def register_datasets(register):
    register(Broken())
'''
DUPLICATE_RTN = RAISING_COMPRESSOR.replace('name = "boom"', 'name = "rtn"')


@case("plugin-compressor-raises", 1, ["plugin 'boom'", "(directory", "RuntimeError: kaboom in compress",
                                      "FEATSURV_DISABLE_PLUGINS=boom", "--debug"])
def _(c):
    return ["--plugins-dir", str(c.plugin_dir(RAISING_COMPRESSOR)), "audit", "boom", *c.base,
            "--out", str(c.tmp / "out")]


@case("plugin-dataset-raises", 1, ["plugin 'brokends'", "RuntimeError: kaboom in documents", "--debug"])
def _(c):
    folder = c.plugin_dir(RAISING_DATASET, "brokends")
    return ["--plugins-dir", str(folder), *c.with_option("--dataset", "broken:x")]


@case("plugin-duplicate-name-used", 2, ["Two plugins register a compressor named 'rtn'", "'dupe'", "'rtn'"])
def _(c):
    return ["--plugins-dir", str(c.plugin_dir(DUPLICATE_RTN, "dupe")), *c.audit()]


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case, tmp_path, cli_base_args, finished_run, bad_models, featsurv_main):
    ctx = Ctx(tmp_path, list(cli_base_args), finished_run, bad_models)
    try:
        argv = case.setup(ctx)
        before = snapshot(tmp_path)
        code, output = featsurv_main(argv)
        assert code == case.code, output
        assert "Traceback" not in output, output
        for needle in case.needles(ctx):
            assert needle in output, f"{needle!r} not in: {output}"
        assert snapshot(tmp_path) == before, "something was written"
        assert not (bad_models["root"] / "PWNED").exists()
    finally:
        for undo in reversed(ctx.cleanup):
            undo()


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- what is not an error
def test_a_plugin_crash_shows_the_traceback_with_debug(tmp_path, cli_base_args, featsurv_main, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "boom.py").write_text(RAISING_COMPRESSOR)
    argv = ["audit", "boom", *cli_base_args, "--out", str(tmp_path / "out")]
    with pytest.raises(RuntimeError, match="kaboom in compress"):  # re-raised: Python prints the traceback
        featsurv_main(["--plugins-dir", str(folder), "--debug", *argv])
    monkeypatch.setenv("FEATSURV_DEBUG", "1")
    with pytest.raises(RuntimeError, match="kaboom in compress"):
        featsurv_main(["--plugins-dir", str(folder), *argv])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_featsurv_plugins_lists_everything_and_shows_a_conflict(tmp_path, featsurv_main):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "dupe.py").write_text(DUPLICATE_RTN)
    code, output = featsurv_main(["--plugins-dir", str(folder), "plugins"])
    assert code == 0, output
    assert "dupe  (" in output and "compressor rtn" in output and "compressor pruning" in output
    assert "Conflicts" in output and "Two plugins register a compressor named 'rtn': 'rtn' and 'dupe'" in output
    code, output = featsurv_main(["--plugins-dir", str(folder), "plugins", "--json"])
    listed = {p["name"]: p for p in json.loads(output[output.index("["):])}
    assert listed["dupe"]["conflicts"] and listed["pruning"].get("conflicts") is None


def test_a_pickle_only_model_loads_with_a_note_and_can_be_refused(bad_models, tiny_models, capsys):
    from featsurv import FeatsurvError
    from featsurv.loading import load_model
    from featsurv.plugins import get_registry

    loaded = load_model(get_registry(), str(bad_models["pickle"]))
    assert loaded.model is not None
    err = capsys.readouterr().err
    assert "only pickle weights (pytorch_model.bin)" in err and "weights_only=True" in err
    assert "--require-safetensors" in err
    with pytest.raises(FeatsurvError, match="--require-safetensors refuses them"):
        load_model(get_registry(), str(bad_models["pickle"]), require_safetensors=True)
    load_model(get_registry(), str(tiny_models["gpt_neox"]), require_safetensors=True)  # safetensors: no note
    assert "pickle" not in capsys.readouterr().err
