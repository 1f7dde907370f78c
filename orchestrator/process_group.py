"""A step command's process group: whether it has ended, and killing all of it, so no process of a step outlives it.

Plain Python, Linux /proc: a zombie (the unreaped leader among them) does not count as alive.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

# SIGTERM, then this long for the group to go, then SIGKILL.
KILL_GRACE_SECONDS = 3.0
# After SIGKILL: only a process stuck in the kernel (a dead NFS mount) takes longer; it is then left behind.
KILL_WAIT_SECONDS = 10.0


def exited(pid: int) -> bool:
    """Whether the process has ended, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True  # reaped already


def stop_group(pgid: int) -> None:
    """Kill every live process of the group: SIGTERM, KILL_GRACE_SECONDS to go, then SIGKILL."""
    if not group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    # A stopped process (^Z, a debugger) would hold SIGTERM pending: let it run to receive it.
    signal_group(pgid, signal.SIGCONT)
    if gone(pgid, KILL_GRACE_SECONDS):
        return
    signal_group(pgid, signal.SIGKILL)
    gone(pgid, KILL_WAIT_SECONDS)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies (the unreaped leader among them) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True  # no way to tell a zombie from the living here: the caller's waits bound it
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 3 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
