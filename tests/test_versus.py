"""Sequential A/B (`run --config A --versus B --stop-when-decided`): the confidence
sequence of exprof.sequential driving a two-cell experiment, in the mock, live against
the fake Messages API (counting what it sends), with repeats, killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exprof.sequential import replay
from exprof.store.engine import Store, store_url
from exprof.store.events import ResponseReceived, SampleFailed, SequentialStopped
from exprof.store.record import sequential_events
from fake_anthropic import FakeAnthropic


def arms(
    folder: Path, n: int, cover_a, cover_b=lambda i: 2, facts: int = 2, **config
) -> tuple[Path, Path]:
    """A dataset of n samples and two configs whose mock files cover cover_a(i) and
    cover_b(i) of each sample's facts."""
    folder.mkdir(parents=True, exist_ok=True)
    samples, answers = [], {"a": {}, "b": {}}
    for i in range(n):
        did, fact_list = f"d{i:04d}", [f"f{i}-{k}" for k in range(facts)]
        samples.append(
            {"dialogue_id": did, "system": "s", "user": f"q {i}", "required_facts": fact_list}
        )
        for arm, cover in (("a", cover_a), ("b", cover_b)):
            text = "answer " + " ".join(fact_list[: cover(i)])
            answers[arm][did] = {"completion": text, "metadata": {"token_count": 10}}
    (folder / "d.json").write_text(json.dumps(samples))
    paths = []
    for arm in ("a", "b"):
        (folder / f"{arm}.json").write_text(json.dumps(answers[arm]))
        settings = {
            "experiment_id": "ab",
            "model": "claude-3-opus",
            "max_tokens": 100,
            "dataset_path": "d.json",
            "mock_responses_path": f"{arm}.json",
            **config,
        }
        path = folder / f"{arm.upper()}.yaml"
        path.write_text(json.dumps(settings))
        paths.append(path)
    return paths[0], paths[1]


def versus(invoke, a: Path, b: Path, *extra: str):
    result = invoke(
        "run", "--config", str(a), "--versus", str(b), "--stop-when-decided",
        "--quiet", "--format", "json", *extra,
    )  # fmt: skip
    return result, json.loads(result.stdout) if result.stdout.strip() else None


def store() -> Store:
    return Store.open(store_url(None, "runs"))


