"""Pacing at the rate limit: RatePacer on a simulated clock against a simulated token-bucket
server (no wall-clock asserts), and live runs against the fake server's buckets."""

from __future__ import annotations

import datetime
import heapq
import json
from dataclasses import dataclass, field

import pytest
from test_live import experiment

from exprof.clients.limits import RatePacer, pacer_for
from exprof.clients.live import _backoff
from fake_anthropic import Bucket

EPOCH = 1_800_000_000.0  # simulated wall clock: EPOCH + simulated seconds


@dataclass
class SimServer:
    """The API's requests bucket, on simulated time: 1 s of burst, refilled at rpm/60."""

    rpm: int
    level: float = 0.0
    at: float = 0.0
    admitted: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return self.rpm / 60

    def refill(self, t: float) -> None:
        self.level = min(self.capacity, self.level + (t - self.at) * self.rpm / 60)
        self.at = t

    def admit(self, t: float) -> bool:
        self.refill(t)
        if self.level < 1:
            self.rejected.append(t)
            return False
        self.level -= 1
        self.admitted.append(t)
        return True

    def set_rpm(self, rpm: int, t: float) -> None:
        self.refill(t)
        self.rpm = rpm
        self.level = min(self.level, self.capacity)

    def headers(self, t: float) -> dict[str, str]:
        self.refill(t)
        full_in = (self.capacity - self.level) * 60 / self.rpm
        reset = datetime.datetime.fromtimestamp(EPOCH + t + full_in, datetime.UTC)
        return {
            "anthropic-ratelimit-requests-limit": str(self.rpm),
            "anthropic-ratelimit-requests-remaining": str(int(max(self.level, 0))),
            "anthropic-ratelimit-requests-reset": reset.isoformat().replace("+00:00", "Z"),
        }


def simulate(
    pacer: RatePacer,
    server: SimServer,
    until: float,
    concurrency: int = 32,
    latency: float = 0.05,
    events: tuple[tuple[float, int], ...] = (),
    headers: bool = True,
) -> int:
    """Workers that send as fast as the pacer lets them until `until`; `events` change
    the server's rpm at a time. Returns the 429s answered. A 429 is retried after its
    retry-after (1 s, as the API rounds it), as the live client does."""
    queue: list[tuple[float, int, str, int]] = [(0.0, w, "try", w) for w in range(concurrency)]
    queue += [(t, -1, "rpm", rpm) for t, rpm in events]
    heapq.heapify(queue)
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    limited = 0
    tie = concurrency
    while queue:
        t, _, kind, arg = heapq.heappop(queue)
        tie += 1
        if t > until:
            break
        if kind == "rpm":
            server.set_rpm(arg, t)
        elif kind == "try":
            wait = pacer.reserve(cost, t)
            if wait > 0:
                heapq.heappush(queue, (t + wait, tie, "try", arg))
            else:  # arrives at the server half a latency later, answered after the other half
                ok = server.admit(t + latency / 2)
                heapq.heappush(queue, (t + latency, tie, "done" if ok else "429", arg))
        else:
            said = server.headers(t) if headers else {}
            pacer.settle(cost, said, t, wall_now=EPOCH + t)
            if kind == "429":
                limited += 1
                heapq.heappush(queue, (t + 1.0, tie, "try", arg))
            else:
                heapq.heappush(queue, (t, tie, "try", arg))
    return limited


def rate_between(times: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in times) / (end - start)


def test_pacing_runs_close_to_the_limit_without_crossing_it():
    server = SimServer(rpm=3000)
    limited = simulate(RatePacer(), server, until=30.0)
    first, last = server.admitted[0], server.admitted[-1]
    achieved = (len(server.admitted) - 1) / (last - first) * 60
    assert achieved >= 0.95 * 3000
    assert limited == 0
    # Past the first second (the server's burst allowance, spent while no header was
    # known yet), no second holds more than the limit's share.
    assert max(rate_between(server.admitted, t / 10, t / 10 + 1) for t in range(20, 290)) <= 50


