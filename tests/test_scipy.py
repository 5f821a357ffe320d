"""scipy supplies the distributions: it agrees with the formulas it replaced, and the
commands that never need it (run, summarize, export) never import it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

import exprof.compare
import exprof.stats
from conftest import REPO, make_samples, write_experiment
from exprof.stats import T975_BELOW_30, mcnemar_exact, t_quantile, t_quantile_975


def old_mcnemar(b: int, c: int) -> float:
    """The hand-written binomial sum exprof used before scipy (the reference)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top + math.log(sum(math.exp(x - top) for x in logs)) - n * math.log(2))
    return min(1.0, 2 * tail)


def old_t975(df: int) -> float:
    """The Cornish-Fisher t quantile exprof used before scipy (the reference)."""
    small = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}
    if df < 1:
        return math.inf
    if df in small:
        return small[df]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def test_mcnemar_from_scipy_equals_the_old_binomial_sum():
    pairs = [(b, c) for b in range(61) for c in range(61)]
    pairs += [(4990, 5100), (12, 3000), (20000, 20000), (0, 1000)]
    for b, c in pairs:
        assert mcnemar_exact(b, c) == pytest.approx(old_mcnemar(b, c), rel=1e-9, abs=1e-300)


def test_t_quantiles_agree_with_scipy_and_the_old_expansion():
    for df, value in enumerate(T975_BELOW_30, start=1):
        assert value == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-9)
    for df in [*range(30, 400), 1000, 10_000, 100_000]:
        exact = scipy_stats.t.ppf(0.975, df)
        assert t_quantile_975(df) == pytest.approx(exact, abs=4e-8)
    for df in range(1, 400):
        # The old expansion was off by up to 3e-4 (at df = 5); the old table by 3e-7.
        assert old_t975(df) == pytest.approx(t_quantile_975(df), abs=3e-4)
    assert t_quantile(0.975, 12) == pytest.approx(T975_BELOW_30[11], abs=1e-9)
    assert math.isinf(t_quantile_975(0))


def experiment(folder: Path, refuse_every: int, experiment_id: str, **config) -> Path:
    samples, mocks = make_samples(24, refuse_every=refuse_every)
    return write_experiment(folder, samples, mocks, experiment_id=experiment_id, **config)


def test_todays_outputs_are_unchanged(tmp_path, invoke, monkeypatch):
    """Summaries with clustered intervals and a compare with McNemar p-values, computed
    with the new distributions and again with the old formulas, are the same JSON."""
    metrics = ["fact_coverage", {"name": "long", "type": "length", "unit": "words", "min": 3}]
    matrix = {"model": ["claude-3-opus", "claude-3-haiku"]}
    config = experiment(tmp_path / "m", 5, "mx", matrix=matrix, repeats=3, metrics=metrics)
    assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    for folder, every, name in ((tmp_path / "a", 5, "a"), (tmp_path / "b", 3, "b")):
        config = experiment(folder, every, name)
        assert invoke("run", "--config", str(config), "--quiet").exit_code == 0
    commands = [
        ("summarize", "mx"),
        ("summarize", "mx.model-claude-3-opus"),
        ("compare", "a", "b"),
        ("compare", "mx", "--baseline", "model-claude-3-haiku"),
    ]

    def outputs() -> list[dict]:
        found = []
        for command in commands:
            result = invoke(*command, "--format", "json")
            assert result.exit_code == 0, result.output
            found.append(json.loads(result.stdout))
        return found

    new = outputs()
    assert new[2]["metrics"]["refusal_rate"]["mcnemar_p"] < 1.0  # the test has teeth
    monkeypatch.setattr(exprof.stats, "t_quantile_975", old_t975)
    monkeypatch.setattr(exprof.compare, "mcnemar_exact", old_mcnemar)
    assert outputs() == new


NO_SCIPY = textwrap.dedent(
    """
    import sys
    from click.testing import CliRunner
    from exprof.cli import cli

    def invoke(*args):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output

    invoke("run", "--config", sys.argv[1], "--quiet")
    invoke("run", "--config", sys.argv[2], "--quiet")
    invoke("summarize", "mx")
    invoke("summarize", "mx.model-claude-3-opus", "--format", "json")
    invoke("summarize", "--log-dir", "runs/plain")
    invoke("export", "mx.model-claude-3-opus")
    loaded = sorted(m for m in sys.modules if m == "scipy" or m.startswith("scipy."))
    assert not loaded, loaded
    from exprof.stats import mcnemar_exact
    mcnemar_exact(1, 2)  # the check can see scipy once something loads it
    assert "scipy" in sys.modules
    print("ok")
    """
)


def test_run_summarize_and_export_never_import_scipy(tmp_path):
    metrics = ["fact_coverage", {"name": "long", "type": "length", "unit": "words", "min": 3}]
    matrix = {"model": ["claude-3-opus", "claude-3-haiku"]}
    cells = experiment(tmp_path / "m", 5, "mx", matrix=matrix, repeats=3, metrics=metrics)
    plain = experiment(tmp_path / "p", 4, "plain")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", NO_SCIPY, str(cells), str(plain)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
