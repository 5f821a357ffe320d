"""exprof report EXPERIMENT_ID: the heatmap of cells by metric, the
cells against a baseline as `compare --baseline` computes them, escaping, paths and
errors; then a real headless Chromium opens the page."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import XSS, assert_clean, browser, headline, screenshot  # noqa: F401

from conftest import KEY, make_samples, write_experiment
from exprof.report.charts import heat_classes

METRIC = {"name": "long_answer", "type": "length", "min": 12}


class Heatmap(HTMLParser):
    """The heatmap table as rows of (class, text) per td, keyed by the row's id."""

    def __init__(self) -> None:
        super().__init__()
        self.head: list[str] = []
        self.rows: dict[str, list[tuple[str, str]]] = {}
        self._in, self._row, self._cell = False, None, None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and "heat" in (a.get("class") or ""):
            self._in = True
        elif self._in and tag == "tr" and a.get("id"):
            self._row = a["id"].removeprefix("cell-")
            self.rows[self._row] = []
        elif self._in and tag in ("td", "th"):
            self._cell = [a.get("class") or "", ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in = False
        elif self._in and tag in ("td", "th") and self._cell is not None:
            cls, text = self._cell
            if tag == "th":
                self.head.append(text.strip())
            else:
                self.rows[self._row].append((cls, text.strip()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1] += data


def heatmap(html: str) -> tuple[list[str], dict[str, dict[str, tuple[str, str]]]]:
    parser = Heatmap()
    parser.feed(html)
    return parser.head, {
        row: dict(zip(parser.head, cells, strict=True)) for row, cells in parser.rows.items()
    }


def experiment(tmp_path: Path, invoke, n: int = 30, **config) -> None:
    samples, mocks = make_samples(n, refuse_every=5)
    settings = {"matrix": {"model": ["claude-3-opus", "claude-3-haiku"]}, **config}
    path = write_experiment(tmp_path / "e", samples, mocks, **settings)
    result = invoke("run", "--config", str(path), "--quiet")
    assert result.exit_code == 0, result.output


def report(invoke, *args: str) -> tuple[Path, str]:
    result = invoke("report", *args)
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    return path, path.read_text(encoding="utf-8")


def section(html: str, name: str) -> str:
    return html.split(f'<section id="{name}">')[1].split("</section>")[0]


# -- the page's content ------------------------------------------------------------


def test_heatmap_shows_every_cell_its_parameters_and_what_summarize_prints(tmp_path, invoke):
    experiment(tmp_path, invoke, repeats=2, metrics=[METRIC])
    path, html = report(invoke, "exp")
    assert path == Path("runs/exp/report.html")  # beside the cells' runs/<run id>/ folders
    head, rows = heatmap(html)
    assert head == [
        "cell",
        "model",
        "temperature",
        "max_tokens",
        "system",
        "fact coverage",
        "refusal rate",
        "geometric mean",
        "long_answer",
        "pass@k",
        "pass^k",
        "refusal flips",
        "cost",
        "latency p50 (ms)",
    ]
    summary = json.loads(invoke("summarize", "exp", "--format", "json").stdout)
    assert list(rows) == [c["cell"] for c in summary["cells"]]
    for cell in summary["cells"]:
        row = rows[cell["cell"]]
        assert row["model"][1] == cell["params"]["model"]
        assert (row["temperature"][1], row["max_tokens"][1], row["system"][1]) == (
            "0.5",
            "100",
            "–",
        )
        assert row["fact coverage"][1] == str(cell["fact_coverage"])
        assert row["refusal rate"][1] == str(cell["refusal_rate"])
        assert row["pass@k"][1] == str(cell["pass_at_k"])
        assert row["refusal flips"][1] == str(cell["refusal_flips"]) == "0"
        assert row["long_answer"][1] == str(cell["metrics"]["long_answer"])
        # every cell answered alike (the mock): each column is one colour
        assert row["fact coverage"][0] == "num heat-same"
        assert row["cost"] == ("num heat-none", "–")  # the mock costs nothing
    assert "k = 2 repeats" in section(html, "heatmap")


def test_colour_is_scaled_within_each_column_and_by_direction():
    assert heat_classes([0.2, 0.5, 0.8], higher_is_better=True) == ["heat-0", "heat-4", "heat-8"]
    assert heat_classes([0.2, 0.5, 0.8], higher_is_better=False) == ["heat-8", "heat-4", "heat-0"]
    assert heat_classes([3.0, None, 3.0], True) == ["heat-same", "heat-none", "heat-same"]
    assert heat_classes([None], True) == ["heat-none"]


def test_cells_against_the_baseline_are_compare_baselines_numbers(tmp_path, invoke):
    experiment(
        tmp_path,
        invoke,
        n=40,
        matrix={"model": ["claude-3-opus", "claude-3-haiku", "claude-3-5-haiku"]},
    )
    _, html = report(invoke, "exp")
    found = json.loads(
        invoke("compare", "exp", "--baseline", "model-claude-3-opus", "--format", "json").stdout
    )
    part = section(html, "baseline")
    assert "Against the baseline <b>model-claude-3-opus</b>" in part  # the first cell
    for cell in found["cells"]:
        row = part.split(f'<tr id="vs-{cell["cell"]}">')[1].split("</tr>")[0]
        cells = [c.split(">", 1)[1] for c in row.split("</td>")[:-1]]
        text = [c.split(">")[-1] if "<" in c else c for c in cells]
        assert text[1] == str(cell["samples"])
        assert text[5] == str(cell["fact_coverage_p_holm"])
        assert text[8] == str(cell["refusal_mcnemar_p_holm"])
        assert cell["verdict"] in row
    # one CI chart per metric, a bar per compared cell, around zero
    for metric in ("fact_coverage", "refusal_rate", "geometric_mean"):
        chart = part.split(f'id="ci-{metric}"')[1].split("</svg>")[0]
        assert chart.count("<circle") == 2
    # --baseline picks another cell; it is then left out of the comparisons
    _, html = report(invoke, "exp", "--baseline", "model-claude-3-haiku")
    part = section(html, "baseline")
    assert 'id="vs-model-claude-3-opus"' in part and 'id="vs-model-claude-3-haiku"' not in part


def test_live_cells_colour_cost_and_link_their_run_pages(tmp_path, invoke, fake):
    fake(latency=0.01)
    experiment(tmp_path, invoke, n=12)
    report(invoke, "exp.model-claude-3-haiku")  # one cell's run page, written first
    _, html = report(invoke, "exp")
    _, rows = heatmap(html)
    opus, haiku = rows["model-claude-3-opus"], rows["model-claude-3-haiku"]
    # the same answers at a 60th of the price: the cheaper cell is its column's best
    assert (opus["cost"][0], haiku["cost"][0]) == ("num heat-0", "num heat-8")
    assert opus["cost"][1].startswith("$") and haiku["latency p50 (ms)"][1] != "–"
    cells = section(html, "cells")
    assert '<a href="../exp.model-claude-3-haiku/report.html">' in cells
    assert "<code>exprof report exp.model-claude-3-opus</code>" in cells
    assert KEY not in html


def test_out_elsewhere_links_the_run_pages_from_there(tmp_path, invoke):
    experiment(tmp_path, invoke, n=3)
    report(invoke, "exp.model-claude-3-opus")
    path, html = report(invoke, "exp", "--out", "pages/deep/exp.html")
    assert path == Path("pages/deep/exp.html")
    link = "../../runs/exp.model-claude-3-opus/report.html"
    assert f'<a href="{link}">' in section(html, "cells")
    assert (path.parent / link).is_file()


def test_a_stopped_experiment_shows_its_cells_not_started(tmp_path, invoke, fake):
    fake(latency=0.0)
    samples, mocks = make_samples(10)
    matrix = {"model": ["claude-3-opus", "claude-3-haiku"], "temperature": [0.0, 0.5, 1.0]}
    # Ten claude-3-opus answers from the fake cost $0.003: the budget ends in cell 2.
    config = write_experiment(
        tmp_path / "e", samples, mocks, matrix=matrix, concurrency=1, budget_usd=0.0045
    )
    assert invoke("run", "--config", str(config), "--yes", "--quiet").exit_code == 1
    _, html = report(invoke, "exp")
    _, rows = heatmap(html)
    statuses = [r["cell"][1].removeprefix(name).strip() for name, r in rows.items()]
    assert statuses == ["", "incomplete"] + ["not started"] * 4
    last = rows["model-claude-3-haiku.t-1.0"]
    assert last["fact coverage"] == ("num heat-none", "–") and last["temperature"][1] == "1.0"
    part = section(html, "baseline")
    assert "<b>model-claude-3-opus.t-0.0</b>" in part
    # cell 2 shares fewer than 10 samples with the baseline: no interval, and why
    assert 'id="vs-model-claude-3-opus.t-0.5"' in part
    chart = part.split('id="ci-fact_coverage"')[1].split('id="ci-refusal_rate"')[0]
    assert re.search(
        r"No confidence intervals: not meaningful: \d common samples \(&lt; 10\)", chart
    )
    bad = invoke("report", "exp", "--baseline", "model-claude-3-haiku.t-1.0")
    assert bad.exit_code == 2
    assert (
        bad.stderr == "Error: --baseline: cell 'model-claude-3-haiku.t-1.0' has not started yet\n"
    )


def test_every_value_is_escaped(tmp_path, invoke):
    system = {"plain": "Be brief.", "evil": XSS}
    experiment(tmp_path, invoke, n=3, matrix={"model": [XSS, "claude-3-opus"], "system": system})
    _, html = report(invoke, "exp")
    assert "<script>window.__xss" not in html and "<img" not in html
    assert "&lt;/script&gt;&lt;script&gt;window.__xss=1" in html  # shown, as text
    _, rows = heatmap(html)
    evil = next(r for name, r in rows.items() if name.endswith("sys-evil"))
    assert evil["system"][1] == "evil"  # the short name; the text is its tooltip, escaped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exp", "--baseline", "nope"], "--baseline: no cell 'nope' in exp (cells: model-"),
        (["exp.model-claude-3-opus", "--baseline", "x"], "--baseline: give a matrix experiment"),
    ],
)
def test_errors_are_one_line_and_write_nothing(tmp_path, invoke, args, message):
    experiment(tmp_path, invoke, n=3)
    before = sorted(Path("runs").rglob("*"))
    result = invoke("report", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1
    assert sorted(Path("runs").rglob("*")) == before


def test_experiment_page_needs_no_sdk(tmp_path, invoke):
    experiment(tmp_path, invoke, n=3)
    script = (
        "import sys\nfrom exprof.cli import main\n"
        "sys.argv = ['exprof', 'report', 'exp']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('SDK' if 'anthropic' in sys.modules else 'NO-SDK')"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip().splitlines() == ["runs/exp/report.html", "NO-SDK"], result.stderr


def test_a_plain_experiment_id_is_still_its_latest_run(sample_config, invoke):
    assert invoke("run", "--config", str(sample_config), "--quiet").exit_code == 0
    _, html = report(invoke, "demo_run")
    assert 'id="samples"' in html and 'class="heat"' not in html


# -- in a real browser -------------------------------------------------------------


def test_experiment_page_in_chromium(browser, tmp_path, invoke):  # noqa: F811
    from selenium.webdriver.common.by import By

    system = {"plain": "Be brief.", "evil": XSS}
    experiment(tmp_path, invoke, n=12, repeats=2, matrix={"model": [XSS, "b"], "system": system})
    path, _ = report(invoke, "exp")
    url = path.resolve().as_uri()
    browser.get_log("performance")
    browser.get(url)
    assert headline(browser, "cells") == "4"
    table = browser.find_element(By.CSS_SELECTOR, "#heatmap table.heat")
    assert table.is_displayed()
    models = [
        td.text
        for td in browser.find_elements(By.CSS_SELECTOR, "table.heat tbody tr td:nth-child(2)")
    ]
    assert models == [XSS, XSS, "b", "b"]  # the tag shown as text
    assert browser.execute_script("return window.__xss === undefined")
    # the stylesheet's colours apply under the page's CSP (no inline style needed)
    same = browser.find_element(By.CSS_SELECTOR, "td.heat-same")
    assert same.value_of_css_property("background-color") == "rgba(238, 240, 244, 1)"
    assert browser.find_elements(By.CSS_SELECTOR, "#ci-fact_coverage svg circle")
    screenshot(browser, tmp_path / "experiment-report.png")
    assert_clean(browser, url)
