"""`featsurv analyze`: the reference study's phase 4 threshold grid and phase 5 tables, each checked
against an independent implementation of the reference's formulas (plain Python / numpy / scipy)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv.results import RunResult, write_run
from featsurv_plugins import phase_tables as T
from featsurv_plugins.metric_overlap import overlap_between

HOOK = "blocks.1.hook_resid_post"
A, B = "rtn bits=6", "pruning s=0.2"


def synthetic_table(seed: int = 0, n: int = 400, hooks=(HOOK,)) -> pd.DataFrame:
    """Two configurations; r depends on the FP statistics (so the predictor has signal); 10% inactive."""
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.002, 0.2, n)
    mean = rate * rng.uniform(0.5, 3.0, n)
    peak = mean / rate * rng.uniform(1.0, 4.0, n)
    active = rng.uniform(size=n) > 0.1
    rate[~active] = rng.uniform(0, 0.001, (~active).sum())
    signal = np.log(peak) - np.log(peak).mean()
    rows = []
    for hook in hooks:
        for label, shift in ((A, 0.0), (B, 0.05)):
            r = np.clip(0.85 + 0.08 * signal - shift + rng.normal(0, 0.12, n), -1, 1)
            r = np.round(r, 3)  # ties in r, as a sort must handle
            rows.append(pd.DataFrame({"config": label, "compressor": label.split()[0], "hook": hook,
                                      "feature": np.arange(n), "r": r, "active": active, "firing_rate": rate,
                                      "mean_act": mean, "peak_act": peak}))
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_synthetic(path: Path, seed: int = 0, hooks=(HOOK,), comparison: bool = True) -> RunResult:
    summary = {"baseline": {}, "results": [], "metric_options": {"survival": {"survived_above": 0.9,
                                                                               "damaged_below": 0.5}},
               "comparisons": [{"a": A, "b": B, "hook": HOOK}] if comparison else []}
    run = RunResult({"command": "compare"}, summary, synthetic_table(seed, hooks=hooks))
    write_run(path, run)
    return RunResult.load(path)


def active_of(run: RunResult, label: str, hook: str = HOOK) -> pd.DataFrame:
    df = run.features
    return T.active_rows(df[(df["config"] == label) & (df["hook"] == hook)])


# --------------------------------------------------------------------------- oracles
def oracle_grid(r):
    r = [float(x) for x in r]
    out = []
    for st in (0.80, 0.85, 0.90, 0.95):
        for dt in (0.3, 0.4, 0.5, 0.6, 0.7):
            s = 100 * sum(1 for x in r if x > st) / len(r)
            d = 100 * sum(1 for x in r if x < dt) / len(r)
            out.append((st, dt, s, 100 - s - d, d))
    return out


def oracle_stats(act):
    rows = []
    for rate, mean, peak in zip(act["firing_rate"], act["mean_act"], act["peak_act"]):
        m = max(mean, 1e-8)
        rows.append([-math.log(max(rate, 1e-8)), math.log(m), math.log(max(peak, 1e-8)), math.log(max(peak / m, 1.0))])
    return np.array(rows)


def oracle_bins(values, q):
    """pandas.qcut without duplicate edges: linear-interpolated quantile edges, right-closed bins."""
    edges = np.quantile(values, np.linspace(0, 1, q + 1))
    return np.searchsorted(edges[1:-1], values, side="left")


def oracle_logistic(X, y):
    """L2 logistic regression with C = 1 (unpenalized intercept), by scipy's BFGS on the exact loss."""
    from scipy.optimize import minimize

    def loss(w):
        z = X @ w[1:] + w[0]
        return 0.5 * w[1:] @ w[1:] + np.sum(np.logaddexp(0, z) - y * z)

    def grad(w):
        p = 1 / (1 + np.exp(-(X @ w[1:] + w[0])))
        return np.r_[np.sum(p - y), w[1:] + X.T @ (p - y)]

    w = minimize(loss, np.zeros(X.shape[1] + 1), jac=grad, method="BFGS", options={"gtol": 1e-10}).x
    return w[0], w[1:]