def answered(run_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ev in store().events(run_id, types=(ResponseReceived,)):
        counts[ev.payload["dialogue_id"]] = counts.get(ev.payload["dialogue_id"], 0) + 1
    return counts


def expected(cover_a, cover_b, order, facts=2, skip=(), **options):
    """The sequence replayed independently, pair by pair, in the recorded order (the
    pairs in `skip` failed: left out)."""
    diffs = [(cover_b(p) - cover_a(p)) / facts for p in order if p not in skip]
    cs = replay([], **options)
    for d in diffs:
        cs.update(d)
        if (v := cs.verdict()) is not None:
            return v
    return cs.verdict(exhausted=True)


# -- the mock -------------------------------------------------------------------------


def test_a_better_arm_is_decided_early_in_the_recorded_order_and_resume_sends_nothing(
    tmp_path, invoke
):
    cover_a = lambda i: i % 3  # noqa: E731  (0, 1 or 2 of 2 facts)
    a, b = arms(tmp_path, 300, cover_a)
    result, out = versus(invoke, a, b, "--mock", "--seed", "7")
    assert result.exit_code == 0, result.output
    seq = out["sequential"]
    assert seq["verdict"] == "decided" and seq["winner"] == "B"
    plan, stopped = sequential_events(store(), "ab")
    assert plan is not None and stopped is not None
    assert sorted(plan.order) == list(range(300)) and plan.seed == 7 and stopped.seed == 7
    assert stopped.order == plan.order and stopped.verdict == "decided"
    truth = expected(cover_a, lambda i: 2, plan.order)
    assert seq["pairs_used"] == truth.pairs_used < 300
    assert seq["interval"] == [round(x, 4) for x in truth.interval]
    assert seq["interval"][0] > 0  # excludes 0: B - A is positive
    # What was answered: the pairs used, plus at most one round of concurrency / 2.
    used = set(plan.order[: seq["pairs_used"]])
    for run_id in ("ab.A", "ab.B"):
        got = answered(run_id)
        assert {f"d{p:04d}" for p in used} <= set(got) and set(got.values()) == {1}
        assert len(got) - seq["pairs_used"] < 8 // 2
    assert [c["cell"] for c in out["cells"]] == ["A", "B"]
    assert {c["status"] for c in out["cells"]} == {"stopped"}
    events = store().event_count()
    again = invoke("resume", "ab", "--quiet", "--format", "json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sequential"] == seq
    assert store().event_count() == events  # nothing sent, nothing written
    summary = invoke("summarize", "ab", "--format", "json")
    assert json.loads(summary.stdout)["sequential"] == seq
    table = invoke("summarize", "ab")
    assert f"sequential: decided: B wins after {seq['pairs_used']} pairs" in table.stdout


def test_the_seed_sets_the_order(tmp_path, invoke):
    orders = []
    for seed in ("1", "2"):
        a, b = arms(tmp_path / seed, 50, lambda i: 0)
        result, out = versus(invoke, a, b, "--mock", "--seed", seed, "--run-id", f"s{seed}")
        assert result.exit_code == 0, result.output
        orders.append(sequential_events(store(), f"s{seed}")[0].order)
    assert orders[0] != orders[1]
    assert orders[0] == [int(i) for i in np.random.default_rng(1).permutation(50)]


def test_equal_arms_are_equivalent_within_the_min_effect(tmp_path, invoke):
    a, b = arms(tmp_path, 400, lambda i: 2)
    result, out = versus(invoke, a, b, "--mock", "--min-effect", "0.2")
    assert result.exit_code == 0, result.output
    seq = out["sequential"]
    assert seq["verdict"] == "equivalent" and seq["winner"] is None
    assert -0.2 <= seq["interval"][0] <= 0 <= seq["interval"][1] <= 0.2
    plan = sequential_events(store(), "ab")[0]
    truth = expected(lambda i: 2, lambda i: 2, plan.order, min_effect=0.2)
    assert seq["pairs_used"] == truth.pairs_used < 400


def test_undecided_when_the_dataset_runs_out(tmp_path, invoke):
    cover = lambda i: i % 3  # noqa: E731
    a, b = arms(tmp_path, 20, cover, cover_b=lambda i: (i + 1) % 3)
    result, out = versus(invoke, a, b, "--mock")
    assert result.exit_code == 0, result.output
    assert out["sequential"]["verdict"] == "undecided"
    assert out["sequential"]["pairs_used"] == 20
    assert sequential_events(store(), "ab")[1].reason == "no pairs left"


def test_undecided_when_the_budget_runs_out_and_a_larger_one_goes_on(tmp_path, invoke):
    cover = lambda i: i % 3  # noqa: E731
    a, b = arms(tmp_path, 500, cover, budget_usd=0.01)
    result, out = versus(invoke, a, b, "--mock")
    assert result.exit_code == 0, result.output
    seq = out["sequential"]
    assert seq["verdict"] == "undecided" and 0 < seq["pairs_used"] < 10
    plan, stopped = sequential_events(store(), "ab")
    assert stopped.reason == "budget_usd reached"
    same = invoke("resume", "ab", "--quiet", "--format", "json")  # the same budget: stays
    assert json.loads(same.stdout)["sequential"] == seq
    more = invoke("resume", "ab", "--quiet", "--format", "json", "--budget-usd", "100")
    assert more.exit_code == 0, more.output
    truth = expected(cover, lambda i: 2, plan.order)  # as if it had never stopped
    went_on = json.loads(more.stdout)["sequential"]
    assert went_on["verdict"] == "decided" and went_on["pairs_used"] == truth.pairs_used
    assert went_on["interval"] == [round(x, 4) for x in truth.interval]


def test_repeats_are_averaged_into_one_observation(tmp_path, invoke):
    cover_a = lambda i: i % 4  # noqa: E731  (of 3 facts: 0..3)
    a, b = arms(tmp_path, 200, cover_a, cover_b=lambda i: 3, facts=3, concurrency=12)
    result, out = versus(invoke, a, b, "--mock", "--repeats", "3")
    assert result.exit_code == 0, result.output
    seq = out["sequential"]
    plan = sequential_events(store(), "ab")[0]
    truth = expected(cover_a, lambda i: 3, plan.order, facts=3)
    assert seq["pairs_used"] == truth.pairs_used and seq["verdict"] == "decided"
    for run_id in ("ab.A", "ab.B"):
        got = answered(run_id)
        assert set(got.values()) == {3}  # every sample sent has all its repeats
        assert len(got) - seq["pairs_used"] < 12 // (2 * 3)


def test_a_single_arm_cannot_be_resumed_alone(tmp_path, invoke):
    a, b = arms(tmp_path, 60, lambda i: 0)
    assert versus(invoke, a, b, "--mock")[0].exit_code == 0
    result = invoke("resume", "ab.A")
    assert result.exit_code == 2
    assert "continue it with `exprof resume ab`" in result.stderr


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--metric", "nope"), "--metric: 'nope' is not fact_coverage"),
        (("--alpha", "1.5"), "--alpha"),
        (("--min-effect", "0"), "--min-effect"),
        (("--seed", "-1"), "--seed"),
    ],
)
def test_bad_options_are_one_error_and_nothing_written(tmp_path, invoke, extra, fragment):
    a, b = arms(tmp_path, 10, lambda i: 0)
    result, _ = versus(invoke, a, b, "--mock", *extra)
    assert result.exit_code == 2
    assert result.stderr.count("Error:") == 1 and fragment in result.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_combinations_are_one_error_and_nothing_written(tmp_path, invoke):
    a, b = arms(tmp_path, 10, lambda i: 0)
    cases = [
        (("--versus", str(b)), "add --stop-when-decided"),
        (("--stop-when-decided",), "needs --versus"),
        (("--seed", "3"), "--seed needs --versus"),
        (("--versus", str(b), "--stop-when-decided", "--dry-run"), "--dry-run"),
    ]
    for extra, fragment in cases:
        result = invoke("run", "--config", str(a), "--mock", *extra)
        assert result.exit_code == 2, extra
        assert result.stderr.count("Error:") == 1 and fragment in result.stderr, result.stderr
    other = tmp_path / "other"
    c, _ = arms(other, 11, lambda i: 0)  # another dataset
    matrix = json.loads(b.read_text()) | {"matrix": {"max_tokens": [10, 20]}}
    (tmp_path / "M.yaml").write_text(json.dumps(matrix))
    judged = json.loads(b.read_text()) | {"batch": True}
    (tmp_path / "J.yaml").write_text(json.dumps(judged))
    for versus_path, fragment in (
        (c, "must share a dataset"),
        (tmp_path / "M.yaml", "not a matrix"),
        (tmp_path / "J.yaml", "batch"),
    ):
        result, _ = versus(invoke, a, versus_path, "--mock")
        assert result.exit_code == 2
        assert result.stderr.count("Error:") == 1 and fragment in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


