"""The fit check's firing profile: FP L0 and dead fraction against what the SAE's metadata records."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.data_paths import resolve
from featsurv.firing_profile import measured, profile

SAE = "featsurv:saes/featsurv-tiny/blocks.1.hook_resid_post"


def test_measured_l0_and_dead_fraction_by_hand():
    # 4 features over the audit tokens: rates 0.5, 0, 1.25 (a feature counted per token), 0
    got = measured({"firing_rate": np.array([0.5, 0.0, 0.25, 0.0])})
    assert got == {"l0": 0.75, "dead_fraction": 0.5}


@pytest.mark.parametrize("expected_l0,verdict", [
    (24.0, "ok"), (24.0 * 1.7, "ok"), (24.0 / 1.7, "ok"),  # within sqrt(3) = 1.732
    (24.0 * 1.8, "warning"), (24.0 / 1.8, "warning"),  # beyond sqrt(3), within 3
    (24.0 * 3.1, "stop"), (24.0 / 3.1, "stop"), (0.0, "no recorded profile"), (None, "no recorded profile"),
])
def test_the_verdict_follows_the_ratio(expected_l0, verdict):
    rates = np.full(100, 0.24)  # L0 24
    ev = profile({"l0": expected_l0, "source": "test"}, {"firing_rate": rates}, 3.0)
    assert ev["verdict"] == verdict
    assert math.isclose(ev["l0"], 24.0)
    if expected_l0:
        assert math.isclose(ev["l0_ratio"], 24.0 / expected_l0)


def test_a_zero_ratio_disables_and_dead_fraction_only_warns():
    rates = np.r_[np.zeros(60), np.full(40, 0.5)]  # 60% dead, L0 20
    ev = profile({"l0": 200.0, "dead_fraction": 0.1}, {"firing_rate": rates}, 0.0)
    assert ev["verdict"].startswith("not checked") and ev["dead_warning"] is True
    assert profile({"l0": 20.0, "dead_fraction": 0.5}, {"firing_rate": rates}, 3.0)["dead_warning"] is False


def _sae_recording(tmp_path: Path, l0: float) -> Path:
    out = tmp_path / f"sae-l0-{l0:g}"
    shutil.copytree(resolve(SAE), out)
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["metadata"]["featsurv_heldout_eval"]["l0"] = l0
    (out / "cfg.json").write_text(json.dumps(cfg))
    return out


def _audit(sae: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=8", "--tokens", "1024", "--bootstrap", "0", "-q",
                                    "--sae", str(sae), *extra, "--out", str(out)])


def test_an_sae_firing_far_from_its_recorded_l0_stops_the_audit(tmp_path):
    res = _audit(_sae_recording(tmp_path, 100.0), tmp_path / "r")  # measured 24 (TopK k=24): 0.24x
    assert res.exit_code == 2, res.output
    assert "fires 24.0 features per token" in res.output and "L0 of 100.0" in res.output
    assert "--max-l0-ratio 0" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_the_check_can_be_turned_off_and_the_evidence_is_recorded(tmp_path):
    res = _audit(_sae_recording(tmp_path, 100.0), tmp_path / "r", "--max-l0-ratio", "0")
    assert res.exit_code == 0, res.output
    fit = json.loads((tmp_path / "r" / "summary.json").read_text())["baseline"]["saes"]
    (info,) = fit.values()
    prof = info["fit"]["firing_profile"]
    assert prof["expected_l0"] == 100.0 and math.isclose(prof["l0"], 24.0, rel_tol=1e-9)
    assert prof["verdict"].startswith("not checked")
    assert "Firing profile" in (tmp_path / "r" / "report.html").read_text()


def test_a_shipped_pairing_passes_with_its_recorded_profile(tmp_path):
    res = _audit(Path(resolve(SAE)), tmp_path / "r")
    assert res.exit_code == 0, res.output
    (info,) = json.loads((tmp_path / "r" / "summary.json").read_text())["baseline"]["saes"].values()
    prof = info["fit"]["firing_profile"]
    assert prof["verdict"] == "ok" and prof["expected_from"].endswith("featsurv_heldout_eval")


@pytest.mark.parametrize("bad", ["0.5", "nan", "-1"])
def test_a_bad_ratio_is_refused_naming_the_flag(bad, tmp_path):
    res = _audit(Path(resolve(SAE)), tmp_path / "r", "--max-l0-ratio", bad)
    assert res.exit_code == 2 and "--max-l0-ratio" in res.output and bad in res.output, res.output
    assert "Traceback" not in res.output


def test_the_saelens_directory_profile_is_read_where_it_records_one():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from featsurv_plugins.sae_saelens import _expected_profile

    class Meta(dict):
        pass

    directory = get_pretrained_saes_directory()
    release, sae_id, l0 = next((r, s, v) for r, lk in directory.items() for s, v in (lk.expected_l0 or {}).items()
                               if v and v > 0)
    got = _expected_profile(f"{release}:{sae_id}", Path(f"{release}:{sae_id}"), Meta(), None)
    assert got == {"l0": float(l0), "source": f"sae-lens pretrained directory ({release})"}
    # a release that records no L0 (sae-lens stores 0) gives no profile
    release0, sae0 = next((r, s) for r, lk in directory.items() for s in lk.saes_map
                          if not (lk.expected_l0 or {}).get(s))
    assert _expected_profile(f"{release0}:{sae0}", Path("nowhere"), Meta(), None) == {}