def oracle_auc(y, score):
    from scipy.stats import mannwhitneyu

    pos, neg = score[y == 1], score[y == 0]
    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


# --------------------------------------------------------------------------- tables
def test_threshold_grid_matches_counting(tmp_path):
    run = write_synthetic(tmp_path / "run")
    r = active_of(run, A)["r"].to_numpy()
    grid = T.threshold_grid(r)
    expected = oracle_grid(r)
    assert len(grid) == 20
    got = list(grid[["survival_threshold", "damage_threshold", "survived_pct", "degraded_pct", "damaged_pct"]]
               .itertuples(index=False, name=None))
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-9)
    # a damage threshold at or above the survival threshold is skipped, as in the reference
    assert len(T.threshold_grid(r, survival=(0.5,), damage=(0.4, 0.5, 0.6))) == 1


def test_statistics_and_quartiles_match_numpy(tmp_path):
    run = write_synthetic(tmp_path / "run")
    act = active_of(run, A)
    stats = T.statistics_frame(act)
    assert np.allclose(stats[list(T.STATISTICS)].to_numpy(), oracle_stats(act), rtol=0, atol=1e-12)
    assert (stats["survived"].to_numpy() == (act["r"].to_numpy() > 0.9)).all()
    q = T.survival_by_quartile(stats)
    for j, prop in enumerate(T.STATISTICS):
        part = q[q["statistic"] == prop]
        assert list(part["quartile"]) == list(T.QUARTILE_LABELS)
        bins = oracle_bins(stats[prop].to_numpy(), 4)
        y = stats["survived"].to_numpy()
        for k in range(4):
            assert int(part["n"].iloc[k]) == int((bins == k).sum())
            assert part["survival_pct"].iloc[k] == pytest.approx(100 * y[bins == k].mean(), abs=1e-9)


def test_quartiles_with_tied_edges_keep_every_feature():
    stats = pd.DataFrame({s: [0.0] * 6 + [1.0, 2.0] for s in T.STATISTICS})
    stats["survived"] = [1, 0, 1, 0, 1, 0, 1, 1]
    q = T.survival_by_quartile(stats)
    assert q.groupby("statistic")["n"].sum().tolist() == [8, 8, 8, 8]