# -- live, against the fake Messages API ----------------------------------------------


def live_arms(folder: Path, n: int, pad, **config) -> tuple[Path, Path]:
    """The fake echoes the prompt: sample i's facts come after pad(i) filler words, so
    arm A (max_tokens 6) cuts some of them off and arm B (max_tokens 100) never does."""
    a, b = arms(folder, n, lambda i: 0, **config)
    samples = json.loads((folder / "d.json").read_text())
    for i, s in enumerate(samples):
        s["user"] = " ".join(["q", *["w"] * pad(i), *s["required_facts"]])
    (folder / "d.json").write_text(json.dumps(samples))
    settings = json.loads(a.read_text()) | {"max_tokens": 6}
    a.write_text(json.dumps(settings))
    return a, b


def test_live_a_decided_run_sends_two_per_pair_plus_at_most_those_in_flight(tmp_path, invoke, fake):
    server = fake(latency=0.01)
    concurrency = 6
    a, b = live_arms(tmp_path, 200, lambda i: i % 6, concurrency=concurrency, temperature=0.5)
    result, out = versus(invoke, a, b, "--live")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("recorded but not sent") == 2  # once per arm, not per round
    seq = out["sequential"]
    assert seq["verdict"] == "decided" and seq["winner"] == "B"
    sent = server.state.requests
    assert 2 * seq["pairs_used"] <= sent <= 2 * seq["pairs_used"] + concurrency, (sent, seq)
    assert seq["pairs_used"] < 200
    again = invoke("resume", "ab", "--quiet", "--format", "json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sequential"] == seq
    assert server.state.requests == sent  # resume adds none


