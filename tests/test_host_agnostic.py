"""The host knows no plugin by name: its code names none, built-in metrics can be disabled, and
options reach the metrics that declare them."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.plugins import reset_registry

HOST = Path(__file__).resolve().parents[1] / "featsurv"
BUILTIN_NAMES = re.compile(r'"(survival|perplexity|predictor|overlap|magnitude|bits)"')


def test_no_host_module_names_a_builtin_plugin():
    hits = [f"{path.relative_to(HOST)}:{i}: {line.strip()}" for path in HOST.rglob("*.py")
            for i, line in enumerate(path.read_text().splitlines(), 1) if BUILTIN_NAMES.search(line)]
    assert hits == []


def test_no_class_over_150_lines_and_no_function_over_60_lines():
    long = []
    for path in HOST.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = 150 if isinstance(node, ast.ClassDef) else 60
                if node.end_lineno - node.lineno + 1 > limit:
                    long.append(f"{path.relative_to(HOST)}:{node.lineno} {node.name}")
    assert long == []


@pytest.fixture
def without(monkeypatch):
    """Run with some built-in plugins disabled, as FEATSURV_DISABLE_PLUGINS does."""
    def disable(names: str) -> None:
        monkeypatch.setenv("FEATSURV_DISABLE_PLUGINS", names)
        reset_registry()

    yield disable
    monkeypatch.delenv("FEATSURV_DISABLE_PLUGINS", raising=False)
    reset_registry()


@pytest.mark.parametrize("command", [["audit", "rtn", "-p", "bits=4"], ["compare", "rtn", "magnitude", "--steps", "2"]])
def test_audit_and_compare_work_without_the_survival_metric(command, without, cli_base_args, tmp_path):
    without("survival")
    out = tmp_path / "r"
    args = [a for a in cli_base_args if a not in ("--bootstrap", "0")]  # --bootstrap is the survival metric's
    res = CliRunner().invoke(cli, [*command, *args, "--out", str(out)])
    assert "--bootstrap" not in CliRunner().invoke(cli, [command[0], "--help"]).output
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    for entry in summary["results"]:
        assert "perplexity_change" in entry and "survived" not in entry
    header = next(line for line in res.output.splitlines() if line.startswith("configuration"))
    assert "ppl" in header and "survived" not in header
    assert (out / "report.html").is_file()


def test_compare_without_a_matching_metric_stops_at_start_up(without, cli_base_args, tmp_path):
    without("perplexity")
    res = CliRunner().invoke(cli, ["compare", "rtn", "magnitude", *cli_base_args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "none of the metrics" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_predict_gets_the_run_seed(cli_base_args, tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=3", *cli_base_args, "--predict", "--seed", "3",
                                   "--metric-option", "predictor.folds=3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    predictors = summary["predictors"]
    assert predictors and all(p["seed"] == 3 for p in predictors.values())
    assert all(p["k"] <= 3 for p in predictors.values())
    assert json.loads((out / "run.json").read_text())["metric_options"]["predictor"]["folds"] == 3


def test_a_bad_metric_option_names_itself(cli_base_args, tmp_path):
    res = CliRunner().invoke(cli, ["audit", "rtn", *cli_base_args, "--metric-option", "survival.nope=1",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "'nope'" in res.output and "min_firing_rate" in res.output
    res = CliRunner().invoke(cli, ["audit", "rtn", *cli_base_args, "--bootstrap", "10000000000",
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "10000000000" in res.output and not (tmp_path / "r").exists()