def test_coefficients_match_scipy_fit_and_auc(tmp_path):
    from sklearn.model_selection import StratifiedKFold

    run = write_synthetic(tmp_path / "run")
    stats = T.statistics_frame(active_of(run, A))
    res = T.coefficients(stats)
    X = stats[list(T.STATISTICS)].to_numpy()
    X = (X - X.mean(0)) / X.std(0)
    y = stats["survived"].to_numpy()
    _, w = oracle_logistic(X, y)
    got = {c["statistic"]: c["standardized_coef"] for c in res["coefficients"]}
    for i, s in enumerate(T.STATISTICS):
        assert got[s] == pytest.approx(w[i], abs=2e-3), s
    assert [c["statistic"] for c in res["coefficients"]] == [T.STATISTICS[i] for i in np.argsort(-np.abs(w))]
    aucs = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        b0, wf = oracle_logistic(X[train], y[train])
        aucs.append(oracle_auc(y[test], X[test] @ wf + b0))
    assert res["cv_auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-3)
    assert res["cv_auc_std"] == pytest.approx(np.std(aucs), abs=1e-3)
    assert res["n_samples"] == len(y) and res["frac_survived"] == pytest.approx(y.mean())
    assert res["coefficients"][0]["statistic"] == "log_max_activation"  # the statistic r was built from
    one_class = stats.assign(survived=1)
    assert "skipped" in T.coefficients(one_class)


def test_sign_agreement_by_hand():
    c1 = [{"statistic": "rarity", "standardized_coef": 0.5}, {"statistic": "log_mean_activation", "standardized_coef": -1.0},
          {"statistic": "log_max_activation", "standardized_coef": 2.0}, {"statistic": "log_concentration", "standardized_coef": 0.1}]
    c2 = [{"statistic": "rarity", "standardized_coef": -0.3}, {"statistic": "log_mean_activation", "standardized_coef": -2.0},
          {"statistic": "log_max_activation", "standardized_coef": 1.0}, {"statistic": "log_concentration", "standardized_coef": 0.2}]
    t = T.sign_agreement(c1, c2)
    assert list(t["statistic"]) == ["log_mean_activation", "log_max_activation", "rarity", "log_concentration"]
    assert list(t["sign_agreement"]) == [True, True, False, True]
    assert list(t["abs_avg"]) == pytest.approx([1.5, 1.5, 0.4, 0.15])


def test_deciles_overlap_counts_and_top_disrupted_match_sets(tmp_path):
    run = write_synthetic(tmp_path / "run")
    act_a, act_b = active_of(run, A), active_of(run, B)
    pair = T.paired(act_a, act_b)
    dec = T.firing_rate_deciles(pair)
    bins = oracle_bins(pair["firing_rate"].to_numpy(), 10)
    ra, rb = pair["r_a"].to_numpy(), pair["r_b"].to_numpy()
    assert len(dec) == 10
    for k in range(10):
        m, row = bins == k, dec.iloc[k]
        assert row["n_features"] == m.sum()
        assert row["mean_firing_rate"] == pytest.approx(pair["firing_rate"].to_numpy()[m].mean())
        for side, r in (("a", ra), ("b", rb)):
            assert row[f"{side}_survived_pct"] == pytest.approx(100 * (r[m] > 0.9).mean())
            assert row[f"{side}_non_survived_pct"] == pytest.approx(100 * (r[m] <= 0.9).mean())
            assert row[f"{side}_damaged_pct"] == pytest.approx(100 * (r[m] < 0.5).mean())
            assert row[f"{side}_mean_damage"] == pytest.approx((1 - r[m]).mean())
    counts = T.overlap_counts(pair).set_index("set_type")
    ids = pair["feature"].tolist()
    for name, test in (("non_survived", lambda r: r <= 0.9), ("damaged", lambda r: r < 0.5),
                       ("degraded", lambda r: 0.5 <= r <= 0.9)):
        sa = {f for f, r in zip(ids, ra) if test(r)}
        sb = {f for f, r in zip(ids, rb) if test(r)}
        row = counts.loc[name]
        assert (row["a_count"], row["b_count"], row["intersection_count"], row["union_count"],
                row["a_only_count"], row["b_only_count"]) == (len(sa), len(sb), len(sa & sb), len(sa | sb),
                                                              len(sa - sb), len(sb - sa))
        assert row["jaccard"] == pytest.approx(len(sa & sb) / len(sa | sb))
    ov = overlap_between(run, A, B)  # the overlap metric's Jaccard indices agree
    assert counts.loc["non_survived", "jaccard"] == pytest.approx(ov["jaccard"], abs=1e-12)
    assert counts.loc["damaged", "jaccard"] == pytest.approx(ov["jaccard_damaged"], abs=1e-12)
    top = T.top_disrupted(act_a, 15)
    expected = sorted(zip(act_a["r"], act_a["feature"]))[:15]
    assert list(zip(top["r"], top["feature"])) == expected
    assert list(top["rank"]) == list(range(1, 16))
    assert (top["damaged"] == (top["r"] < 0.5)).all()


# --------------------------------------------------------------------------- the command
def test_analyze_command_writes_tables_figures_and_json(tmp_path):
    from featsurv.manifest import read

    write_synthetic(tmp_path / "run")
    out = tmp_path / "analysis"
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "run"), "--out", str(out), "--top", "5"])
    assert res.exit_code == 0, res.output
    assert "non_survived" in res.stdout and "degraded" in res.stdout and "CV AUC" in res.stdout
    names = set(read(out, str(out))["files"])
    for n in ("analysis.json", "threshold_grid.parquet", "quartiles.parquet", "deciles.parquet",
              "overlap_counts.parquet", "top_disrupted.parquet", "fig_survival_by_quartile.png", "fig_roc.png",
              "fig_coefficients.png", "fig_scatter.png", "fig_deciles.png"):
        assert n in names, n
    record = json.loads((out / "analysis.json").read_text())
    run = RunResult.load(tmp_path / "run")
    pair = T.paired(active_of(run, A), active_of(run, B))
    assert record["runs"][0]["a"] == A and record["runs"][0]["b"] == B
    expected = T.overlap_counts(pair).to_dict("records")
    for got, want in zip(record["runs"][0]["overlap"], expected, strict=True):
        assert got == pytest.approx(want)
    grid = pd.read_parquet(out / "threshold_grid.parquet")
    assert set(grid["config"]) == {A, B} and len(grid) == 40
    top = pd.read_parquet(out / "top_disrupted.parquet")
    assert top.groupby("config").size().tolist() == [5, 5]
    assert (out / "fig_roc.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "degraded" in page and 'src="fig_deciles.png"' in page and "Threshold grid" in page


def test_analyze_two_runs_sign_agreement(tmp_path):
    write_synthetic(tmp_path / "r1", seed=0)
    write_synthetic(tmp_path / "r2", seed=1, comparison=False)
    out = tmp_path / "analysis"
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "r1"), str(tmp_path / "r2"), "--names", "P,G",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert [r["name"] for r in record["runs"]] == ["P", "G"]
    assert record["runs"][1]["a"] == A and record["runs"][1]["b"] == B  # no comparison: first two configurations
    c1 = {c["statistic"]: c["standardized_coef"] for c in record["runs"][0]["predictor"]["coefficients"]}
    c2 = {c["statistic"]: c["standardized_coef"] for c in record["runs"][1]["predictor"]["coefficients"]}
    n_agree = sum(np.sign(c1[s]) == np.sign(c2[s]) for s in T.STATISTICS)
    assert record["sign_agreement"] == f"{n_agree}/4"
    table = pd.read_parquet(out / "coefficient_comparison.parquet")
    assert table["coef_1"].tolist() == [c1[s] for s in table["statistic"]]
    assert (out / "run2_deciles.parquet").is_file() and (out / "fig_run2_scatter.png").is_file()