def test_live_a_pair_that_failed_is_left_out_of_the_sequence(tmp_path, invoke, fake):
    pad = lambda i: i % 6  # noqa: E731
    a, b = live_arms(tmp_path, 200, pad, concurrency=4, max_retries=0)
    order = [int(i) for i in np.random.default_rng(0).permutation(200)]
    broken = set(order[:3]) | {order[5]}
    samples = json.loads((tmp_path / "d.json").read_text())
    server = fake(always_fail={samples[p]["user"] for p in broken})
    result, out = versus(invoke, a, b, "--live")
    assert result.exit_code == 0, result.output
    cover_a = lambda i: (pad(i) <= 3) + (pad(i) <= 2)  # noqa: E731  (A's 6 tokens)
    truth = expected(cover_a, lambda i: 2, order, skip=broken)
    assert out["sequential"]["pairs_used"] == truth.pairs_used
    assert out["sequential"]["interval"] == [round(x, 4) for x in truth.interval]
    for run_id in ("ab.A", "ab.B"):
        failed = {e.payload["dialogue_id"] for e in store().events(run_id, (SampleFailed,))}
        assert failed == {f"d{p:04d}" for p in broken}  # sent once each, never again
    sent = server.state.requests
    assert sent <= 2 * (truth.pairs_used + len(broken)) + 4
    again = invoke("resume", "ab", "--quiet")
    assert again.exit_code == 0 and server.state.requests == sent