def test_a_limit_that_drops_mid_run_is_followed_within_seconds():
    server = SimServer(rpm=3000)
    limited = simulate(RatePacer(), server, until=40.0, events=((10.0, 600),))
    assert rate_between(server.admitted, 1, 10) >= 0.95 * 50
    # Within two seconds of the drop, the pace is the new limit's, and no 429 comes after.
    assert 0.9 * 10 <= rate_between(server.admitted, 12, 40) <= 10
    assert [t for t in server.rejected if t >= 12] == []
    assert limited <= 32  # at most the requests already on their way when it dropped


def test_a_limit_that_rises_is_used():
    server = SimServer(rpm=600)
    simulate(RatePacer(), server, until=20.0, events=((5.0, 3000),))
    assert rate_between(server.admitted, 7, 20) >= 0.95 * 50


def test_remaining_lower_than_ours_slows_us_down():
    # A colleague on the same key: the server's bucket drains faster than we spend.
    pacer = RatePacer()
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    said = {
        "anthropic-ratelimit-requests-limit": "3000",
        "anthropic-ratelimit-requests-remaining": "50",
    }
    pacer.settle(cost, said, 0.0)
    assert pacer.reserve(cost, 0.0) == 0  # a full bucket
    pacer.settle(cost, {**said, "anthropic-ratelimit-requests-remaining": "0"}, 0.0)
    assert pacer.reserve(cost, 0.0) > 0  # the server has nothing left: neither have we


def test_an_empty_bucket_waits_for_the_first_token_its_reset_implies():
    pacer = RatePacer()
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    reset = datetime.datetime.fromtimestamp(EPOCH + 30, datetime.UTC).isoformat()
    said = {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
    }
    pacer.settle(cost, said, 0.0, wall_now=EPOCH)
    # 60 per minute, full again in 30 s: the first token in 0.5 s (not in 1/rate = 1 s).
    assert pacer.reserve(cost, 0.49) > 0
    assert pacer.reserve(cost, 1.03) == 0


def test_missing_headers_leave_the_pacing_to_aimd():
    pacer = RatePacer()
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    assert pacer.settle(cost, {"retry-after": "1"}, 0.0) is False  # the caller halves, AIMD
    assert all(pacer.reserve(cost, 0.0) == 0 for _ in range(1000))
    server = SimServer(rpm=3000)
    simulate(pacer, server, until=5.0, headers=False)
    assert server.rejected  # nothing paced: the server's 429s are AIMD's to handle


def test_retry_after_is_honoured_exactly():
    assert _backoff(1, {"retry-after": "2"}) == 2.0
    assert _backoff(5, {"retry-after-ms": "1500"}) == 1.5
    pacer = RatePacer()  # a 429 with only retry-after holds every dispatch that long
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    pacer.hold(2.0, 10.0)
    assert pacer.reserve(cost, 11.99) == pytest.approx(0.01)
    assert pacer.reserve(cost, 12.0) == 0


def test_output_tokens_are_paced_by_estimate_and_settled_by_usage():
    pacer = RatePacer()
    said = {
        "anthropic-ratelimit-output-tokens-limit": "6000",  # 100 a second
        "anthropic-ratelimit-output-tokens-remaining": "100",
    }
    cost = pacer.estimate(chars=40, max_tokens=100)
    assert cost["output-tokens"] == 100  # before any answer: max_tokens, as the API counts
    assert pacer.reserve(cost, 0.0) == 0
    pacer.settle(cost, said, 0.0, usage=(10, 20), chars=40)
    cost = pacer.estimate(chars=40, max_tokens=100)
    assert cost["output-tokens"] == 20  # learned from usage
    assert cost["input-tokens"] < 40 * 0.5
    sent = 0
    t = 0.0
    while t < 10:  # every answer uses 20 tokens: 100/s * 0.98 headroom = 4.9 requests/s
        if pacer.reserve(cost, t) == 0:
            sent += 1
            pacer.settle(cost, None, t, usage=(10, 20), chars=40)
        t += 0.01
    assert 4.5 * 10 <= sent <= 5 * 10 + 5


