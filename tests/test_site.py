"""``mrcnn-bench publish``: the static site of the committed baselines, opened in headless Chromium (Debian's
package, driven by Selenium): no console error, every page's tables and charts there, every link resolving;
a record that cannot be read is listed, not fatal; a second publish rewrites only what changed."""

import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import ROOT, run_cli

BASELINES = ROOT / "results" / "baselines"


def _results(tmp_path) -> Path:
    """Four scenarios of the committed baselines (cpu_small's rounds as shipped and each at its best, two
    scenarios), and a record that cannot be read."""
    results = tmp_path / "results"
    for name in ("cpu_small", "infer-cpu", "phases-cpu_small"):
        shutil.copytree(BASELINES / name, results / name)
    broken = results / "broken" / "reference"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text('{"schema_version": 1, "impl": "reference", ')
    return results


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    driver = shutil.which("chromedriver")
    if not (shutil.which("chromium") and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make browser)")
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        "--window-size=1300,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.mark.e2e
def test_the_site_opens_in_a_browser_with_its_tables_charts_and_links(tmp_path):
    from selenium.webdriver.common.by import By

    results, site = _results(tmp_path), tmp_path / "site"
    out = run_cli("publish", results, "--out", site)
    assert out.returncode == 0, out.stderr
    assert "4 scenario(s); pages written 5, unchanged 0" in out.stdout and "skipped " in out.stdout
    pages = sorted(site.glob("*.html"))
    assert [p.name for p in pages] == [
        "cpu-infer-1-cpu-fp32-infer.html",
        "cpu-small-1-cpu-fp32-train-each-at-its-best.html",
        "cpu-small-1-cpu-fp32-train-with-phases-timed.html",
        "cpu-small-1-cpu-fp32-train.html",
        "index.html",
    ]
    index = (site / "index.html").read_text()  # each at its best first, then as shipped
    assert index.index("cpu-small-1-cpu-fp32-train-each-at-its-best.html") < index.index(
        "'cpu-small-1-cpu-fp32-train.html'"
    )
    browser = _browser()
    try:
        for page in pages:
            browser.get(page.as_uri())
            for _ in range(50):  # vega-embed draws after the page has loaded
                charts = browser.find_elements(By.CSS_SELECTOR, ".chart")
                if all(c.find_elements(By.CSS_SELECTOR, "svg, canvas") for c in charts):
                    break
                time.sleep(0.1)
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], (page.name, errors)
            assert browser.find_elements(By.TAG_NAME, "table"), page.name
            for chart in browser.find_elements(By.CSS_SELECTOR, ".chart"):
                assert chart.find_elements(By.CSS_SELECTOR, "svg, canvas"), (
                    page.name,
                    chart.get_attribute("id"),
                )
            for link in browser.find_elements(By.TAG_NAME, "a"):
                href = urlparse(link.get_attribute("href"))
                assert href.scheme == "file" and Path(unquote(href.path)).is_file(), (
                    page.name,
                    link.get_attribute("href"),
                )
            if page.name == "cpu-small-1-cpu-fp32-train.html":
                # the history over the baselines' commits: absolute and relative to torchvision, each a chart
                assert len(browser.find_elements(By.CSS_SELECTOR, ".chart")) == 2
                assert "reference" in browser.find_element(By.TAG_NAME, "body").text
            if page.name == "index.html":
                body = browser.find_element(By.TAG_NAME, "body").text
                assert "Records not read" in body and "broken/reference/run.json" in body
                browser.save_screenshot(str(tmp_path / "index.png"))
    finally:
        browser.quit()
    assert (tmp_path / "index.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_publish_rewrites_only_what_changed(tmp_path):
    from mrcnn_bench.harness.report.site import publish

    results, site = _results(tmp_path), tmp_path / "site"
    first = publish(results, site)
    assert len(first.written) == 5 and first.copied > 20
    again = publish(results, site)
    assert again.written == [] and len(again.kept) == 5 and again.copied == 0
    # a new round of one scenario: its page and the index change, the other pages stay
    shutil.copytree(results / "cpu_small" / "r2-shipped", results / "cpu_small-new")
    record = json.loads((results / "cpu_small-new" / "reference" / "run.json").read_text())
    (results / "cpu_small-new" / "reference" / "run.json").write_text(json.dumps(record))
    third = publish(results, site)
    assert sorted(third.written) == ["cpu-small-1-cpu-fp32-train.html", "index.html"], third.written
    assert (site / "runs" / "cpu_small-new" / "reference" / "run.json").is_file()


@pytest.mark.e2e
def test_a_folder_without_runs_still_gets_a_site_that_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    out = run_cli("publish", tmp_path / "empty", "--out", tmp_path / "site")
    assert out.returncode == 0 and "0 scenario(s)" in out.stdout, out.stdout + out.stderr
    assert "no runs found" in (tmp_path / "site" / "index.html").read_text()


def test_the_index_shows_the_newest_round_in_full_and_the_rounds_of_its_commit(tmp_path):
    """Per scenario: every implementation of the newest round (a failed one with its status and reason),
    the median and spread of the rounds measured on the newest round's commit, and a chart of each
    implementation's img/s over the fastest other's in the same round."""
    from mrcnn_bench.harness.report.site import publish

    results = tmp_path / "results"
    shutil.copytree(BASELINES / "cpu_small", results / "cpu_small", ignore=shutil.ignore_patterns("plots"))
    newest = max(
        results.glob("cpu_small/r*-shipped"),
        key=lambda r: json.loads((r / "reference" / "run.json").read_text())["environment"]["time"],
    )
    path = newest / "mmdet" / "run.json"
    record = json.loads(path.read_text())
    record.update(status="failed", reason="RuntimeError: mmcv._ext is missing (a broken install)")
    path.write_text(json.dumps(record))
    publish(results, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    shipped = index[index.index("'cpu-small-1-cpu-fp32-train.html'") :]
    assert "<td>mmdet</td><td class='bad'>failed</td>" in shipped
    assert "RuntimeError: mmcv._ext is missing (a broken install)" in shipped
    # three rounds of one commit in each mode: the median and spread, mmdet over its two ok rounds
    assert "The 3 rounds of commit <code>305264a0c814</code>: median and spread" in shipped
    cells = re.sub(r"<td[^>]*>", "<td>", shipped)
    assert "<td>fastest other (per run)</td>" in cells and "<td>mmdet</td>\n<td>2</td>" in cells
    spec = index[index.index("vegaEmbed('#relative-cpu-small-1-cpu-fp32-train',") :].split(", {actions")[0]
    values = json.loads(spec.split(",", 1)[1])["data"]["values"]
    assert len([v for v in values if v["impl"] == "reference"]) == 3 and len(values) == 3 * 4 - 1
    assert all(v["ratio"] > 1.4 for v in values if v["impl"] == "reference")  # 1.57x to 1.61x committed
