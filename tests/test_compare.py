"""Matched-perplexity bisection, and `featsurv compare` end to end."""
import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.compare import bisect_knob
from featsurv.plugins import get_registry


def run(args):
    return CliRunner().invoke(cli, args)


class FakeSession:
    """Perplexity as a known function of the knob; records the values tried."""

    def __init__(self, fn):
        self.registry = get_registry()
        self.metrics = SimpleNamespace(match_label=lambda: "perplexity")
        self.fn = fn
        self.tried = []

    def progress(self, msg):
        pass

    def run(self, name, params, features=True, tokens=None):
        value = params["sparsity"] if "sparsity" in params else params["bits"]
        self.tried.append(value)
        return SimpleNamespace(target=self.fn(value))


def test_bisection_reproduces_the_reference_protocol_steps():
    # ppl grows with sparsity; the target sits between 0.1625 and 0.175
    session = FakeSession(lambda s: 10 * (1 + s))
    target = 10 * (1 + 0.17)
    best, path = bisect_knob(session, "magnitude", {"scope": "matrix"}, "sparsity", 0.0, 0.8, target, 6, 0.0)
    assert session.tried == pytest.approx([0.4, 0.2, 0.1, 0.15, 0.175, 0.1625])
    assert best["sparsity"] == pytest.approx(0.175)  # the closest of the six
    assert [round(p["params"]["sparsity"], 4) for p in path] == [0.4, 0.2, 0.1, 0.15, 0.175, 0.1625]


def test_bisection_with_rtol_zero_runs_every_step_and_an_exact_hit_moves_toward_less_compression():
    """The reference loop (``lo = mid if ppl < target else hi = mid``) has no early stop: a step that
    lands exactly on the target (bfloat16 losses tie often) still halves the interval downward."""
    session = FakeSession(lambda s: 10 * (1 + round(s, 6)))
    target = 10 * (1 + 0.3)
    best, path = bisect_knob(session, "magnitude", {"scope": "matrix"}, "sparsity", 0.0, 0.8, target, 4, 0.0)
    assert session.tried == pytest.approx([0.4, 0.2, 0.3, 0.25])
    assert best["sparsity"] == pytest.approx(0.3) and path[2]["relative_gap"] == 0.0
    session = FakeSession(lambda s: 10 * (1 + round(s, 6)))  # with a tolerance the exact hit stops the search
    _, path = bisect_knob(session, "magnitude", {"scope": "matrix"}, "sparsity", 0.0, 0.8, target, 4, 1e-9)
    assert len(path) == 3


def test_bisection_stops_at_tolerance_and_handles_decreasing_integer_knobs():
    session = FakeSession(lambda s: 10 * (1 + s))
    _, path = bisect_knob(session, "magnitude", {"scope": "matrix"}, "sparsity", 0.0, 0.8, 10 * 1.2, 20, 0.01)
    assert len(path) == 2 and abs(path[-1]["relative_gap"]) <= 0.01
    # rtn: fewer bits, higher perplexity; target between 4 and 5 bits, nearer 5
    session = FakeSession(lambda b: 100.0 / b)
    best, path = bisect_knob(session, "rtn", {"symmetric": True, "granularity": "channel"}, "bits", 2, 8, 100 / 4.8, 10, 0.0)
    assert best["bits"] == 5
    assert all(isinstance(p["params"]["bits"], int) for p in path)
    assert len(set(session.tried)) == len(session.tried)  # never measures the same setting twice


def test_compare_end_to_end(tiny_models, tiny_sae, tiny_corpus, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "rtn", "magnitude", "-p", "bits=3", "--model", str(tiny_models["gpt_neox"]),
            "--sae", str(tiny_sae(tiny_models["gpt_neox"])), "--dataset", str(tiny_corpus), "--tokens", "512",
            "--context", "32", "--steps", "4", "--bootstrap", "0", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    (comp,) = summary["comparisons"]
    assert comp["a"] == "rtn int3" and comp["b"].startswith("pruning s=")
    assert 1 <= len(comp["path"]) <= 4
    assert comp["matched_params"]["sparsity"] == min(comp["path"], key=lambda p: abs(p["relative_gap"]))["params"]["sparsity"]
    assert [r["label"] for r in summary["results"]] == [comp["a"], comp["b"]]
    assert "rtn int3 vs pruning s=" in result.output


@pytest.mark.parametrize("extra,needle", [
    (["--range", "0.9,1.5"], "'sparsity'"),
    (["--knob", "scope"], "non-numeric knob"),
])
def test_compare_rejects_a_bad_search_before_any_work(base, tmp_path, extra, needle):
    res = run(["compare", "rtn", "magnitude", *base, *extra, "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output



def test_bisection_never_picks_a_broken_step():
    from types import SimpleNamespace

    from featsurv.compare import bisect_knob
    from featsurv.plugins import get_registry

    class Session:
        registry = get_registry()
        metrics = SimpleNamespace(match_label=lambda: "perplexity")

        def run(self, name, params, features=True, tokens=None):
            s = params["sparsity"]
            return SimpleNamespace(target=float("nan") if s > 0.3 else 10 * (1 + s))

        def progress(self, msg):
            pass

    best, path = bisect_knob(Session(), "magnitude", {"scope": "matrix"}, "sparsity", 0.0, 0.8, 10 * 1.45, 3, 0.0)
    assert path[0]["params"]["sparsity"] == 0.4 and path[0]["relative_gap"] == float("inf")
    assert best["sparsity"] <= 0.3

