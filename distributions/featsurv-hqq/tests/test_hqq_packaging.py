"""Installing featsurv-hqq never replaces torch: its requirements, and what pip would do here."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

DIST = Path(__file__).resolve().parents[1]
NAME = "featsurv-hqq"


def _requirements(dist: str, seen: set[str]) -> list[tuple[str, Requirement]]:
    """Every (dependent, requirement) below ``dist`` among the installed distributions, extras left out."""
    out = []
    for raw in metadata.requires(dist) or []:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append((dist, req))
        key = req.name.lower()
        if key not in seen:
            seen.add(key)
            try:
                out += _requirements(req.name, seen)
            except metadata.PackageNotFoundError:
                pass
    return out


def test_pyproject_declares_no_torch_and_pins_the_library():
    project = tomllib.loads((DIST / "pyproject.toml").read_text())["project"]
    names = {Requirement(d).name.lower() for d in project["dependencies"]}
    assert names == {"featsurv", "hqq"}, "depend on featsurv and the wrapped library only, never on torch"
    (lib,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "hqq"]
    assert any(s.operator in ("==", "~=", "<", "<=") for s in lib.specifier), "pin the library's release line"
    assert project["entry-points"]["featsurv"] == {"hqq": "featsurv_hqq"}


def test_every_installed_torch_requirement_below_it_allows_the_installed_torch():
    try:
        metadata.distribution(NAME)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{NAME} is not installed (make install does it)")
    torch = Version(metadata.version("torch"))
    reqs = [(who, r) for who, r in _requirements(NAME, set()) if r.name.lower() == "torch"]
    assert reqs, "featsurv itself requires torch: the walk must find it"
    bad = [f"{who}: {r}" for who, r in reqs if not r.specifier.contains(torch, prereleases=True)]
    assert not bad, f"these requirements exclude the installed torch {torch}: {bad}"


@pytest.mark.slow
def test_pip_install_dry_run_leaves_torch_as_it_is(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           str(DIST)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    would = {item["metadata"]["name"].lower(): item["metadata"]["version"]
             for item in json.loads(report.read_text())["install"]}
    assert "torch" not in would, f"pip would install torch {would.get('torch')} over {metadata.version('torch')}"
    assert NAME in would
