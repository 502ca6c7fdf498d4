"""Report fixes: the results table fits a 1400 px window (measured in headless Chromium when it is
installed, and by a width estimate always); log-scale r histogram ticks and colours; labels of the
survival-vs-perplexity figure do not overlap and carry CI error bars; comparisons name their hook
point; Jaccard values show their counts; constant weight statistics are left out."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    from featsurv_plugins import metric_overlap as mo, overlap_report as orep
except ModuleNotFoundError:  # source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from plugins import metric_overlap as mo, overlap_report as orep

from featsurv.report import figures as F
from featsurv.report import write_report
from featsurv.results import RunResult

HOOKS = ("blocks.4.hook_resid_post", "blocks.12.hook_resid_post")
WINDOW = 1400
LABELS = ("rtn int4 granularity=group:128 symmetric=false arith=native", "rtn int8",
          "pruning s=0.1625 method=wanda pattern=unstructured", "pruning 2:4 method=wanda")


def synth_run(n: int = 300, decoder_noise: float = 0.0) -> RunResult:
    """Long labels, two hook points, bootstrap intervals, a flagged row and a comparison."""
    rng = np.random.default_rng(0)
    frames, results = [], []
    for label in LABELS:
        for hook in HOOKS:
            r = np.clip(rng.normal(0.9, 0.1, n), -1, 1)
            active = rng.random(n) > 0.1
            band = np.where(active, np.where(r > 0.9, "survived", np.where(r < 0.5, "damaged", "blurred")), None)
            frames.append(pd.DataFrame({
                "config": label, "compressor": label.split()[0], "hook": hook, "feature": np.arange(n), "r": r,
                "band": band, "active": active, "silenced": False, "firing_rate": rng.uniform(0.001, 0.1, n),
                "mean_act": rng.uniform(0.01, 1, n), "peak_act": rng.uniform(1, 5, n),
                "decoder_norm": 1.0 + decoder_noise * rng.normal(size=n), "encoder_bias": rng.normal(size=n)}))
            act = frames[-1][active]
            frac = {b: float((act["band"] == b).mean()) for b in ("survived", "blurred", "damaged")}
            results.append({"label": label, "compressor": label.split()[0], "params": {"x": 1, "y": "long-value" * 4},
                            "hook": hook, "perplexity": 12.345, "perplexity_change": 0.004, "n_active": len(act),
                            **frac, "mean_r": float(act["r"].mean()), "perplexity_misses_damage": label == LABELS[0],
                            "counts": {b: int((act["band"] == b).sum()) for b in frac},
                            "ci": {b: [max(v - 0.012, 0), min(v + 0.013, 1)] for b, v in frac.items()}})
    features = pd.concat(frames, ignore_index=True)
    summary = {"baseline": {"perplexity": 12.3, "n_tokens": 4096}, "results": results, "comparisons": []}
    run = RunResult({"command": "compare", "platform": "Linux-" + "x" * 300}, summary, features)
    cmp = mo.overlap_between(run, LABELS[0], LABELS[2], HOOKS[1])
    summary["comparisons"].append({**cmp, "matched_on": "perplexity", "perplexity_a": 12.4, "perplexity_b": 12.5,
                                   "matched_params": {"sparsity": 0.1625}})
    return run


class Cells(HTMLParser):
    """The header and body rows of the first table inside <div class="... results">."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.rows, self.inside, self.cell = 0, [], False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "results" in (a.get("class") or "").split():
            self.inside = True
        if self.inside and tag == "tr":
            self.rows.append([])
        if self.inside and tag in ("td", "th"):
            self.cell = []
        if self.inside and tag == "span" and self.cell is not None and a.get("class") == "ci":
            self.cell.append("\n")

    def handle_endtag(self, tag):
        if self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell))
            self.cell = None
        if self.inside and tag == "table":
            self.inside = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def estimated_width(html: str, char_px: float = 7.2, pad_px: float = 19.0) -> float:
    """A width estimate of the results table: per column the longest line of any cell (at the
    report's 0.9em sans-serif, about 7 px a character in Chromium, bold headers included, taken as
    7.2; an interval's line at 0.8 of that), plus padding and border; the configuration and flags columns
    wrap at their CSS max-widths,
    16em and 12em (0.9em = 14.4 px)."""
    parser = Cells()
    parser.feed(html)
    rows = parser.rows
    widths = []
    for j in range(len(rows[0])):
        def chars(cell: str) -> float:  # the interval's second line is set at 0.8em
            first, *rest = cell.split("\n")
            return max([len(first), *(0.8 * len(line) for line in rest)])

        longest = max(chars(row[j] if j < len(row) else "") for row in rows)
        cap = {0: 16 * 14.4, len(rows[0]) - 1: 12 * 14.4}.get(j, float("inf"))
        widths.append(min(longest * char_px, cap))
    return sum(widths) + pad_px * len(widths)