def exprof(*args: str, cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "exprof", *args, "--quiet", "--format", "json"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok_count(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM samples WHERE status = 'ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_killed_and_resumed_it_continues_the_very_same_sequence(tmp_path):
    pad = lambda i: 5 if i % 7 == 0 else 0  # noqa: E731  (A misses 1 in 7)
    a, b = live_arms(tmp_path / "e", 300, pad, concurrency=2)
    with FakeAnthropic(latency=0.01) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-x", "ANTHROPIC_BASE_URL": server.url}
        flags = ("--config", str(a), "--versus", str(b), "--stop-when-decided", "--seed", "3")
        db = tmp_path / "runs" / "exprof.db"
        proc = exprof("run", *flags, cwd=tmp_path, env=env)
        kills = 0
        for target in (10, 30):
            deadline = time.monotonic() + 60
            while ok_count(db) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = exprof("resume", "ab", cwd=tmp_path, env=env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert kills == 2
    # The pairs answered before each kill are replayed: the outcome is the one the
    # sequence gives over the recorded order, as if nothing had been killed.
    order = sequential_events(store(), "ab")[0].order
    truth = expected(lambda i: 2 * (pad(i) <= 2), lambda i: 2, order)
    seq = json.loads(out)["sequential"]
    assert seq["verdict"] == "decided" and seq["pairs_used"] == truth.pairs_used > 30
    assert seq["interval"] == [round(x, 4) for x in truth.interval]
    assert sum(answered("ab.A").values()) - truth.pairs_used <= 2 * 2  # kills waste little


def test_compare_of_the_arms_shows_the_sequence_beside_the_fixed_n_ci(tmp_path, invoke):
    a, b = arms(tmp_path, 300, lambda i: i % 3)
    _, out = versus(invoke, a, b, "--mock")
    seq = out["sequential"]
    found = json.loads(invoke("compare", "ab.A", "ab.B", "--format", "json").stdout)
    shown = found["sequential"]
    assert shown["interval"] == seq["interval"] and shown["pairs_used"] == seq["pairs_used"]
    assert shown["winner"] == "ab.B" and shown["valid"] == "interval"
    assert shown["fixed_n_ci95"] == found["metrics"]["fact_coverage"]["ci95"]
    flipped = json.loads(invoke("compare", "ab.B", "ab.A", "--format", "json").stdout)
    assert flipped["sequential"]["interval"] == [-seq["interval"][1], -seq["interval"][0]]
    assert flipped["sequential"]["winner"] == "ab.B"
    text = invoke("compare", "ab.A", "ab.B").stdout
    assert "confidence sequence" in text and "VALID for this stopped run" in text
    assert "fixed-n bootstrap 95% CI" in text and "not valid here" in text
    # Two runs outside a sequential experiment get no such section.
    other = arms(tmp_path / "x", 20, lambda i: 1)[0]
    for run_id in ("p", "q"):
        invoke("run", "--config", str(other), "--mock", "--run-id", run_id, "--quiet")
    assert "sequential" not in json.loads(invoke("compare", "p", "q", "--format", "json").stdout)


def test_a_boolean_custom_metric_and_refusal_rate_can_be_followed(tmp_path, invoke):
    regex = {"name": "full", "type": "regex", "pattern": r"-1\b"}  # covers the second fact
    cover_a = lambda i: 1 + (i % 5 == 0)  # noqa: E731  (A names it 1 in 5 times, B always)
    a, b = arms(tmp_path, 300, cover_a, metrics=["fact_coverage", regex])
    result, out = versus(invoke, a, b, "--mock", "--metric", "full")
    assert result.exit_code == 0, result.output
    plan = sequential_events(store(), "ab")[0]
    assert plan.metric == "full"
    truth = expected(lambda i: 2 * (cover_a(i) == 2), lambda i: 2, plan.order)
    assert out["sequential"]["pairs_used"] == truth.pairs_used
    assert out["sequential"]["winner"] == "B"
    # refusal_rate: equal arms that never refuse, equivalent within 0.1.
    c, d = arms(tmp_path / "r", 300, lambda i: 1)
    result, out = versus(invoke, c, d, "--mock", "--metric", "refusal_rate", "--run-id", "r")
    assert out["sequential"]["verdict"] == "undecided"  # no --min-effect: never equivalent


def test_a_metric_with_no_known_range_is_refused(tmp_path, invoke):
    (tmp_path / "m.py").write_text("def n(sample, completion, metadata):\n    return 7\n")
    python = {"name": "n", "type": "python", "function": "m:n"}
    a, b = arms(tmp_path, 10, lambda i: 0, metrics=["fact_coverage", python])
    result, _ = versus(invoke, a, b, "--mock", "--metric", "n")
    assert result.exit_code == 2 and "n is a python metric, with no known range" in result.stderr
    result, _ = versus(invoke, a, b, "--mock", "--metric", "missing")
    assert result.exit_code == 2 and "not fact_coverage, refusal_rate or a custom" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_ctrl_c_records_the_stop_and_resume_continues_the_sequence(tmp_path):
    pad = lambda i: 5 if i % 7 == 0 else 0  # noqa: E731
    a, b = live_arms(tmp_path / "e", 300, pad, concurrency=2)
    with FakeAnthropic(latency=0.01) as server:
        env = {**os.environ, "ANTHROPIC_API_KEY": "sk-ant-x", "ANTHROPIC_BASE_URL": server.url}
        flags = ("--config", str(a), "--versus", str(b), "--stop-when-decided")
        proc = exprof("run", *flags, cwd=tmp_path, env=env)
        db = tmp_path / "runs" / "exprof.db"
        deadline = time.monotonic() + 60
        while ok_count(db) < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "continue the same sequence with: exprof resume ab" in err
        statuses = {r.run_id: r.status for r in store().runs()}
        assert statuses == {"ab.A": "interrupted", "ab.B": "interrupted"}
        assert sequential_events(store(), "ab")[1] is None  # not stopped by the sequence
        listing = subprocess.run(
            [sys.executable, "-m", "exprof", "runs", "--format", "json"],
            cwd=tmp_path, capture_output=True, text=True,
        )  # fmt: skip
        assert {r["next step"] for r in json.loads(listing.stdout)} == {"exprof resume ab"}
        proc = exprof("resume", "ab", cwd=tmp_path, env=env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    order = sequential_events(store(), "ab")[0].order
    cover_a = lambda i: 2 * (pad(i) <= 2)  # noqa: E731  (A's 6 tokens: both facts or none)
    truth = expected(cover_a, lambda i: 2, order)
    seq = json.loads(out)["sequential"]
    assert seq["pairs_used"] == truth.pairs_used and seq["verdict"] == "decided"
    assert seq["interval"] == [round(x, 4) for x in truth.interval]


def test_a_crash_between_the_stop_and_the_arms_end_is_finished_by_resume(tmp_path, invoke):
    from exprof.store.events import RunResumed

    a, b = arms(tmp_path, 300, lambda i: i % 3)
    _, out = versus(invoke, a, b, "--mock")
    s = store()
    for run_id in ("ab.A", "ab.B"):  # as if killed after the stop was recorded
        s.append(run_id, [RunResumed(1, "h", False)], after_seq=s.last_seq(run_id))
    assert {r.status for r in s.runs()} == {"running"}
    answers = {run_id: answered(run_id) for run_id in ("ab.A", "ab.B")}
    again = invoke("resume", "ab", "--quiet", "--format", "json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["sequential"] == out["sequential"]
    assert {r.status for r in store().runs()} == {"complete"}
    assert {run_id: answered(run_id) for run_id in answers} == answers  # nothing sent
    assert len([e for e in store().events("ab", (SequentialStopped,))]) == 1
