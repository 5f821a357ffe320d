"""Who works on a run: a lease row per run, naming a process on a host.

A pid alone does not name a process: pids are reused (PID 1 in every restarted
container). So a lease also records its process's start time, and a holder is alive
only while a process with that pid *and* that start time runs, and only while it
keeps its heartbeat fresh. Across hosts only the heartbeat can tell.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass

STALE_LEASE_S = 120.0
# The columns of `leases` and of `workers` (one shape: a worker row is a lease), in
# Lease's field order.
LEASE_COLUMNS = "run_id, token, pid, host, acquired_at, heartbeat_at, started"
# Tokens of the leases this process holds: a lease naming our own pid is ours only if
# its token is here; otherwise an earlier process with our pid left it behind.
HELD: set[str] = set()


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str
    pid: int
    host: str
    acquired_at: float
    heartbeat_at: float
    started: str | None = None  # the holder's start time, from /proc (None: unknown)

    @classmethod
    def mine(cls, run_id: str) -> Lease:
        """A new lease on the run naming this process, with a fresh token."""
        now = time.time()
        pid = os.getpid()
        return cls(
            run_id, uuid.uuid4().hex, pid, socket.gethostname(), now, now, process_started(pid)
        )

    def row(self) -> tuple[object, ...]:
        """The values of LEASE_COLUMNS."""
        return (
            self.run_id,
            self.token,
            self.pid,
            self.host,
            self.acquired_at,
            self.heartbeat_at,
            self.started,
        )

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"pid {self.pid} on {self.host} since {since}"

    def is_alive(self) -> bool:
        if time.time() - self.heartbeat_at >= STALE_LEASE_S:
            return False  # a holder that stopped beating holds nothing, on any host
        if self.host != socket.gethostname():
            return True
        if self.pid == os.getpid():
            return self.token in HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        started = process_started(self.pid)
        if self.started is not None and started is not None and started != self.started:
            return False  # the pid now names another process
        return _pid_is_running(self.pid)


def process_started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    which together with the pid names one process; None where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _pid_is_running(pid: int) -> bool:
    """A zombie (killed but not yet reaped) still answers kill(0); it holds nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