def test_results_table_fits_a_1400px_window_by_estimate(tmp_path):
    html = write_report(synth_run(), tmp_path).read_text()
    width = estimated_width(html)
    content = 1200 - 2 * 2 * 16  # body max-width 1200 px, padding 2em each side
    assert width <= content, width
    parser = Cells()
    parser.feed(html)
    assert parser.rows[0][-1] == "flags" and parser.rows[0][1] == "hook point"


MEASURE = """<script>
window.addEventListener("load", () => {
  const wrap = document.querySelector("div.results"), table = wrap.querySelector("table");
  const flags = [...table.querySelectorAll("th")].pop().getBoundingClientRect();
  document.body.setAttribute("data-measure", JSON.stringify({
    page: document.documentElement.scrollWidth, inner: window.innerWidth,
    table: table.getBoundingClientRect().right, scroll: wrap.scrollWidth, client: wrap.clientWidth,
    flags_right: flags.right}));
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless chromium installed")
def test_results_table_fits_a_1400px_window_in_headless_chromium(tmp_path):
    report = write_report(synth_run(), tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={WINDOW},900", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'data-measure="([^"]+)"', dom)
    assert found, dom[-2000:]
    m = json.loads(found.group(1).replace("&quot;", '"'))
    assert m["inner"] == WINDOW
    assert m["page"] <= WINDOW, m  # no horizontal scrolling of the page
    assert m["scroll"] <= m["client"], m  # nor of the table's own box
    assert m["flags_right"] <= WINDOW and m["table"] <= WINDOW, m  # the flags column is in view


def test_log_histogram_labels_its_ticks_as_percentages_and_colours_differ():
    rng = np.random.default_rng(1)
    series = [(f"config {i}", rng.normal(0.9 - 0.05 * i, 0.05, 500)) for i in range(10)]
    fig = F.fig_r_distribution(series)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    shown = [(t.get_loc(), t.label1.get_text()) for t in ax.yaxis.get_major_ticks() if lo <= t.get_loc() <= hi]
    assert {"1%", "10%", "100%"} <= {text for _, text in shown}, shown
    assert all(text == F.percent_label(loc) for loc, text in shown)
    assert F.percent_label(0.001) == "0.1%" and F.percent_label(0.5) == "50%" and F.percent_label(1.0) == "100%"
    assert all(t.label1.get_text() == "" for t in ax.yaxis.get_minor_ticks())
    styles = [(p.get_edgecolor(), p.get_linestyle()) for p in ax.patches]
    assert len(set(styles)) == 10
    colours = [p.get_edgecolor()[:3] for p in ax.patches[:8]]
    gaps = [np.abs(np.subtract(a, b)).sum() for i, a in enumerate(colours) for b in colours[i + 1:]]
    assert min(gaps) > 0.3  # eight clearly different colours before line styles repeat them


def label_boxes(fig):
    """Window extents of the point labels (annotations; leader lines left out) at the final layout."""
    from matplotlib.text import Annotation, Text

    F.png_bytes(fig)
    renderer = fig.canvas.get_renderer()
    anns = [t for t in fig.axes[0].texts if isinstance(t, Annotation)]
    return anns, [Text.get_window_extent(t, renderer) for t in anns]


@pytest.mark.parametrize("crowded", [True, False])
def test_survival_against_perplexity_labels_do_not_overlap_and_show_intervals(crowded):
    spots = [(0.002 + 0.0001 * i, 0.5 + 0.01 * i) for i in range(40)] if crowded else [(-0.005, 0.95), (0.004, 0.7), (0.3, 0.2)]
    points = [{"name": f"rtn int{4 + i} granularity=group:{32 * (i + 1)} @ blocks.{i}.hook_resid_post",
               "perplexity_change": x, "survived": y, "misses": i % 2 == 0,
               "ci": {"survived": [y - 0.05, y + 0.05]}} for i, (x, y) in enumerate(spots)]
    fig = F.fig_survival_vs_ppl(points)
    anns, boxes = label_boxes(fig)
    ax = fig.axes[0]
    assert len(boxes) == len(points)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
        assert ax.bbox.x0 <= a.x0 and a.x1 <= ax.bbox.x1 and ax.bbox.y0 <= a.y0 and a.y1 <= ax.bbox.y1
    names = [p["name"] for p in points]
    if crowded:  # forty long names do not fit beside one cluster: numbers, and the names in a key
        assert [a.get_text() for a in anns] == [str(i) for i in range(1, 41)]
        key = [t.get_text() for t in fig.legends[0].get_texts()]
        assert key == [f"{i}. {n}" for i, n in enumerate(names, 1)]
    else:
        assert [a.get_text() for a in anns] == names and not fig.legends
    bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == len(points)
    seg = bars[0].lines[2][0].get_segments()[0]
    assert np.allclose([seg[0][1], seg[1][1]], [spots[0][1] - 0.05, spots[0][1] + 0.05])


def test_jaccard_values_show_their_counts_and_an_empty_union_is_named():
    assert orep.jaccard_text({"jaccard": 0.78, "n_nonsurvived_both": 312, "n_nonsurvived_either": 400}) == "0.780 (312/400)"
    stats = mo.overlap_stats(np.array([0.95, 0.8, 0.99]), np.array([0.97, 0.85, 0.6]))  # nothing damaged
    assert stats["n_damaged_either"] == 0 and stats["jaccard_damaged"] != stats["jaccard_damaged"]
    assert orep.jaccard_text(stats, "jaccard_damaged") == "n/a (no damaged features)"
    assert orep.jaccard_text(stats, "jaccard") == "0.500 (1/2)"
    one = mo.overlap_stats(np.array([0.2, 0.99]), np.array([0.1, 0.99]))
    assert orep.jaccard_text(one, "jaccard_damaged") == "1.000 (1/1)"  # one feature: the count says so
    lines = "\n".join(orep.comparison_lines([{**stats, "a": "A", "b": "B", "hook": HOOKS[0]}]))
    assert "jaccard          0.500 (1/2)" in lines and "n/a (no damaged features)" in lines and "nan" not in lines


def test_comparisons_name_their_hook_point_and_show_counts(tmp_path):
    run = synth_run()
    html = write_report(run, tmp_path).read_text()
    c = run.summary["comparisons"][0]
    assert f"Comparisons at matched perplexity at {HOOKS[1]}</h2>" in html
    assert f"Do they damage the same features? (at {HOOKS[1]})</h2>" in html
    assert f"({c['n_nonsurvived_both']}/{c['n_nonsurvived_either']})" in html
    assert ">nan<" not in html


@pytest.mark.parametrize("noise, shown", [(0.0, False), (1e-9, False), (0.05, True)])
def test_a_constant_decoder_norm_column_is_left_out(tmp_path, noise, shown):
    html = write_report(synth_run(decoder_noise=noise), tmp_path).read_text()
    worst = html.split("Most damaged features")[1].split("<h2>Run")[0]
    assert ("<th>decoder_norm</th>" in worst) is shown
    assert "<th>encoder_bias</th>" in worst


def test_an_interval_that_excludes_its_estimate_is_said_under_the_table(tmp_path):
    run = synth_run()
    assert 'id="ci-excludes-estimate"' not in write_report(run, tmp_path / "a").read_text()
    entry = run.summary["results"][1]
    entry["ci"]["survived"] = [entry["survived"] + 0.05, entry["survived"] + 0.08]
    entry["ci"]["excludes_estimate"] = ["survived"]
    html = write_report(run, tmp_path / "b").read_text()
    note = re.search(r'<p class="note warn" id="ci-excludes-estimate">(.*?)</p>', html, re.S)
    assert note and entry["label"] in note.group(1) and "more tokens" in note.group(1)
