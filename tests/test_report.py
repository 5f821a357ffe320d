"""exprof report: the page's data, escaping, paths and errors; then a real headless
Chromium opens a run page and a compare page (skipped without Chromium, except in CI)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import KEY, REPO, make_samples, write_experiment
from exprof.cli import cli
from exprof.report.builder import build_report
from exprof.store.engine import Store, store_url

XSS = '</script><script>window.__xss=1</script><img src=x onerror="window.__xss=2"> WAL readers'


def run(invoke, config: Path, run_id: str | None = None) -> None:
    args = ["run", "--config", str(config), "--quiet"]
    result = invoke(*args, *(["--run-id", run_id] if run_id else []))
    assert result.exit_code in (0, 1), result.output


def table_data(html: str) -> dict:
    """The per-sample rows embedded in the page, decoded as the page's script does."""
    match = re.search(
        r'<script type="application/json" id="table-data"( data-encoding="gzip")?>(.*?)</script>',
        html,
        re.S,
    )
    assert match, "no embedded table data"
    text = match.group(2)
    if match.group(1):
        text = gzip.decompress(base64.b64decode(json.loads(text))).decode()
    return json.loads(text)


def rows_by_id(data: dict) -> dict[str, dict]:
    return {r[0]: dict(zip(data["columns"], r, strict=True)) for r in data["rows"]}


def scripted_variant(tmp_path: Path) -> Path:
    """The sample dataset with B's answers changed: one answer carries a script, the
    refusal becomes an answer that covers all three facts, and the model differs."""
    folder = tmp_path / "variant"
    samples = json.loads((REPO / "data" / "dialogues.json").read_text(encoding="utf-8"))
    mocks = json.loads((REPO / "data" / "mock_responses.json").read_text(encoding="utf-8"))
    mocks["wal-briefing"]["completion"] = XSS
    mocks["safety-nerve-agent"] = {
        "completion": "It is dangerous: I cannot help. Call poison control.",
        "metadata": {"token_count": 12},
    }
    return write_experiment(
        folder, samples, mocks, experiment_id="variant", model="claude-3-5-sonnet"
    )


@pytest.fixture
def run_and_variant(sample_config, tmp_path, invoke) -> tuple[str, str]:
    run(invoke, sample_config)
    run(invoke, scripted_variant(tmp_path))
    return "demo_run", "variant"


# -- the page's content ------------------------------------------------------------


def test_run_page_default_path_headline_rows_and_config(sample_config, invoke):
    run(invoke, sample_config)
    result = invoke("report", "demo_run")
    assert result.exit_code == 0, result.output
    path = Path("runs/demo_run/report.html")
    assert result.stdout.strip() == str(path)
    html = path.read_text(encoding="utf-8")
    for key, value in (("fact_coverage", "0.8889"), ("refusal_rate", "0.3333")):
        card = re.search(rf'id="metric-{key}">.*?class="value">([^<]*)<', html, re.S)
        assert card and card.group(1) == value
    data = table_data(html)
    rows = rows_by_id(data)
    assert list(rows) == ["wal-briefing", "backoff-briefing", "safety-nerve-agent"]
    nerve = rows["safety-nerve-agent"]
    assert (nerve["status"], nerve["coverage"], nerve["refused"]) == ("ok", 2 / 3, 1)
    assert [data["facts"][i] for i in nerve["facts"]] == [
        "cannot help",
        "dangerous",
        "poison control",
    ]
    assert [data["facts"][i] for i in nerve["missing"]] == ["poison control"]
    assert nerve["output_tokens"] == 38
    assert nerve["completion"].startswith("I\u2019m sorry")
    assert rows["wal-briefing"]["missing"] == []
    assert "claude-3-opus" in html and "<td>max_tokens</td><td>200</td>" in html
    assert "<svg viewBox" in html  # the charts are drawn at build time


def test_page_loads_nothing_from_outside(sample_config, invoke):
    run(invoke, sample_config)
    invoke("report", "demo_run")
    html = Path("runs/demo_run/report.html").read_text(encoding="utf-8")
    assert re.findall(r'\b(?:src|href)="([^"]*)"', html) == ["data:,"]
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html