@pytest.mark.parametrize("args, needle", [
    (["--a", "rtn bits=5"], "rtn bits=5"),
    (["--a", A, "--b", A], "both"),
    (["--names", "x,y"], "--names"),
    (["--a2", A], "RUN2"),
    (["--hook", "blocks.9.hook_resid_post"], "blocks.9.hook_resid_post"),
])
def test_analyze_bad_input_exits_2(tmp_path, args, needle):
    write_synthetic(tmp_path / "run")
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "run"), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "analysis.json").exists()


def test_analyze_needs_a_hook_when_several_and_a_real_run(tmp_path):
    write_synthetic(tmp_path / "run", hooks=(HOOK, "blocks.2.hook_resid_post"))
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--hook" in res.output and "blocks.2.hook_resid_post" in res.output
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_analyze_a_single_configuration_audit(tmp_path):
    table = synthetic_table()
    run = RunResult({"command": "audit"}, {"baseline": {}, "results": []}, table[table["config"] == A])
    write_run(tmp_path / "run", run)
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["analyze", str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "quartiles.parquet").is_file() and (out / "threshold_grid.parquet").is_file()
    assert not (out / "deciles.parquet").exists() and "non_survived" not in res.stdout
    record = json.loads((out / "analysis.json").read_text())
    assert record["runs"][0]["b"] is None and record["runs"][0]["survived_above"] == 0.9  # the survival defaults
