"""The offline HTML report: renders, references only files that exist, flags hidden damage."""
from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

try:
    from featsurv_plugins import metric_overlap as mo, metric_predictor as mp
except ModuleNotFoundError:  # source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from plugins import metric_overlap as mo, metric_predictor as mp

from featsurv.report import write_report
from featsurv.results import RunResult, write_run

HOOK = "blocks.4.hook_resid_post"


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def synth_run(flag_misses: bool = True, with_ci: bool = True, n: int = 400) -> RunResult:
    rng = np.random.default_rng(0)
    rate = 10 ** rng.uniform(-3, -0.5, n)
    mean = rate * rng.lognormal(0, 0.5, n)
    base = pd.DataFrame({"feature": np.arange(n), "active": rate > 0.0012, "firing_rate": rate, "mean_act": mean,
                         "peak_act": mean / rate * 3, "decoder_norm": rng.uniform(0.5, 1.5, n),
                         "encoder_norm": np.nan, "encoder_bias": rng.normal(size=n), "threshold": np.nan})
    configs = {"rtn bits=8": 0.02, "rtn bits=6": 0.25, "magnitude sparsity=0.175": 0.3}
    frames, results = [], []
    shared = rng.random(n)
    for label, noise in configs.items():
        r = np.clip(1 - noise * (2 * shared + 0.5 * rng.random(n)) * np.log10(1 / rate) / 2, -0.2, 1)
        df = base.assign(config=label, compressor=label.split()[0], hook=HOOK, r=r, silenced=r <= -0.2,
                         band=np.where(r > 0.9, "survived", np.where(r < 0.5, "damaged", "blurred")))
        frames.append(df)
        act = df[df["active"]]
        frac = {b: float((act["band"] == b).mean()) for b in ("survived", "blurred", "damaged")}
        change = {"rtn bits=8": 0.003, "rtn bits=6": 0.008, "magnitude sparsity=0.175": 0.2}[label]
        entry = {"label": label, "compressor": label.split()[0], "params": {"x": label.split("=")[1]},
                 "hook": HOOK, "perplexity": 10 * (1 + change), "perplexity_change": change,
                 "n_features": n, "n_active": len(act), **frac, "mean_r": float(act["r"].mean()),
                 "median_r": float(act["r"].median()), "n_silenced": int(act["silenced"].sum()),
                 "counts": {b: int((act["band"] == b).sum()) for b in ("survived", "blurred", "damaged")},
                 "perplexity_misses_damage": flag_misses and change <= 0.01 and frac["survived"] <= 0.9}
        if with_ci:
            entry["ci"] = {b: [max(frac[b] - 0.03, 0), min(frac[b] + 0.02, 1)] for b in frac}
        results.append(entry)
    features = pd.concat(frames, ignore_index=True)
    summary = {"baseline": {"perplexity": 10.0, "n_tokens": 4096}, "results": results,
               "options": {"ppl_tolerance": 0.01, "survival_target": 0.9}, "comparisons": []}
    run = RunResult({"command": "compare", "model": "pythia <70m>", "seed": 0, "versions": {"featsurv": "0.1.0"}},
                    summary, features)
    cmp = mo.overlap_between(run, "rtn bits=6", "magnitude sparsity=0.175")
    summary["comparisons"].append({**cmp, "matched_params": {"sparsity": 0.175}, "perplexity_a": 10.08,
                                   "perplexity_b": 12.0, "path": [{"params": {"sparsity": 0.4}, "perplexity": 20.0},
                                                                  {"params": {"sparsity": 0.2}, "perplexity": 12.5}]})
    return run


def parse(path: Path) -> Collector:
    c = Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def check_self_contained(report: Path, c: Collector) -> list[str]:
    srcs = [a["src"] for t, a in c.tags if t == "img"]
    for src in srcs:
        assert "://" not in src and not src.startswith("/"), src
        assert (report.parent / src).is_file(), src
    assert not [t for t, a in c.tags if t in ("script", "link", "iframe")]
    assert "http://" not in report.read_text() and "https://" not in report.read_text()
    return srcs


def test_report_renders_with_everything(tmp_path):
    run = synth_run()
    run.summary["predictors"] = mp.predict_run(run, k=3)
    write_run(tmp_path / "run", run)
    report = write_report(run)
    assert report == tmp_path / "run" / "report.html"
    c = parse(report)
    srcs = check_self_contained(report, c)
    assert {"fig_bands.png", "fig_r_distribution.png", "fig_survival_vs_perplexity.png", "fig_roc.png",
            "fig_damage_1.png"} <= set(srcs)
    for src in srcs:  # real PNGs
        assert (report.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html_text = report.read_text()
    # the misses-damage banner comes first and names the flagged configuration
    banner = [a for t, a in c.tags if a.get("id") == "misses-damage"]
    assert banner and html_text.index('id="misses-damage"') < html_text.index("<h2>Results</h2>")
    flagged = [e["label"] for e in run.summary["results"] if e["perplexity_misses_damage"]]
    assert flagged == ["rtn bits=6"]
    banner_html = html_text[html_text.index('id="misses-damage"'):html_text.index("</div>")]
    assert "rtn bits=6" in banner_html and "rtn bits=8" not in banner_html
    assert sum(1 for t, a in c.tags if t == "tr" and a.get("class") == "misses") == 1
    assert "pythia &lt;70m&gt;" in html_text  # escaped
    assert "Most damaged features" in html_text and "decoder_norm" in html_text
    assert "encoder_norm" not in html_text.split("Most damaged features")[1].split("<h2>Run")[0]  # all-NaN column
    import re

    # a band fraction with its CI on a second line (issue 11: intervals do not widen the table)
    assert re.search(r'\d+\.\d+%<span class="ci">\[\d+\.\d%, \d+\.\d%\]</span>', html_text)
    assert "Bisection path" in html_text
    # no temporary files are left behind
    assert not [p for p in report.parent.iterdir() if p.name.endswith(".tmp")]


def test_no_banner_without_flag_and_minimal_summary(tmp_path):
    run = synth_run(flag_misses=False, with_ci=False)
    run.summary.pop("comparisons")
    report = write_report(run, tmp_path / "out")
    c = parse(report)
    srcs = check_self_contained(report, c)
    assert "fig_roc.png" not in srcs and not any(s.startswith("fig_damage") for s in srcs)
    assert 'id="misses-damage"' not in report.read_text()
    assert not [a for t, a in c.tags if t == "tr" and a.get("class") == "misses"]


def test_report_of_an_empty_run(tmp_path):
    run = RunResult({}, {"baseline": {}, "results": []}, pd.DataFrame(
        {"config": pd.Series([], dtype=str), "feature": pd.Series([], dtype=int)}))
    report = write_report(run, tmp_path)
    check_self_contained(report, parse(report))
    with pytest.raises(ValueError):
        write_report(run)  # no path and no out_dir


def test_cli_report(tmp_path):
    from featsurv.cli.report import report_cmd

    write_run(tmp_path / "run", synth_run())
    res = CliRunner().invoke(report_cmd, [str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "run" / "report.html")
    c = parse(Path(res.stdout.strip()))
    check_self_contained(Path(res.stdout.strip()), c)
    assert CliRunner().invoke(report_cmd, [str(tmp_path / "nope")]).exit_code == 2
