"""`featsurv stability`: the reference's phase 4 ablations on the tiny model (token budgets, random
subsets, FP-vs-FP null test, threshold grid), checked against plain audits and numpy."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from featsurv.cli import cli
from featsurv_plugins import phase_stability as S



def oracle_grid(r):
    """The reference's threshold grid by counting (damage thresholds are all below survival ones)."""
    r = [float(x) for x in r]
    out = []
    for st in (0.80, 0.85, 0.90, 0.95):
        for dt in (0.3, 0.4, 0.5, 0.6, 0.7):
            s = 100 * sum(1 for x in r if x > st) / len(r)
            d = 100 * sum(1 for x in r if x < dt) / len(r)
            out.append((st, dt, s, 100 - s - d, d))
    return out


def _base(cli_base_args):
    args = list(cli_base_args)
    i = args.index("--tokens")
    return args[:i] + args[i + 2:]


@pytest.fixture(scope="module")
def stability_run(cli_base_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("stab") / "s"
    res = CliRunner().invoke(cli, ["stability", "rtn", "-p", "bits=3", "--budgets", "512,256", "--subset-tokens", "256",
                                   "--seeds", "0,1,2", "--pool-tokens", "1024", *_base(cli_base_args), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.stdout


def test_stability_rows_match_their_per_feature_tables(stability_run):
    out, text = stability_run
    rows = pd.read_parquet(out / "stability.parquet")
    feats = pd.read_parquet(out / "stability_features.parquet")
    assert list(rows["ablation"]) == ["budget", "budget", "subset", "subset", "subset", "null"]
    assert list(rows["token_budget"]) == [256, 512, 256, 256, 256, 256]
    assert list(rows["n_contexts"]) == [8, 16, 8, 8, 8, 8]
    for _, row in rows.iterrows():
        seed = -1 if row["ablation"] != "subset" else int(row["seed"])
        part = feats[(feats["ablation"] == row["ablation"]) & (feats["token_budget"] == row["token_budget"])
                     & (feats["seed"] == seed)]
        r = part.loc[part["active"], "r"].to_numpy()
        assert row["n_active"] == r.size > 0
        assert row["mean_r"] == pytest.approx(r.mean(), abs=1e-12)
        assert row["median_r"] == pytest.approx(np.median(r), abs=1e-12)
        assert row["survived_pct"] == pytest.approx(100 * (r > 0.9).mean(), abs=1e-12)
        assert row["damaged_pct"] == pytest.approx(100 * (r < 0.5).mean(), abs=1e-12)
    subsets = rows[rows["ablation"] == "subset"]
    assert subsets["mean_r"].nunique() == 3  # three different draws
    record = json.loads((out / "stability.json").read_text())
    hook = rows["hook"].iloc[0]
    h = record["hooks"][hook]
    assert h["subset_survived_std_pp"] == pytest.approx(subsets["survived_pct"].std(ddof=1))
    budgets = rows[rows["ablation"] == "budget"]
    assert h["budget_survived_range_pp"] == pytest.approx(budgets["survived_pct"].max() - budgets["survived_pct"].min())
    assert "null test (FP vs FP)" in text and "passed" in text


def test_null_test_gives_r_one_for_every_active_feature(stability_run):
    out, _ = stability_run
    feats = pd.read_parquet(out / "stability_features.parquet")
    null = feats[(feats["ablation"] == "null") & feats["active"]]
    assert len(null) > 0 and np.abs(null["r"].to_numpy() - 1.0).max() < 1e-6
    record = json.loads((out / "stability.json").read_text())
    for entry in record["hooks"].values():
        assert entry["null"]["passed"] and entry["null"]["survived_pct"] == 100.0 and entry["null"]["damaged_pct"] == 0.0


def test_threshold_grid_is_the_largest_budgets(stability_run):
    out, _ = stability_run
    feats = pd.read_parquet(out / "stability_features.parquet")
    grid = pd.read_parquet(out / "threshold_grid.parquet")
    part = feats[(feats["ablation"] == "budget") & (feats["token_budget"] == 512) & feats["active"]]
    got = list(grid[["survival_threshold", "damage_threshold", "survived_pct", "degraded_pct", "damaged_pct"]]
               .itertuples(index=False, name=None))
    for g, e in zip(got, oracle_grid(part["r"]), strict=True):
        assert g == pytest.approx(e, abs=1e-9)
    assert (out / "fig_stability.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert 'src="fig_stability.png"' in page and "null test" in page and "Threshold grid" in page


def test_budget_prefix_equals_a_plain_audit(stability_run, cli_base_args, tmp_path):
    out, _ = stability_run
    res = CliRunner().invoke(cli, ["audit", "rtn", "-p", "bits=3", *_base(cli_base_args), "--tokens", "256",
                                   "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    audit = pd.read_parquet(tmp_path / "a" / "features.parquet").sort_values("feature")
    feats = pd.read_parquet(out / "stability_features.parquet")
    mine = feats[(feats["ablation"] == "budget") & (feats["token_budget"] == 256)].sort_values("feature")
    assert (mine["active"].to_numpy() == audit["active"].to_numpy()).all()
    act = mine["active"].to_numpy()
    assert np.abs(mine["r"].to_numpy()[act] - audit["r"].to_numpy()[act]).max() < 1e-6
    assert np.allclose(mine["firing_rate"].to_numpy(), audit["firing_rate"].to_numpy(), atol=0)


def test_pool_of_the_whole_dataset(stability_run, cli_base_args, tmp_path):
    out, _ = stability_run
    res = CliRunner().invoke(cli, ["stability", "rtn", "-p", "bits=3", "--budgets", "256", "--subset-tokens", "256",
                                   "--seeds", "0", "--pool-tokens", "all", "--no-null", *_base(cli_base_args),
                                   "--out", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "w" / "stability.json").read_text())["plan"]
    assert plan["pool_tokens"] > 1024 and plan["pool_tokens"] % 32 == 0
    whole = pd.read_parquet(tmp_path / "w" / "stability_features.parquet")
    assert set(whole["ablation"]) == {"budget", "subset"}
    before = pd.read_parquet(out / "stability_features.parquet")
    a = whole[whole["ablation"] == "budget"].sort_values("feature")
    b = before[(before["ablation"] == "budget") & (before["token_budget"] == 256)].sort_values("feature")
    assert np.array_equal(a["active"].to_numpy(), b["active"].to_numpy())  # a prefix does not depend on the pool
    assert np.abs(a["r"].to_numpy() - b["r"].to_numpy())[a["active"].to_numpy()].max() < 1e-6


def test_random_subset_is_the_reference_draw():
    import torch

    from featsurv.tokens import TokenSet

    n_ctx, context = 20, 5
    stream = torch.arange(n_ctx * context)
    pool = TokenSet(stream.view(n_ctx, context).clone(), torch.ones(n_ctx, context, dtype=torch.bool), stream,
                    context, False, None, "x")
    sub = S.random_subset(pool, 7 * context + 3, seed=1)
    g = torch.Generator(device="cpu")
    g.manual_seed(1)
    idx = torch.randperm(n_ctx, generator=g)[:7]  # the reference's build_random_subset
    assert torch.equal(sub.contexts, pool.contexts[idx]) and sub.n_contexts == 7
    assert torch.equal(sub.stream, sub.contexts.reshape(-1))
    assert S.prefix(pool, 3 * context + 4).n_contexts == 3
    bos = TokenSet(torch.cat([torch.zeros(n_ctx, 1, dtype=torch.long), stream.view(n_ctx, context)], 1),
                   torch.ones(n_ctx, context + 1, dtype=torch.bool), stream, context + 1, True, 0, "x")
    sub = S.random_subset(bos, 7 * (context + 1), seed=1)
    assert torch.equal(sub.stream.view(7, context), sub.contexts[:, 1:])


@pytest.mark.parametrize("args, needle", [
    (["--tokens", "512"], "--budgets"),
    (["--budgets", "512,4096", "--pool-tokens", "1024"], "--pool-tokens"),
    (["--seeds", "a,b"], "--seeds"),
    (["--budgets", "16"], "one context"),
    (["-p", "bits=3,4"], "one configuration"),
    (["--subset-tokens", "0"], "--subset-tokens"),
    (["--pool-tokens", "many"], "--pool-tokens"),
    (["--budgets", "256", "--subset-tokens", "256", "--pool-tokens", "100000000"], "smaller --pool-tokens"),
])
def test_stability_bad_input_exits_2(cli_base_args, tmp_path, args, needle):
    base = _base(cli_base_args)
    cmd = ["stability", "rtn", *([] if "-p" in args else ["-p", "bits=3"]), *args, *base, "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(cli, cmd)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "stability.json").exists()
