"""The separately packaged distributions in distributions/, seen from the host (torchao, the example, in detail).

Its own tests (distributions/featsurv-torchao/tests) check the quantization itself; these check that
the installed distribution plugs into featsurv as a third party would: found through its entry
point, controlled by the plugin variables, recorded in run.json, usable by `featsurv compare`,
and packaged so that installing it never pulls another torch. Skipped when it is not installed
(`make install` runs `pip install -e ./distributions/featsurv-torchao`).
"""
from __future__ import annotations

import json
import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from featsurv.params import expand_grid
from featsurv.plugins import build_registry, get_registry

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "distributions" / "featsurv-torchao"


def _why_not_installed() -> str | None:
    try:
        metadata.distribution("featsurv-torchao")
    except metadata.PackageNotFoundError:
        return ("featsurv-torchao is not installed: pip install -e ./distributions/featsurv-torchao "
                "(make install does this)")
    try:
        import featsurv_torchao  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"featsurv-torchao is installed but not importable: {type(exc).__name__}: {exc}"
    return None


# CI (CI=true) installs the example distribution through `make test`: there, a missing plugin fails.
needs_plugin = pytest.mark.skipif(_why_not_installed() is not None and not os.environ.get("CI"),
                                  reason=str(_why_not_installed()))


@pytest.fixture(autouse=True)
def clean(clean_plugin_controls):
    yield


def test_packaging_never_pulls_another_torch():
    """Checked on the source tree, installed or not."""
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    assert project["name"] == "featsurv-torchao"
    assert project["entry-points"]["featsurv"] == {"torchao": "featsurv_torchao"}
    deps = {d.split("[")[0].split("=")[0].split("~")[0].split(">")[0].split("<")[0].strip().lower()
            for d in project["dependencies"]}
    assert deps == {"featsurv", "torchao"}, "depend on featsurv and torchao only: never on torch itself"
    (torchao,) = [d for d in project["dependencies"] if d.startswith("torchao")]
    assert any(op in torchao for op in ("==", "~=", "<")), "pin the torchao release line the plugin is written for"
    assert (PLUGIN_DIR / "README.md").is_file() and (PLUGIN_DIR / "tests" / "conftest.py").is_file()
    assert 'pytest_plugins = "featsurv.testing"' in (PLUGIN_DIR / "tests" / "conftest.py").read_text()


@needs_plugin
def test_found_through_its_entry_point():
    registry = get_registry()
    info = registry.provider("compressors", "torchao")
    assert (info.name, info.distribution) == ("torchao", "featsurv-torchao")
    assert info.version == metadata.version("featsurv-torchao")
    assert info.provides == {"compressors": ["torchao"]}


@needs_plugin
def test_declares_a_usable_compare_knob():
    comp = get_registry().get("compressors", "torchao")
    params = {p.name: p for p in comp.params}
    assert comp.knob == "bits" and params["bits"].type is int
    lo, hi = comp.knob_range
    assert params["bits"].minimum <= lo < hi <= params["bits"].maximum
    assert comp.knob_increases_compression is False
    (config,) = expand_grid(comp.params, {k: [str(v)] for k, v in comp.compare_default.items()}, "torchao")
    assert config["bits"] == 4
    assert comp.label(config) == "torchao int4"


@needs_plugin
@pytest.mark.parametrize("var,value", [("FEATSURV_DISABLE_PLUGINS", "torchao"),
                                       ("FEATSURV_DISABLE_PLUGINS", "featsurv-torchao"),
                                       ("FEATSURV_LOAD_PLUGINS", ""),
                                       ("FEATSURV_LOAD_PLUGINS", "some-other-dist")])
def test_plugin_controls_apply_to_it(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    registry = build_registry()
    assert "torchao" not in registry.plugins and "torchao" not in registry.names("compressors")
    assert "rtn" in registry.names("compressors")
    monkeypatch.setenv("FEATSURV_LOAD_PLUGINS", "featsurv-torchao")
    monkeypatch.delenv("FEATSURV_DISABLE_PLUGINS", raising=False)
    assert "torchao" in build_registry().names("compressors")


@needs_plugin
def test_compare_torchao_rtn_on_a_tiny_model(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    from click.testing import CliRunner

    from featsurv.cli import cli

    model = tiny_models["gpt_neox"]
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "torchao", "rtn", "--model", str(model), "--sae", str(tiny_sae(model)),
                                   "--dataset", str(tiny_corpus), "--tokens", "256", "--bootstrap", "0",
                                   "--steps", "3", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["compressor"] for r in summary["results"]] == ["torchao", "rtn"]
    assert summary["results"][0]["params"] == {"bits": 4, "granularity": "axis", "mapping": "symmetric",
                                               "algorithm": "affine"}
    run = json.loads((out / "run.json").read_text())
    recorded = {p["name"]: p for p in run["plugins"]}
    assert recorded["torchao"]["distribution"] == "featsurv-torchao"
    assert recorded["torchao"]["version"] == metadata.version("featsurv-torchao")


# --------------------------------------------------------------------------- every distribution in distributions/
DISTRIBUTIONS = {"featsurv-torchao": ("torchao", "featsurv_torchao"), "featsurv-hqq": ("hqq", "featsurv_hqq"),
                 "featsurv-bnb": ("bnb", "featsurv_bnb"), "featsurv-gptq": ("gptq", "featsurv_gptq")}


def test_the_main_package_does_not_ship_the_distributions():
    """featsurv's own wheel lists its packages by name: nothing under distributions/ gets into it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert isinstance(tool["packages"], list), "keep an explicit package list (no find:, which could pick them up)"
    assert not any(p.startswith(tuple(m for _, m in DISTRIBUTIONS.values())) for p in tool["packages"])
    assert all(not d.startswith("distributions") for d in tool["package-dir"].values())
    assert sorted(p.name for p in (ROOT / "distributions").iterdir() if p.is_dir()) == sorted(DISTRIBUTIONS)


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_each_distribution_is_packaged_like_the_example(dist):
    folder = ROOT / "distributions" / dist
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    name, module = DISTRIBUTIONS[dist]
    assert project["name"] == dist and project["entry-points"]["featsurv"] == {name: module}
    from packaging.requirements import Requirement

    assert "torch" not in {Requirement(d).name.lower() for d in project["dependencies"]}, "never depend on torch"
    assert (folder / "README.md").is_file() and (folder / "tests" / "conftest.py").is_file()
    assert (ROOT / "docs" / "plugins" / f"{name}.md").is_file() or name == "torchao"


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_each_installed_distribution_is_found_and_listed(dist):
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{dist} is not installed (make install does it)")
    name, _ = DISTRIBUTIONS[dist]
    info = get_registry().provider("compressors", name)
    assert (info.name, info.distribution, info.version) == (name, dist, metadata.version(dist))
    from click.testing import CliRunner

    from featsurv.cli import cli

    text = CliRunner().invoke(cli, ["plugins"]).output
    assert f"compressor {name}:" in text
