"""Survival predictor: cross-validated AUCs against scikit-learn on answers known in advance."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

try:
    from featsurv_plugins import metric_predictor as mp
except ModuleNotFoundError:  # source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from plugins import metric_predictor as mp

from featsurv.results import RunResult, write_run


def synth_features(n: int = 600, seed: int = 0, label: str = "config", hook: str = "blocks.1.hook_resid_post",
                   band_from=None) -> pd.DataFrame:
    """One (configuration, hook) of features.parquet with plausible FP statistics."""
    rng = np.random.default_rng(seed)
    rate = 10 ** rng.uniform(-3, -0.3, n)
    mean = rate * rng.lognormal(0.0, 0.6, n)
    peak = mean / rate * rng.lognormal(1.0, 0.4, n)
    df = pd.DataFrame({
        "config": label, "compressor": "rtn", "hook": hook, "feature": np.arange(n),
        "active": True, "firing_rate": rate, "mean_act": mean, "peak_act": peak,
        "decoder_norm": rng.uniform(0.5, 1.5, n), "encoder_norm": rng.uniform(0.5, 1.5, n),
        "encoder_bias": rng.normal(size=n), "threshold": np.nan,
    })
    if band_from is None:
        r = rng.uniform(0.2, 1.0, n)
    else:
        r = band_from(df, rng)
    df["r"] = r
    df["band"] = np.where(r > 0.9, "survived", np.where(r < 0.5, "damaged", "blurred"))
    df["silenced"] = False
    return df


def by_log_mean(df, rng):
    """Survived exactly when ln(mean_act) is above its median: a deterministic threshold."""
    lm = np.log(df["mean_act"].to_numpy())
    return np.where(lm > np.median(lm), 0.95, 0.7)


def test_threshold_label_known_answer():
    df = synth_features(band_from=by_log_mean)
    res = mp.predict_survival(df)
    y = (df["band"] == "survived").astype(int).to_numpy()
    assert res["n"] == 600 and res["n_survived"] == int(y.sum()) == 300
    top = res["marginal"][0]
    assert top["statistic"] == "log_mean_act"
    assert top["auc"] == pytest.approx(1.0)
    assert top["direction"] == "higher survives"
    for m in res["marginal"]:  # every marginal AUC is sklearn's on the raw statistic
        raw = {"rarity": -np.log(df["firing_rate"]), "log_mean_act": np.log(df["mean_act"]),
               "log_peak_act": np.log(df["peak_act"]),
               "log_concentration": np.log(np.maximum(df["peak_act"] / df["mean_act"], 1.0))}.get(m["statistic"])
        if raw is None:
            raw = df[m["statistic"]]
        assert m["auc"] == pytest.approx(roc_auc_score(y, raw))
    gaps = [abs(m["auc"] - 0.5) for m in res["marginal"]]
    assert gaps == sorted(gaps, reverse=True)
    assert res["logistic"]["auc_mean"] > 0.97
    assert res["lightgbm"]["auc_mean"] > 0.95
    for model in ("logistic", "lightgbm"):
        sub = res[model]
        assert len(sub["folds"]) == 5
        assert sub["auc_mean"] == pytest.approx(np.mean(sub["folds"]))
        assert sub["auc_std"] == pytest.approx(np.std(sub["folds"]))
        roc = sub["roc"]
        assert roc["fpr"][0] == 0.0 and roc["fpr"][-1] == 1.0 and roc["tpr"][-1] == 1.0
        assert np.all(np.diff(roc["tpr"]) >= 0)
    # optional statistics: NaN threshold left out, the others used
    assert res["statistics"] == ["rarity", "log_mean_act", "log_peak_act", "log_concentration",
                                 "decoder_norm", "encoder_norm", "encoder_bias"]
    assert "threshold" in res["excluded"]


@pytest.mark.slow
def test_logistic_folds_match_a_manual_scikit_learn_loop():
    df = synth_features(seed=3, band_from=lambda d, rng: np.where(
        -np.log(d["firing_rate"]) + rng.normal(0, 1.0, len(d)) < 4.0, 0.95, 0.3))
    res = mp.predict_survival(df, k=5, seed=0)
    stats, _ = mp.feature_statistics(df)
    X = stats.to_numpy()
    y = (df["band"] == "survived").astype(int).to_numpy()
    manual = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X[train], y[train])
        manual.append(roc_auc_score(y[test], model.decision_function(X[test])))
    np.testing.assert_allclose(res["logistic"]["folds"], manual, rtol=1e-9)
    assert 0.6 < res["logistic"]["auc_mean"] < 0.99


def test_random_labels_give_chance_auc():
    df = synth_features(n=800, seed=7, band_from=lambda d, rng: np.where(rng.random(len(d)) < 0.5, 0.95, 0.3))
    res = mp.predict_survival(df)
    assert abs(res["logistic"]["auc_mean"] - 0.5) < 0.1
    assert abs(res["lightgbm"]["auc_mean"] - 0.5) < 0.1


def test_deterministic():
    df = synth_features(band_from=by_log_mean, seed=11)
    assert mp.predict_survival(df, seed=0) == mp.predict_survival(df, seed=0)


def test_degenerate_cases():
    df = synth_features(n=50, band_from=lambda d, rng: np.full(len(d), 0.99))
    res = mp.predict_survival(df)
    assert res["skipped"].startswith("only one class") and res["marginal"] == []
    assert "skipped" in res["logistic"] and "skipped" in res["lightgbm"]

    df = synth_features(n=60, band_from=lambda d, rng: np.r_[np.full(3, 0.2), np.full(len(d) - 3, 0.99)])
    res = mp.predict_survival(df)
    assert res["k"] == 3 and "k lowered" in res["note"]
    assert len(res["logistic"]["folds"]) == 3 and len(res["lightgbm"]["folds"]) == 3

    df = synth_features(n=60, band_from=lambda d, rng: np.r_[np.full(1, 0.2), np.full(len(d) - 1, 0.99)])
    res = mp.predict_survival(df)
    assert "skipped" in res["logistic"] and res["marginal"]  # marginal AUC is still defined

    inactive = synth_features(n=40, band_from=by_log_mean).assign(active=False)
    res = mp.predict_survival(inactive)
    assert res["n"] == 0 and res["skipped"] == "no active features"

    # inactive rows are ignored; a constant column is excluded; a zero mean row is dropped
    df = synth_features(n=200, band_from=by_log_mean)
    df.loc[:9, "active"] = False
    df["encoder_bias"] = 0.25
    df.loc[20, "mean_act"] = 0.0
    res = mp.predict_survival(df)
    assert res["n"] == 189 and res["n_dropped"] == 1
    assert res["excluded"]["encoder_bias"] == "constant"

    with pytest.raises(ValueError):
        mp.predict_survival(df, k=1)


def make_run(tmp_path: Path) -> RunResult:
    a = synth_features(n=300, seed=1, label="rtn bits=6", band_from=by_log_mean)
    b = synth_features(n=300, seed=1, label="rtn bits=4", band_from=lambda d, rng: np.where(
        np.log(d["mean_act"]) > np.quantile(np.log(d["mean_act"]), 0.8), 0.95, 0.4))
    features = pd.concat([a, b], ignore_index=True)
    results = []
    for label, df in (("rtn bits=6", a), ("rtn bits=4", b)):
        act = df[df["active"]]
        frac = {band: float((act["band"] == band).mean()) for band in ("survived", "blurred", "damaged")}
        results.append({"label": label, "compressor": "rtn", "params": {"bits": int(label[-1])},
                        "hook": "blocks.1.hook_resid_post", "perplexity": 10.0, "perplexity_change": 0.005,
                        "n_features": len(df), "n_active": len(act), **frac, "mean_r": float(act["r"].mean()),
                        "median_r": float(act["r"].median()), "n_silenced": 0,
                        "perplexity_misses_damage": frac["survived"] <= 0.9})
    run = RunResult({"command": "audit"}, {"baseline": {"perplexity": 9.95, "n_tokens": 1000},
                                           "results": results, "options": {}}, features)
    write_run(tmp_path / "run", run)
    return run


def test_analyze_keys_every_config_and_hook(tmp_path):
    run = make_run(tmp_path)
    out = mp.Predictor().analyze(run, {"folds": 5, "seed": 0, "statistics": "all"})
    assert list(out) == ["rtn bits=6 @ blocks.1.hook_resid_post", "rtn bits=4 @ blocks.1.hook_resid_post"]
    entry = out["rtn bits=6 @ blocks.1.hook_resid_post"]
    assert entry["label"] == "rtn bits=6" and entry["hook"] == "blocks.1.hook_resid_post"
    assert entry["logistic"]["auc_mean"] > 0.95
    assert mp.Predictor.default is False and mp.Predictor.name == "predictor"


def test_cli_predict_stores_prints_and_reports(tmp_path):
    from featsurv_plugins.predictor_command import predict_cmd

    make_run(tmp_path)
    res = CliRunner().invoke(predict_cmd, [str(tmp_path / "run"), "--folds", "4"])
    assert res.exit_code == 0, res.output
    assert "rtn bits=4 @ blocks.1.hook_resid_post" in res.stdout
    assert "logistic AUC" in res.stdout
    assert "predictor:" in res.stderr and "predictor:" not in res.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["predictors"]) == {"rtn bits=6 @ blocks.1.hook_resid_post",
                                          "rtn bits=4 @ blocks.1.hook_resid_post"}
    assert summary["predictors"]["rtn bits=6 @ blocks.1.hook_resid_post"]["k"] == 4
    assert summary["results"][0]["label"] == "rtn bits=6"  # the rest of the summary is kept
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "fig_roc.png").is_file()
    loaded = RunResult.load(tmp_path / "run")
    assert "predictors" in loaded.summary


def test_cli_predict_bad_directory(tmp_path):
    from featsurv_plugins.predictor_command import predict_cmd

    res = CliRunner().invoke(predict_cmd, [str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "not a featsurv result directory" in res.output