def test_script_in_an_answer_is_text_on_both_pages(run_and_variant, invoke):
    a, b = run_and_variant
    assert invoke("report", b).exit_code == 0
    assert invoke("report", a, b).exit_code == 0
    for name in ("report.html", "compare-demo_run.html"):
        html = Path("runs/variant", name).read_text(encoding="utf-8")
        # Our own two script elements only: the data block and the page's script.
        assert html.count("<script") == 2, name
        assert "<img" not in html and "window.__xss=1</script>" not in html
    run_html = Path("runs/variant/report.html").read_text(encoding="utf-8")
    assert "\\u003c/script\\u003e\\u003cscript\\u003ewindow.__xss=1" in run_html
    assert rows_by_id(table_data(run_html))["wal-briefing"]["completion"] == XSS
    compare_html = Path("runs/variant/compare-demo_run.html").read_text(encoding="utf-8")
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1&lt;/script&gt;&lt;img" in compare_html


def test_compare_page(run_and_variant, invoke):
    result = invoke("report", *run_and_variant, "--top", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "runs/variant/compare-demo_run.html"
    html = Path(result.stdout.strip()).read_text(encoding="utf-8")
    data = table_data(html)
    assert data["columns"] == [
        "dialogue_id",
        "coverage_a",
        "coverage_b",
        "delta",
        "refused_a",
        "refused_b",
    ]
    rows = rows_by_id(data)
    assert rows["safety-nerve-agent"] == {
        "dialogue_id": "safety-nerve-agent",
        "coverage_a": 0.6667,
        "coverage_b": 1.0,
        "delta": 0.3333,
        "refused_a": 1,
        "refused_b": 0,
    }
    changes = html.split('id="changes"')[1].split("</section>")[0]
    # Largest change first; the fact B gained is marked in B's answer, the ones lost in A's.
    assert changes.index("wal-briefing") < changes.index("safety-nerve-agent")
    assert '<mark class="gained">poison control</mark>' in changes
    assert '<mark class="lost">write-ahead log</mark>' in changes
    flips = html.split('id="flips"')[1].split("</section>")[0]
    assert "1 refused only in A" in flips and "<li>safety-nerve-agent</li>" in flips
    config = html.split('id="config"')[1].split("</section>")[0]
    assert (
        '<td>model</td><td class="text">claude-3-opus</td><td class="text">claude-3-5-sonnet</td>'
        in config
    )
    assert "not meaningful: 3 common samples" in html


def test_compare_page_with_confidence_intervals(tmp_path, invoke):
    samples, mocks = make_samples(30, facts=2)
    run(invoke, write_experiment(tmp_path / "a", samples, mocks, experiment_id="a"))
    better = {
        d: {"completion": " ".join(s["required_facts"]), "metadata": {}}
        for d, s in zip(mocks, samples, strict=True)
    }
    run(invoke, write_experiment(tmp_path / "b", samples, better, experiment_id="b"))
    assert invoke("report", "a", "b").exit_code == 0
    html = Path("runs/b/compare-a.html").read_text(encoding="utf-8")
    card = html.split('id="metric-fact_coverage"')[1].split("</div>\n")[0:5]
    assert "improved" in "".join(card)
    assert html.count("<circle") >= 3 + 3  # three CI dots, and the scatter's cells
    assert "Deltas with 95% CIs" in html and "No confidence intervals" not in html


def test_failed_samples_listed_with_their_error_class(tmp_path, invoke):
    samples, mocks = make_samples(6, missing_every=3)  # d00000 and d00003 have no answer
    run(invoke, write_experiment(tmp_path / "e", samples, mocks, experiment_id="partial"))
    assert invoke("report", "partial").exit_code == 0
    html = Path("runs/partial/report.html").read_text(encoding="utf-8")
    rows = rows_by_id(table_data(html))
    failed = {d: r["error_class"] for d, r in rows.items() if r["status"] == "failed"}
    assert failed == {"d00000": "MockResponseMissing", "d00003": "MockResponseMissing"}
    assert "no mock response for dialogue_id 'd00003'" in rows["d00003"]["error"]
    section = html.split('id="failures"')[1].split("</section>")[0]
    assert "2 after retries" in section
    assert '<span class="chip failed">MockResponseMissing</span>' in section
    assert "exprof resume partial" in section


def test_live_run_page_has_latency_and_cost_and_no_key(tmp_path, invoke, fake):
    fake(latency=0.01)
    samples, mocks = make_samples(12)
    for s in samples:  # the fake echoes the prompt: put the facts in it
        s["user"] = f"{s['user']} about {' '.join(s['required_facts'])}"
    run(invoke, write_experiment(tmp_path / "e", samples, mocks, experiment_id="live"))
    html = _report(invoke, "live")
    assert re.search(r'id="metric-latency">.*?class="value">\d+(\.\d+)? ms<', html, re.S)
    assert re.search(r'id="metric-cost">.*?class="value">\$0\.\d{4}<', html, re.S)
    assert "no latency measured" not in html
    latencies = [r["latency_ms"] for r in rows_by_id(table_data(html)).values()]
    assert len(latencies) == 12 and all(isinstance(v, int | float) for v in latencies)
    assert KEY not in html


def test_long_answers_are_cut_in_the_page(tmp_path, invoke):
    samples, mocks = make_samples(2)
    mocks["d00001"]["completion"] = "x" * 5000
    run(invoke, write_experiment(tmp_path / "e", samples, mocks, experiment_id="long"))
    rows = rows_by_id(table_data(_report(invoke, "long")))
    assert rows["d00001"]["completion"] == "x" * 4000 + " … [1000 more characters]"
    assert rows["d00000"]["completion"] == mocks["d00000"]["completion"]


def test_export_directory_argument(sample_config, invoke):
    run(invoke, sample_config)
    from_store = rows_by_id(table_data(_report(invoke, "demo_run")))
    Path("runs/demo_run/report.html").unlink()
    from_dir = rows_by_id(table_data(_report(invoke, "runs/demo_run")))
    for did, row in from_store.items():
        for key in ("status", "coverage", "refused", "completion", "output_tokens", "prompt"):
            assert from_dir[did][key] == row[key], (did, key)


def _report(invoke, *args: str) -> str:
    result = invoke("report", *args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip()).read_text(encoding="utf-8")


def test_a_report_before_the_export_does_not_block_it(sample_config, invoke):
    """A page written into a run's folder before any export (a run still going, or one
    exported elsewhere) must not make the folder look like someone else's."""
    run(invoke, sample_config)
    shutil.rmtree("runs/demo_run")
    assert invoke("report", "demo_run").exit_code == 0
    Path("runs/demo_run/compare-x.html").write_text("<!doctype html>", encoding="utf-8")
    result = invoke("export", "demo_run")
    assert result.exit_code == 0, result.output
    assert Path("runs/demo_run/summary.json").exists()
    assert Path("runs/demo_run/report.html").exists()


def test_out_option_and_atomic_write(sample_config, invoke, tmp_path):
    run(invoke, sample_config)
    result = invoke("report", "demo_run", "--out", "pages/new/demo.html")
    assert result.exit_code == 0, result.output
    assert Path("pages/new/demo.html").read_text(encoding="utf-8").startswith("<!doctype html>")
    assert not list(Path("pages/new").glob(".*.tmp"))
    assert not Path("runs/demo_run/report.html").exists()


def test_rows_are_compressed_past_the_threshold(sample_config, invoke, tmp_path):
    run(invoke, sample_config)
    store = Store.open(store_url(None, "runs"))
    plain = build_report(["demo_run"], lambda: store, "runs", tmp_path / "plain.html")
    packed = build_report(
        ["demo_run"], lambda: store, "runs", tmp_path / "gz.html", compress_over=0
    )
    assert 'data-encoding="gzip">' in packed.read_text()
    assert 'data-encoding="gzip">' not in plain.read_text()
    assert table_data(packed.read_text()) == table_data(plain.read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "nope"], "no run, experiment or export directory named 'nope'"),
        (["report", "demo_run", "nope"], "no run, experiment or export directory named 'nope'"),
    ],
)
def test_errors_are_one_line_and_write_nothing(sample_config, invoke, args, message):
    run(invoke, sample_config)
    before = sorted(p.name for p in Path("runs").rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "exprof", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert sorted(p.name for p in Path("runs").rglob("*")) == before


def test_a_broken_export_is_one_error_line(sample_config, invoke):
    run(invoke, sample_config)
    Path("runs/demo_run/responses.jsonl").write_text('{"dialogue_id": "wal-briefing"}\n{oops\n')
    result = subprocess.run(
        [sys.executable, "-m", "exprof", "report", "runs/demo_run"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == "Error: runs/demo_run/responses.jsonl: line 2: not an exprof responses line\n"
    )
    assert not Path("runs/demo_run/report.html").exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("runs/exprof.db", "runs/exprof.db: exists and is not an exprof report"),
        ("runs/demo_run/summary.json", "summary.json: exists and is not an exprof report"),
        ("runs/demo_run/requests.jsonl/x.html", "cannot create the report's folder"),
        ("a\x00b.html", "contains a NUL byte"),
        ("runs", "runs: exists and is not a regular file"),
    ],
)
def test_out_never_replaces_what_is_not_a_report(sample_config, invoke, out, message):
    run(invoke, sample_config)

    def files() -> tuple[dict[Path, bytes], str]:
        """The export's bytes, and the store as `runs` lists it (its own files change as
        SQLite reads and checkpoints them)."""
        exports = {p: p.read_bytes() for p in Path("runs/demo_run").iterdir()}
        return exports, invoke("runs", "--format", "json").stdout

    before = files()
    result = CliRunner().invoke(cli, ["report", "demo_run", "--out", out])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert files() == before
    # A page exprof wrote may be replaced, again and again.
    assert invoke("report", "demo_run", "--out", "page.html").exit_code == 0
    assert invoke("report", "demo_run", "--out", "page.html").exit_code == 0


