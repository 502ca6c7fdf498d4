"""explorer.html in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

The page loads from file:// with the network closed and no console errors; sorting and filtering
change the rows; a click on a feature shows its contexts with FP and compressed shading and its
r; hovering and clicking the scatter work; a 16k-feature run renders under 10 MB. Each test keeps
a screenshot in its tmp_path. Without a browser the tests skip (in CI, where .ci/run installs
one, they fail instead).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _contexts_host import run_with_contexts, synthetic_run  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost",
         "--window-size=1400,1800"]


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMIUM or not DRIVER:
        return ("Chromium or chromedriver not found: browser tests skipped "
                "(apt-get install -y chromium chromium-driver, as .ci/run does)")
    return None


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="featsurv-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # explicit paths: no Selenium Manager
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path, timeout: float = 90.0) -> float:
    driver.get(path.resolve().as_uri())
    t0 = time.time()
    while time.time() - t0 < timeout:
        state = driver.execute_script(
            "return document.body && (document.body.getAttribute('data-ready') || "
            "(document.querySelector('.err') ? 'err' : null))")
        if state == "1":
            return time.time() - t0
        if state == "err":
            pytest.fail(driver.find_element("css selector", ".err").text)
        time.sleep(0.1)
    pytest.fail(f"explorer did not become ready in {timeout}s")


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def rows(driver) -> list[dict[str, str]]:
    return driver.execute_script("""
        var heads = Array.from(document.querySelectorAll('#table th')).map(function (t) { return t.textContent; });
        return Array.from(document.querySelectorAll('#rows tr')).map(function (tr) {
          var out = {}; Array.from(tr.children).forEach(function (td, i) { out[heads[i]] = td.textContent; });
          out.h = tr.getAttribute('data-h'); out.f = tr.getAttribute('data-f'); return out; });""")


def count(driver) -> int:
    return int(driver.find_element("id", "count").text.split()[0])


# --------------------------------------------------------------------------- a small real run
@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_models, tiny_sae, tiny_corpus):
    """A tiny GPT-NeoX audited at two strengths with the contexts metric, plus a Neuronpedia id
    and a watch list in its summary; the page written beside it."""
    from featsurv.audit import AuditOptions
    from featsurv_plugins.explorer.page import write_explorer
    from featsurv.watch import watched_section

    model = tiny_models["gpt_neox"]
    opts = AuditOptions(model=str(model), saes=[str(tiny_sae(model))], dataset=str(tiny_corpus), n_tokens=512,
                        context=32, batch_size=4, metric_options={"survival": {"bootstrap": 0}})
    out = tmp_path_factory.mktemp("explorer") / "run"
    result, contexts = run_with_contexts(opts, [("rtn", {"bits": 4}), ("rtn", {"bits": 2})], out, k=6, window=3)
    hook = result.features["hook"].iloc[0]
    result.summary["baseline"]["saes"][hook]["neuronpedia_id"] = "tiny-model/1-res-test"
    active = result.features[result.features["active"]]
    watch = [(hook, int(f), f"name{f}") for f in active["feature"].unique()[:3]]
    result.summary["watched"] = watched_section(result.features, watch, 0.9)
    path = write_explorer(result, out, contexts=contexts)
    return path, result, contexts


def test_loads_offline_without_console_errors(browser, small, tmp_path):
    path, result, _ = small
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)  # nothing fetched
    assert "http://" not in html and html.count("https://") == 1  # the Neuronpedia link template only
    seconds = open_page(browser, path)
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert severe(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    n_active = int(result.features["active"].sum())  # rows: active features x configurations
    assert count(browser) == n_active and seconds < 60
    assert "watched only" in browser.find_element("css selector", ".controls").text
    browser.execute_script("console.error('probe')")  # the log capture itself works
    assert any("probe" in m for m in severe(browser))


def test_sorting_and_filtering_change_the_rows(browser, small, tmp_path):
    path, result, _ = small
    open_page(browser, path)
    first = rows(browser)
    d = [float(r["damage 1-r"]) for r in first]
    assert d == sorted(d, reverse=True)  # default: most damaged first
    browser.find_element("css selector", "th[data-key=r]").click()
    asc = rows(browser)
    r_asc = [float(r["r"]) for r in asc]
    assert r_asc == sorted(r_asc)
    active = result.features[result.features["active"]]
    assert r_asc[0] == pytest.approx(active["r"].min(), abs=1e-3)
    browser.find_element("css selector", "th[data-key=r]").click()
    desc = [float(r["r"]) for r in rows(browser)]
    assert desc == sorted(desc, reverse=True) and desc != r_asc
    browser.find_element("css selector", "th[data-key=f]").click()
    ids = [int(r["f"]) for r in rows(browser)]
    assert ids == sorted(ids)
    # filter by id
    feature = int(active["feature"].iloc[len(active) // 2])
    search = browser.find_element("id", "search")
    search.send_keys(str(feature))
    got = rows(browser)
    assert {int(r["f"]) for r in got} == {feature} and len(got) == 2 and count(browser) == 2  # two configs
    search.clear()
    search.send_keys(" ")  # clear() fires no input event
    # filter by band and configuration
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "band")).select_by_visible_text("damaged")
    Select(browser.find_element("id", "config")).select_by_visible_text("rtn int2")
    want = active[(active["band"] == "damaged") & (active["config"] == "rtn int2")]
    assert count(browser) == len(want) > 0
    assert all(r["band"] == "damaged" and r["config"] == "rtn int2" for r in rows(browser))
    browser.find_element("id", "watched").click()
    watched = {w["feature"] for w in result.summary["watched"]["features"]}
    assert {int(r["f"]) for r in rows(browser)} <= watched
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert severe(browser) == []


def test_feature_view_shows_contexts_with_both_shadings_and_r(browser, small, tmp_path):
    path, result, contexts = small
    open_page(browser, path)
    row = browser.find_element("css selector", "#rows tr")
    hook_idx, feature = int(row.get_attribute("data-h")), int(row.get_attribute("data-f"))
    row.click()
    title = browser.find_element("id", "ftitle").text
    assert f"Feature {feature}" in title
    # r across every configuration, as stored
    feats = result.features
    for tr in browser.find_elements("css selector", "#rtable tr[data-c]"):
        config = tr.find_element("css selector", "td").text
        want = float(feats[(feats["feature"] == feature) & (feats["config"] == config)]["r"].iloc[0])
        assert float(tr.find_element("css selector", ".rval").text) == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert len(browser.find_elements("css selector", "#rtable tr[data-c]")) == 2
    # contexts: FP strips and compressed strips, shaded, with the activating token marked
    boxes = browser.find_elements("css selector", "#fpctx .ctx")
    fp_rows = contexts[(contexts["feature"] == feature) & (contexts["kind"] == "fp_top")
                       & (contexts["config"] == contexts["config"].iloc[0])]
    assert len(boxes) == min(len(fp_rows), 8) > 0
    fp_shaded = browser.find_elements("css selector", "#fpctx .strip.fp .tok[style*=background]")
    assert len(fp_shaded) >= len(boxes)  # every FP top context shades at least its activating token
    assert browser.find_elements("css selector", "#fpctx .strip.comp")
    comp_any = browser.find_elements("css selector", ".strip.comp .tok[style*=background]")
    assert comp_any, "no compressed shading anywhere"
    tgt = browser.find_element("css selector", "#fpctx .strip.fp .tok.tgt").text
    top = fp_rows.sort_values("rank").iloc[0]
    assert tgt.strip() == str(top["window_tokens"][top["target"]]).replace("\n", "↵").strip()
    assert f"FP {float(top['fp_act']):.4g}"[:7] in boxes[0].text
    link = browser.find_element("id", "neuronpedia").get_attribute("href")
    assert link == f"https://neuronpedia.org/tiny-model/1-res-test/{feature}"
    # switch the compressed shading to the other configuration
    browser.find_element("css selector", ".cfgs button[data-c='0']").click()
    assert "rtn int4" in browser.find_element("id", "feature").text
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert severe(browser) == []
    assert hook_idx == 0


def test_scatter_hover_and_click(browser, small, tmp_path):
    path, _, _ = small
    open_page(browser, path)
    # find a drawn point by probing the canvas for a non-white, non-axis pixel colour
    xy = browser.execute_script("""
        var c = document.getElementById('scatter'), g = c.getContext('2d');
        var d = g.getImageData(0, 0, c.width, c.height).data;
        for (var y = 40; y < c.height - 100; y += 2) for (var x = 120; x < c.width - 40; x += 2) {
          var i = (y * c.width + x) * 4;
          if (d[i] == 46 && d[i + 1] == 139 && d[i + 2] == 87 || d[i] == 192 && d[i + 1] == 57) {
            var r = c.getBoundingClientRect(); return [x * r.width / c.width, y * r.height / c.height]; }
        }
        return null;""")
    assert xy, "no point drawn"
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "scatter")
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(canvas, int(xy[0] - size["width"] / 2),
                                                      int(xy[1] - size["height"] / 2)).perform()
    tip = browser.find_element("id", "tip")
    assert tip.is_displayed() and tip.text.startswith("feature ")
    feature = int(tip.text.split()[1])
    ActionChains(browser).click().perform()
    assert f"Feature {feature}" in browser.find_element("id", "ftitle").text
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert severe(browser) == []


# --------------------------------------------------------------------------- 16k features
def test_a_16k_feature_run_renders_under_10_mb(browser, tmp_path):
    from featsurv_plugins.explorer.page import build_explorer

    run, contexts = synthetic_run(d_sae=16384)
    t0 = time.time()
    page, facts = build_explorer(run, contexts)
    build_s = time.time() - t0
    path = tmp_path / "explorer.html"
    path.write_text(page, encoding="utf-8")
    assert facts["bytes"] == path.stat().st_size < 10 * 2**20
    assert facts["features"] == int(run.features[run.features["config"] == run.features["config"].iloc[0]]["active"].sum())
    assert 0 < facts["contexts_features"] <= facts["contexts_features_total"] == facts["features"]
    seconds = open_page(browser, path, timeout=120)
    assert count(browser) == 2 * facts["features"]
    assert browser.find_element("id", "pageinfo").text == f"page 1 of {-(-2 * facts['features'] // 25)}"
    browser.find_element("id", "next").click()
    assert browser.find_element("id", "pageinfo").text.startswith("page 2 of")
    browser.find_element("css selector", "#rows tr").click()  # among the most damaged: contexts embedded
    assert browser.find_elements("css selector", "#fpctx .strip.fp .tok[style*=background]")
    # the least damaged feature may have no embedded contexts; its view says so
    browser.find_element("css selector", "th[data-key=d]").click()
    browser.find_element("css selector", "#rows tr").click()
    text = browser.find_element("id", "feature").text
    assert ("not embedded" in text) == (facts["contexts_features"] < facts["contexts_features_total"]) or "#1" in text
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert severe(browser) == []
    print(f"16k page: {facts['bytes'] / 2**20:.1f} MiB, built in {build_s:.1f}s, ready in {seconds:.1f}s")
