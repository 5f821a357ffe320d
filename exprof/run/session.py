"""One worker's hold on one run: the store, its lease and seq, the progress bar, the
heartbeat, the stop signals and the budget, bundled once for every loop.

`record(sample, outcome)` is the one place an answer is scored and queued; `flush()`
appends what is queued in one transaction. A loop decides only when to flush: the mock
after each chunk, the live loop once per event-loop turn, the batch loop every
INGEST_FLUSH events. In a tool run, `trajectory(sample)` gives a sample's loop from its
last recorded turn and `record_turn` queues each turn before the next request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from exprof.clients.outcome import Failure, Outcome
from exprof.dataset import Sample
from exprof.errors import ConcurrencyError
from exprof.render import Progress
from exprof.run.budget import Budget
from exprof.run.tools import ToolBox, Trajectory
from exprof.scoring import custom, guard, judge, sample_events
from exprof.store.engine import Store
from exprof.store.events import Event, TurnRecorded
from exprof.store.leases import Lease
from exprof.store.record import RunRecord, recorded_turns

HEARTBEAT_S = 10.0  # a worker's heartbeat is refreshed at least this often while it works


class Session:
    """What a loop drives. `others` says who else may append to the run while this
    worker holds its lease:
    - "none": nobody; each append goes right after this session's own seq;
    - "cancel": `exprof cancel` (a batch run), which records its BatchCancelled between
      ours: an append it beat is rolled back whole and made again after it;
    - "workers": the run's other live workers (`resume --join`); each append goes after
      the run's last seq, fenced, so refused once this worker lost its place.
    """

    def __init__(
        self,
        store: Store,
        record: RunRecord,
        lease: Lease,
        seq: int,
        progress: Progress,
        budget: Budget | None = None,
        others: str = "none",
    ) -> None:
        self.store, self.run, self.lease, self.seq = store, record, lease, seq
        self.run_id = record.run_id
        self.config = record.config
        self.progress = progress
        self.budget = budget
        self.others = others
        self.metrics = custom.build(record.config.metrics, record.config.metric_timeout_s)
        guard.new_run()
        self.arrived: list[Event] = []
        self.done = self.errors = 0
        self.check_signals: Callable[[], None] = lambda: None  # set by the runner
        self.last_beat = time.monotonic()
        # A tool run's loop state: the turns recorded before this session (a resume
        # continues each sample from its last), and what answers the calls.
        self.tools: ToolBox | None = None
        self.turns: dict[tuple[str, int], list[TurnRecorded]] = {}
        if record.config.tools and record.started.mode != "rescore":  # a rescore runs none
            self.tools = ToolBox(record.config)
            self.turns = recorded_turns(store, record.run_id)

    def trajectory(self, sample: Sample) -> Trajectory:
        """The sample's tool loop, from its last recorded turn."""
        turns = self.turns.pop((sample.dialogue_id, sample.repeat), [])
        return Trajectory(sample, self.config, list(turns))

    def record_turn(self, turn: TurnRecorded) -> None:
        """Queue a tool-loop turn, to be committed before the next request is sent."""
        self.arrived.append(turn)

    def record(
        self, sample: Sample, outcome: Outcome, reused_from: int | None = None
    ) -> list[Event]:
        """Score an answer (or failure) and queue its events; return them."""
        events = sample_events(sample, outcome, self.metrics, reused_from=reused_from)
        self.arrived.extend(events)
        self.done += 1
        self.errors += isinstance(outcome, Failure)
        return events

    def grade(self, task: judge.Task, outcome: Outcome) -> None:
        """Queue a grader request and its reply (or failure)."""
        self.arrived.extend(judge.judge_events(task, outcome))
        self.done += 1
        self.errors += isinstance(outcome, Failure)

    def flush(self) -> None:
        """Append the queued events, if any, in one transaction; beat if due."""
        if self.arrived:
            events, self.arrived = self.arrived, []
            self.append(events)
        self.beat()

    def append(self, events: list[Event]) -> None:
        """Append `events` now, in one transaction (queued ones are not included)."""
        if self.others == "workers":
            self.seq = self.store.append(self.run_id, events, after_seq=None, fenced=self.lease)
            return
        try:
            self.seq = self.store.append(self.run_id, events, after_seq=self.seq)
        except ConcurrencyError:
            if self.others != "cancel":
                raise
            self.seq = self.store.append(
                self.run_id, events, after_seq=self.store.last_seq(self.run_id)
            )

    def beat(self) -> None:
        """Refresh the heartbeat once HEARTBEAT_S has passed since the last one."""
        if time.monotonic() - self.last_beat > HEARTBEAT_S:
            self.heartbeat()

    def heartbeat(self) -> None:
        self.store.heartbeat(self.lease)
        self.last_beat = time.monotonic()

    def show(self, note: str = "") -> None:
        self.progress.update(self.done, self.errors, note)

    def restart(self, progress: Progress) -> None:
        """A new phase (the grading after the answers): its own bar and counts."""
        self.progress = progress
        self.done = self.errors = 0
