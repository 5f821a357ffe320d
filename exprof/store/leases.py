"""Who works on a run: a lease row per run, naming a process on a host."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

STALE_LEASE_S = 120.0


@dataclass(frozen=True)
class Lease:
    run_id: str
    token: str
    pid: int
    host: str
    acquired_at: float
    heartbeat_at: float

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired_at))
        return f"pid {self.pid} on {self.host} since {since}"

    def is_alive(self) -> bool:
        if self.host != socket.gethostname():
            return time.time() - self.heartbeat_at < STALE_LEASE_S
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _pid_is_running(self.pid)


def _pid_is_running(pid: int) -> bool:
    """A zombie (killed but not yet reaped) still answers kill(0); it holds nothing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