def test_a_cap_paces_from_the_first_request_and_the_lower_of_two_wins():
    pacer = RatePacer()
    pacer.cap({"rpm": 120}, 0.0)
    pacer.cap({"rpm": 600}, 0.0)  # a second config on the same model: the lower cap stays
    cost = {"requests": 1.0, "input-tokens": 0.0, "output-tokens": 0.0}
    said = {"anthropic-ratelimit-requests-limit": "3000"}
    pacer.settle(cost, said, 0.0)  # the org allows more; the cap still binds
    sent = sum(pacer.reserve(cost, t / 100) == 0 for t in range(1000))
    assert sent <= 120 / 60 * 10 + 2
    assert pacer.status(9.99) == "rate-limited (rpm 120)"
    assert pacer.status(20.0) == ""


def test_the_fake_bucket_refills_at_its_rate():
    bucket = Bucket(600, burst_s=1.0)
    bucket.level, bucket.at = 0.0, 0.0
    bucket.refill(0.5)
    assert bucket.level == pytest.approx(5.0)
    assert bucket.wait_for(10.0) == pytest.approx(0.5)


# -- live, against the fake's buckets ----------------------------------------------


def test_live_run_at_a_request_limit_gets_no_429(tmp_path, invoke, fake):
    server = fake(latency=0.05, rpm=1200)  # 20 a second, with concurrency for 320
    config = experiment(tmp_path, 100, concurrency=16, api_version="2023-06-01")
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["retries"] == 0
    assert server.state.rate_limited == 0 and server.state.successes == 100


def test_live_run_at_an_output_token_limit_gets_no_429(tmp_path, invoke, fake):
    server = fake(latency=0.05, otpm=3000)  # 50 tokens a second; answers are ~6 tokens
    config = experiment(tmp_path, 40, concurrency=16, api_version="2023-06-01")
    result = invoke("run", "--config", str(config), "--quiet", "--format", "json")
    assert result.exit_code == 0, result.output
    assert server.state.rate_limited <= 1 and server.state.successes == 40


def test_a_rate_limit_cap_paces_a_run_the_server_does_not_limit(tmp_path, invoke, fake):
    server = fake(latency=0.01)
    config = experiment(tmp_path, 40, concurrency=16, rate_limit={"rpm": 600})
    result = invoke("run", "--config", str(config), "--quiet")
    assert result.exit_code == 0, result.output
    times = sorted(s["t"] for s in server.state.seen)
    # 10 a second (less headroom) after a burst of at most one second's worth: a lower
    # bound on the span, which a slow machine only lengthens.
    assert times[-1] - times[0] >= (40 - 10 - 1) / 10


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("[600]", "rate_limit: must be a mapping of rpm, itpm, otpm to a per-minute limit"),
        ("{}", "rate_limit: must be a mapping of rpm, itpm, otpm to a per-minute limit"),
        ("{rps: 10}", "rate_limit: unknown key 'rps'; the keys are rpm, itpm, otpm"),
        ("{rpm: 0}", "rate_limit.rpm: must be an integer >= 1, got 0"),
        ("{otpm: 1.5}", "rate_limit.otpm: must be an integer, got 1.5"),
    ],
)
def test_a_bad_rate_limit_is_a_clean_error(tmp_path, invoke, value, error):
    config = experiment(tmp_path, 2)
    config.write_text(config.read_text().rstrip().rstrip("}") + f', "rate_limit": {value}}}')
    result = invoke("run", "--config", str(config), "--mock")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {config}: {error}\n"
    assert not (tmp_path / "runs").exists()


def test_one_pacer_per_model_endpoint_and_cap_in_a_process():
    shared = pacer_for("m", "http://127.0.0.1:1")
    assert pacer_for("m", "http://127.0.0.1:1") is shared  # a matrix's cells, judge calls
    assert pacer_for("other", "http://127.0.0.1:1") is not shared
    capped = pacer_for("m", "http://127.0.0.1:1", {"rpm": 60})
    assert capped is not shared and capped.buckets["requests"].limit == 60
    assert shared.buckets == {}  # one config's cap never slows another config's run
