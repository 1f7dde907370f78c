"""The ledger: every execution recorded, one applied line per step, and lines it cannot read survived."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import release_management
from release_management import Ledger, ReleaseManagement, identity_of
from shared import StepInput

KEY = "RELEASE-NOV-23-INITIAL"


def line(n: int, applied: bool = True) -> dict[str, object]:
    return {
        "run_id": "run-1",
        "deploy_key": f"{KEY}:frontend",
        "step": "deploy",
        "env": "DEV",
        "n": n,
        "applied": applied,
    }


def frontend_step(rm: ReleaseManagement) -> StepInput:
    deploy = next(d for d in rm.gather_deployments(KEY).deploys if d.container_id == "frontend")
    return StepInput(release_key=KEY, run_id="run-1", deploy=deploy, env="DEV")


def test_a_record_after_a_torn_last_line_starts_a_line_of_its_own(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(line(1))
    ledger.record(line(2))
    with open(ledger.path, "ab") as f:
        f.write(b'{"run_id": "run-1", "st')  # a crash in the middle of an append
    ledger.record(line(3))
    assert ledger.read() == ([line(1), line(2), line(3)], [3])
    assert ledger.path.read_bytes().splitlines()[-1] == json.dumps(line(3), sort_keys=True).encode()
    ledger.record(line(4))  # an intact last line needs no newline of its own
    assert ledger.read() == ([line(1), line(2), line(3), line(4)], [3])


def test_unreadable_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(line(1))
    with open(ledger.path, "ab") as f:
        f.write(b'[1,2]\ngarbage\n"text"\nnull\n\xff\xfe{}\n\n' + b"[" * 100_000 + b"\n")
    ledger.record(line(2))
    assert ledger.read() == ([line(1), line(2)], [2, 3, 4, 5, 6, 8])
    assert ledger.entries() == [line(1), line(2)]
    assert ledger.applied_before(identity_of(line(1)))


def test_a_missing_ledger_is_empty_and_record_creates_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "new" / "ledger.jsonl")
    assert ledger.read() == ([], [])
    assert not ledger.applied_before(identity_of(line(1)))
    ledger.record(line(1))
    assert ledger.entries() == [line(1)]


def test_record_appends_every_entry_without_reading_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")

    def no_reading(fd: int) -> None:
        raise AssertionError("record read the ledger")

    with monkeypatch.context() as m:
        m.setattr(Ledger, "_read", staticmethod(no_reading))
        ledger.record(line(1))
        ledger.record(line(1))
    assert ledger.entries() == [line(1), line(1)]


def test_record_unless_claimed_claims_an_effect_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    entry = {k: v for k, v in line(1).items() if k != "applied"}
    ledger.record(line(0, applied=False))  # found done, claims nothing
    assert not ledger.applied_before(identity_of(entry))
    assert ledger.record_unless_claimed(entry) is True
    assert ledger.record_unless_claimed(entry) is False
    assert [e["applied"] for e in ledger.entries()] == [False, True, False]
    other_run = {**entry, "run_id": "run-2"}
    assert ledger.record_unless_claimed(other_run) is True


def test_lines_written_before_applied_existed_count_as_applied(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    old = {k: v for k, v in line(1).items() if k != "applied"}
    ledger.path.write_text(json.dumps(old) + "\n")
    assert ledger.applied_before(identity_of(old))
    assert ledger.record_unless_claimed(old) is False


def test_concurrent_appends_each_land_whole(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")

    def append(t: int) -> None:
        for n in range(50):
            ledger.record({**line(n), "thread": t})

    threads = [threading.Thread(target=append, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries, unreadable = ledger.read()
    assert unreadable == []
    assert sorted((e["thread"], e["n"]) for e in entries) == [(t, n) for t in range(8) for n in range(50)]


def test_steps_go_on_past_unreadable_lines(rm: ReleaseManagement, tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_bytes(b'[1,2]\n{"torn')
    s = frontend_step(rm)
    assert rm.build(s) == ("frontend-1.0", True)
    assert rm.build(s, attempt=2) == ("frontend-1.0", False)  # the path that reads the whole ledger
    entries, unreadable = rm.ledger.read()
    assert [(e["step"], e["applied"]) for e in entries] == [("build", True), ("build", False)]
    assert unreadable == [1, 2]


# Another process asking for the ledger's lock without waiting: exit 0 if it got it, 3 if refused.
PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
sys.exit(0)
"""


def another_process_gets_the_lock(path: Path) -> bool:
    code = subprocess.run([sys.executable, "-c", PROBE, str(path)], timeout=30).returncode
    assert code in (0, 3), f"the probe failed (exit {code})"
    return code == 0


@pytest.mark.parametrize(
    "write",
    [
        lambda ledger: ledger.record(line(1)),
        lambda ledger: ledger.record_unless_claimed({k: v for k, v in line(1).items() if k != "applied"}),
    ],
    ids=["record", "record_unless_claimed"],
)
def test_another_process_cannot_take_the_lock_while_a_line_is_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Callable[[Ledger], object]
) -> None:
    """Workers on one workspace are separate processes: the append's lock must hold them off, not only threads."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(line(0, applied=False))
    real_fsync = os.fsync
    probed: list[bool] = []

    def probe_then_fsync(fd: int) -> None:
        # Called inside the append, with the line written and the lock held: ask from outside now.
        probed.append(another_process_gets_the_lock(ledger.path))
        real_fsync(fd)

    with monkeypatch.context() as m:
        m.setattr(release_management.os, "fsync", probe_then_fsync)
        write(ledger)
    assert probed == [False], "another process took the ledger's lock in the middle of an append"
    # Once the append is done the lock is free: the probe can succeed, so its refusal above means something.
    assert another_process_gets_the_lock(ledger.path)
    assert len(ledger.entries()) == 2