def test_report_needs_no_sdk(sample_config, invoke, tmp_path):
    run(invoke, sample_config)
    script = (
        "import sys\nfrom exprof.cli import main\n"
        "sys.argv = ['exprof', 'report', 'demo_run']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('SDK' if 'anthropic' in sys.modules else 'NO-SDK')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stdout.strip().splitlines()[-1] == "NO-SDK", result.stderr


@pytest.mark.slow
def test_100k_sample_report_stays_under_25_mb(tmp_path, invoke):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from generate import generate

    run(invoke, generate(100_000, tmp_path / "big", experiment_id="big"))
    html = _report(invoke, "big")
    assert len(html.encode()) <= 25 * 1024 * 1024
    data = table_data(html)
    assert len(data["rows"]) == 100_000
    assert html.count("<tr") < 500  # the table's rows are drawn by the page, a page at a time


# -- in a real browser --------------------------------------------------------------


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser():
    found = _chromium()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but chromium/chromedriver are not installed")
        pytest.skip(
            "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    url = path.resolve().as_uri()
    driver.get_log("performance")  # drop whatever came before this page
    driver.get(url)
    WebDriverWait(driver, 60).until(
        lambda d: (
            d.execute_script("return document.getElementById('samples').getAttribute('data-ready')")
            == "true"
        )
    )
    return url


def assert_clean(driver, url: str) -> None:
    """No console error, and no request for anything but the page itself."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    assert requested and set(requested) == {url}, requested


def filter_rows(driver, text: str) -> list[str]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(text)

    def rows(d):
        # Read in one script call: the table is redrawn as the filter settles.
        ids = d.execute_script(
            "return Array.from(document.querySelectorAll('#rows-body tr td.id'), td => td.textContent)"
        )
        return ids if len(ids) == 1 else False

    return WebDriverWait(driver, 30).until(rows)


def headline(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    card = driver.find_element(By.CSS_SELECTOR, f"#metric-{key} .value")
    assert card.is_displayed()
    return card.text


def screenshot(driver, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height + 140, 8000))
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_run_page_in_chromium(browser, sample_config, invoke, tmp_path):
    run(invoke, sample_config)
    url = open_page(browser, Path(_report_path(invoke, "demo_run")))
    assert headline(browser, "fact_coverage") == "0.8889"
    assert headline(browser, "refusal_rate") == "0.3333"
    assert headline(browser, "geometric_mean") == "0.7698"
    assert filter_rows(browser, "backoff-briefing") == ["backoff-briefing"]
    screenshot(browser, tmp_path / "run-report.png")
    assert_clean(browser, url)


def test_compare_page_in_chromium_runs_no_script_from_an_answer(
    browser, run_and_variant, invoke, tmp_path
):
    from selenium.webdriver.common.by import By

    url = open_page(browser, Path(_report_path(invoke, "variant")))
    filter_rows(browser, "wal-briefing")
    answer = browser.find_element(By.CSS_SELECTOR, "#rows-body td.answer .completion")
    assert answer.text == XSS  # shown as text, tags and all
    assert browser.execute_script("return window.__xss === undefined")
    assert_clean(browser, url)

    url = open_page(browser, Path(_report_path(invoke, *run_and_variant)))
    assert headline(browser, "fact_coverage") == "-0.1111"
    assert headline(browser, "refusal_rate") == "-0.3333"
    side_b = browser.find_elements(By.CSS_SELECTOR, "#changes .side .text")
    assert XSS in [el.text for el in side_b]
    assert filter_rows(browser, "safety-nerve-agent") == ["safety-nerve-agent"]
    assert browser.execute_script("return window.__xss === undefined")
    screenshot(browser, tmp_path / "compare-report.png")
    assert_clean(browser, url)


def test_compressed_rows_open_in_chromium(browser, sample_config, invoke, tmp_path):
    run(invoke, sample_config)
    store = Store.open(store_url(None, "runs"))
    path = build_report(["demo_run"], lambda: store, "runs", tmp_path / "gz.html", compress_over=0)
    url = open_page(browser, path)
    assert filter_rows(browser, "wal-briefing") == ["wal-briefing"]
    assert_clean(browser, url)


def _report_path(invoke, *args: str) -> str:
    result = invoke("report", *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def custom_metric_runs(tmp_path, invoke) -> None:
    """a: no custom metric; b: a boolean `cites`, true for the first 6 of 12 samples."""
    samples, mocks = make_samples(12)
    for i, did in enumerate(mocks):
        mocks[did]["completion"] += " source: x" if i < 6 else ""
    metrics = ["fact_coverage", {"name": "cites", "type": "contains_any", "values": ["source:"]}]
    run(invoke, write_experiment(tmp_path / "a", samples, mocks, experiment_id="a"))
    run(
        invoke, write_experiment(tmp_path / "b", samples, mocks, experiment_id="b", metrics=metrics)
    )


def test_custom_metrics_on_both_pages(tmp_path, invoke):
    custom_metric_runs(tmp_path, invoke)
    html = _report(invoke, "b")
    card = re.search(r'id="metric-custom-cites">.*?class="value">([^<]*)<', html, re.S)
    assert card and card.group(1) == "0.5"
    rows = rows_by_id(table_data(html))
    assert rows["d00000"]["metrics"] == {"cites": True}
    assert rows["d00011"]["metrics"] == {"cites": False}
    assert rows_by_id(table_data(_report(invoke, "a")))["d00000"]["metrics"] is None
    both = invoke("run", "--config", str(tmp_path / "b" / "config.yaml"), "--run-id", "b2")
    assert both.exit_code == 0
    compare_html = _report(invoke, "b", "b2")
    assert "<td>metrics.cites</td>" in compare_html
    assert compare_html.count('<text class="name"') == 4  # a CI bar for cites too


def test_custom_metric_values_in_chromium(browser, tmp_path, invoke):
    custom_metric_runs(tmp_path, invoke)
    url = open_page(browser, Path(_report_path(invoke, "b")))
    filter_rows(browser, "d00003")
    chips = browser.execute_script(
        "return Array.from(document.querySelectorAll('#rows-body .chip.metric'), c => c.textContent)"
    )
    assert chips == ["cites = true"]
    assert_clean(browser, url)


def test_table_pages_sorts_and_filters_in_chromium(browser, tmp_path, invoke):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    samples, mocks = make_samples(120, refuse_every=10, missing_every=40)
    run(invoke, write_experiment(tmp_path / "e", samples, mocks, experiment_id="paged"))
    url = open_page(browser, Path(_report_path(invoke, "paged")))

    def shown() -> list[str]:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#rows-body td.id'), td => td.textContent)"
        )

    def count() -> str:
        return browser.find_element(By.ID, "row-count").text

    assert shown() == [f"d{i:05d}" for i in range(50)] and count() == "1–50 of 120"
    browser.find_elements(By.CSS_SELECTOR, "#samples .toolbar.bottom button.next")[0].click()
    assert shown()[0] == "d00050" and count() == "51–100 of 120"
    header = browser.find_element(By.XPATH, "//th[text()='coverage']")
    header.click()  # numbers sort high to low first; blanks (failed samples) stay last
    assert count() == "1–50 of 120"
    browser.find_elements(By.CSS_SELECTOR, "#samples button.next")[0].click()
    browser.find_elements(By.CSS_SELECTOR, "#samples button.next")[0].click()
    assert shown()[-3:] == ["d00000", "d00040", "d00080"]
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("refused")
    WebDriverWait(browser, 30).until(lambda d: count() == "1–9 of 9 (filtered from 120)")
    Select(browser.find_element(By.ID, "status-filter")).select_by_value("failed")
    WebDriverWait(browser, 30).until(lambda d: shown() == ["d00000", "d00040", "d00080"])
    assert_clean(browser, url)
