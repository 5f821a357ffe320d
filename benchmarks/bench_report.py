"""Time `exprof report` on a 100k-sample mock run and a compare of two, and size the pages.

    python benchmarks/bench_report.py --samples 100000 [--browser]

    python benchmarks/bench_report.py --experiment [--samples 2000 --repeats 5]

Target (issue #12): a 100k-sample run's page <= 25 MB. With --browser (and chromium
plus chromedriver installed), headless Chromium also opens the run page and the time
until its table is ready, and one search over every sample, are measured. With
--experiment, the experiment page of bench_experiment's matrix (6 cells x 5 repeats x
2,000 mock samples) is built instead: wall and CPU seconds, peak RSS, page size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_experiment import MATRIX  # noqa: E402
from bench_run import machine, timed  # noqa: E402
from generate import generate  # noqa: E402

LIMIT_MB = 25


def browser_figures(page: Path, query: str) -> dict[str, float]:
    """Seconds to a ready table, and to filter every sample down to one row."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        start = time.perf_counter()
        driver.get(page.resolve().as_uri())
        WebDriverWait(driver, 300).until(
            lambda d: (
                d.execute_script(
                    "return document.getElementById('samples').getAttribute('data-ready')"
                )
                == "true"
            )
        )
        ready = time.perf_counter() - start
        rows = driver.execute_script("return document.querySelectorAll('#rows-body tr').length")
        box = driver.find_element(By.ID, "filter")
        start = time.perf_counter()
        box.send_keys(query)
        WebDriverWait(driver, 300).until(
            lambda d: (
                d.execute_script("return document.querySelectorAll('#rows-body tr').length") == 1
            )
        )
        search = time.perf_counter() - start  # includes the 120 ms typing debounce
        return {"open_to_ready_s": round(ready, 2), "dom_rows": rows, "search_s": round(search, 2)}
    finally:
        driver.quit()


def cpu_timed(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MB) of one exprof command:
    on a shared machine the CPU time is the figure that does not move with the load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, rss, _ = timed(argv, cwd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rss


def experiment_figures(samples: int, repeats: int, work: Path) -> dict[str, object]:
    """The experiment page of bench_experiment's matrix: build time and page size."""
    config = generate(samples, work / "data", experiment_id="mx")
    config.write_text(config.read_text() + f"repeats: {repeats}\n" + MATRIX)
    timed(["run", "--config", str(config), "--quiet"], work)
    wall, cpu, rss = min(cpu_timed(["report", "mx"], work) for _ in range(3))
    page = work / "runs" / "mx" / "report.html"
    return {
        "machine": machine(),
        "cells": 6,
        "repeats": repeats,
        "samples": samples,
        "requests": 6 * samples * repeats,
        "experiment_report_build_s": round(wall, 2),
        "experiment_report_cpu_s": round(cpu, 2),
        "experiment_report_peak_rss_mb": round(rss, 1),
        "experiment_report_kb": round(page.stat().st_size / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="--experiment: repeats per cell")
    parser.add_argument("--browser", action="store_true", help="also open the page in Chromium")
    parser.add_argument(
        "--experiment", action="store_true", help="time the experiment page instead"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exprof-report-bench-"))
    if args.experiment:
        try:
            found = experiment_figures(args.samples or 2000, args.repeats, work)
            print(json.dumps(found, indent=2))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    args.samples = args.samples or 100_000
    try:
        a = generate(args.samples, work / "a", seed=1, experiment_id="a")
        b = generate(args.samples, work / "b", seed=2, experiment_id="b")
        timed(["run", "--config", str(a), "--quiet"], work)
        timed(["run", "--config", str(b), "--quiet"], work)
        run_wall, run_rss, _ = min(timed(["report", "a"], work) for _ in range(3))
        cmp_wall, cmp_rss, _ = min(timed(["report", "a", "b"], work) for _ in range(3))
        page = work / "runs" / "a" / "report.html"
        run_mb = page.stat().st_size / 2**20
        cmp_mb = (work / "runs" / "b" / "compare-a.html").stat().st_size / 2**20
        result = {
            "machine": machine(),
            "samples": args.samples,
            "run_report_build_s": round(run_wall, 2),
            "run_report_peak_rss_mb": round(run_rss, 1),
            "run_report_mb": round(run_mb, 2),
            "compare_report_build_s": round(cmp_wall, 2),
            "compare_report_peak_rss_mb": round(cmp_rss, 1),
            "compare_report_mb": round(cmp_mb, 2),
            "within_25_mb": run_mb <= LIMIT_MB and cmp_mb <= LIMIT_MB,
        }
        if args.browser:
            last = f"d{args.samples - 1:06d}"
            result["chromium"] = browser_figures(page, last)
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
