"""Presets load and validate offline, and ship in a non-editable install."""
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.params import expand_grid
from featsurv.plugins import get_registry
from featsurv.presets import get_preset, load_presets


def run(args):
    return CliRunner().invoke(cli, args)

REFERENCE = ("pythia-70m", "gemma-2-2b")


def test_every_preset_validates_against_the_registered_plugins():
    registry = get_registry()
    presets = load_presets()
    assert {"featsurv-tiny", *REFERENCE, "pythia-70m-standard", "gemma-2-2b-standard"} <= set(presets)
    assert get_preset(None).name == "featsurv-tiny"
    for name, p in presets.items():
        assert p.description and p.options["saes"], name
        if p.options.get("adapter"):
            registry.get("model_adapters", p.options["adapter"])
        if p.audit:
            comp = registry.get("compressors", p.audit["compressor"])
            raw = {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in p.audit["params"].items()}
            assert expand_grid(comp.params, raw, comp.name)
        if p.compare:
            comp = registry.get("compressors", p.compare["a"])
            expand_grid(comp.params, {k: [str(v)] for k, v in p.compare.get("a_params", {}).items()}, comp.name)
            registry.get("compressors", p.compare["b"])


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_presets_follow_the_study_protocol(name):
    p = get_preset(name)
    o = p.options
    assert o["dataset"] == "hf:Salesforce/wikitext:wikitext-2-raw-v1:train"
    assert o["prepend_bos"] is False and o["exclude_special"] is False and o["join"] == "text"
    assert p.audit["params"]["granularity"] == "tl" and p.audit["params"]["bits"] == [8, 7, 6, 5, 4]
    assert p.compare["steps"] == 6 and p.compare["range"] == [0.0, 0.8] and p.compare["a_params"]["bits"] == 6
    assert len(p.published["results"]) == 6
    assert (o["context"], o["n_tokens"]) == ((512, 200000) if name == "pythia-70m" else (256, 500000))


def test_unknown_preset_is_a_clear_error():
    from featsurv.errors import FeatsurvError

    with pytest.raises(FeatsurvError, match="nosuch.*featsurv-tiny"):
        get_preset("nosuch")


@pytest.mark.slow
def test_wheel_ships_presets_plugins_and_embedded_data(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("featsurv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "featsurv_registry/featsurv-tiny.toml" in names
    assert "featsurv_plugins/compress_rtn.py" in names
    assert "featsurv/data/corpus/heldout.txt" in names
    assert not any(n.startswith("plugins/") for n in names)  # no top-level package named `plugins`
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[featsurv]" in text and "rtn = featsurv_plugins.compress_rtn" in text


def test_user_sae_drops_the_preset_hooks():
    from featsurv.cli.common import build_options

    opts, _ = build_options({"preset": "pythia-70m", "saes": ("/some/sae",), "model": "/some/model"})
    assert opts.hooks is None

