"""The ledger: every execution recorded, one applied line per step, and lines it cannot read survived."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import release_management
from orchestrator import ledger_index
from orchestrator.ledger import Ledger
from orchestrator.ledger_chain import line_hash
from orchestrator.ledger_format import identity_of
from release_management import ReleaseManagement
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


def unlinked(read: Any) -> Any:
    """Ledger entries (or what read() returns) without their links to the line before: what the tests wrote."""
    if isinstance(read, tuple):
        return unlinked(read[0]), read[1]
    return [{k: v for k, v in e.items() if k != "prev"} for e in read]


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
    assert unlinked(ledger.read()) == ([line(1), line(2), line(3)], [3])
    torn = b'{"run_id": "run-1", "st'
    assert json.loads(ledger.path.read_bytes().splitlines()[-1]) == {**line(3), "prev": line_hash(torn)}
    ledger.record(line(4))  # an intact last line needs no newline of its own
    assert unlinked(ledger.read()) == ([line(1), line(2), line(3), line(4)], [3])


def test_unreadable_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(line(1))
    with open(ledger.path, "ab") as f:
        f.write(b'[1,2]\ngarbage\n"text"\nnull\n\xff\xfe{}\n\n' + b"[" * 100_000 + b"\n")
    ledger.record(line(2))
    assert unlinked(ledger.read()) == ([line(1), line(2)], [2, 3, 4, 5, 6, 8])
    assert unlinked(ledger.entries()) == [line(1), line(2)]
    assert ledger.applied_before(identity_of(line(1)))


def test_a_missing_ledger_is_empty_and_record_creates_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "new" / "ledger.jsonl")
    assert unlinked(ledger.read()) == ([], [])
    assert not ledger.applied_before(identity_of(line(1)))
    ledger.record(line(1))
    assert unlinked(ledger.entries()) == [line(1)]


def test_record_appends_every_entry_without_reading_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")

    def no_reading(fd: int) -> None:
        raise AssertionError("record read the ledger")

    with monkeypatch.context() as m:
        m.setattr(Ledger, "_read", staticmethod(no_reading))
        ledger.record(line(1))
        ledger.record(line(1))
    assert unlinked(ledger.entries()) == [line(1), line(1)]


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


@pytest.mark.parametrize("index", [True, False], ids=["index", "whole-ledger"])
def test_a_try_a_person_asked_for_is_a_claim_of_its_own(tmp_path: Path, index: bool) -> None:
    """A line with retry > 0 (the hold policy's retry) is another step; lines without one keep their identity."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    if not index:
        ledger.index.path.mkdir()  # no index to be had: the whole ledger answers
    entry = {k: v for k, v in line(1).items() if k != "applied"}
    assert identity_of(entry) == ("run-1", f"{KEY}:frontend", "deploy", "DEV")
    assert identity_of({**entry, "retry": 0}) == identity_of(entry)
    assert identity_of({**entry, "retry": 2}) == (*identity_of(entry), 2)
    assert ledger.record_unless_claimed(entry) is True
    assert ledger.record_unless_claimed({**entry, "retry": 1}) is True
    assert ledger.record_unless_claimed({**entry, "retry": 1}) is False
    assert ledger.record_unless_claimed({**entry, "retry": 2}) is True
    assert ledger.record_unless_claimed(entry) is False
    assert [(e.get("retry"), e["applied"]) for e in ledger.entries()] == [
        (None, True),
        (1, True),
        (1, False),
        (2, True),
        (None, False),
    ]


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
        m.setattr(os, "fsync", probe_then_fsync)
        write(ledger)
    assert probed == [False], "another process took the ledger's lock in the middle of an append"
    # Once the append is done the lock is free: the probe can succeed, so its refusal above means something.
    assert another_process_gets_the_lock(ledger.path)
    assert len(ledger.entries()) == 2


# --- the claim index -------------------------------------------------------------------------------------


def step_line(i: int, applied: bool | None = True, run: str = "run") -> dict[str, object]:
    """A line about step i, an identity of its own; applied None: a line from before "applied" existed."""
    entry: dict[str, object] = {
        "run_id": f"{run}-{i}",
        "deploy_key": f"{KEY}:frontend",
        "step": "deploy",
        "env": "DEV",
        "attempt": 1,
    }
    if applied is not None:
        entry["applied"] = applied
    return entry


def found_done(i: int, run: str = "run") -> dict[str, object]:
    """An execution of step i that finds its effect in place: what record_unless_claimed is given."""
    return {**step_line(i, applied=None, run=run), "attempt": 2}


def raw(*entries: dict[str, object]) -> bytes:
    return b"".join((json.dumps(e, sort_keys=True) + "\n").encode() for e in entries)


def append_behind_its_back(ledger: Ledger, data: bytes) -> None:
    # As an older version of the code, a person, or a crash between the append and the index's commit leaves it.
    with open(ledger.path, "ab") as f:
        f.write(data)


def index_files(ledger: Ledger) -> list[Path]:
    return [Path(f"{ledger.index.path}{suffix}") for suffix in ("", "-wal", "-shm")]


def ledger_with_index(tmp_path: Path, claimed: range) -> Ledger:
    """A ledger whose index exists and covers it: steps in `claimed` applied, each by its own line."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.path.write_bytes(raw(*(step_line(i) for i in claimed)))
    assert ledger.record_unless_claimed(found_done(claimed[0])) is False  # builds the index
    assert ledger.index.path.is_file()
    return ledger


def answers(ledger: Ledger, steps: range) -> list[bool]:
    """Whether each step is claimed, asked of the index, checked against a whole read of the ledger."""
    expected = [not ledger.applied_before(identity_of(found_done(i))) for i in steps]
    got = [ledger.record_unless_claimed(found_done(i)) for i in steps]
    assert got == expected, "the index answers otherwise than the ledger"
    return [not applied for applied in got]


@pytest.fixture(params=["same Ledger", "another process's Ledger"])
def reopen(request: pytest.FixtureRequest) -> Callable[[Ledger], Ledger]:
    """The Ledger that asks next: the one that built the index (its connection open), or a new one."""
    if request.param == "same Ledger":
        return lambda ledger: ledger
    return lambda ledger: Ledger(ledger.path)


def test_the_index_is_named_after_the_ledger_and_sits_beside_it(tmp_path: Path) -> None:
    ledger = ledger_with_index(tmp_path, range(3))
    assert ledger.index.path == tmp_path / "ledger.index.sqlite"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ledger.index.sqlite",
        "ledger.index.sqlite-shm",
        "ledger.index.sqlite-wal",
        "ledger.jsonl",
    ]


def test_lines_appended_behind_the_index_back_are_claims_too(
    tmp_path: Path, reopen: Callable[[Ledger], Ledger]
) -> None:
    ledger = ledger_with_index(tmp_path, range(3))
    append_behind_its_back(
        ledger,
        raw(step_line(10), step_line(11, applied=False), step_line(12, applied=None))
        + b"garbage\n"
        + json.dumps(step_line(13)).encode(),  # a last line without its newline: a reader counts it
    )
    ledger = reopen(ledger)
    # 10 and 12 (written before "applied" existed) and 13 are claimed; 11 found its step done, claims nothing.
    assert answers(ledger, range(15)) == [True, True, True] + [False] * 7 + [True, False, True, True, False]
    _, unreadable = ledger.read()
    assert json.dumps(step_line(13)).encode() in ledger.path.read_bytes().splitlines()  # a line of its own now
    assert unreadable == [8]
    # Claimed now, by the lines just written, which the index learnt as it appended them.
    assert answers(Ledger(ledger.path), range(15)) == [True] * 15


@pytest.mark.parametrize("deleted", ["the database", "the database, -wal and -shm"])
def test_a_deleted_index_is_built_again(tmp_path: Path, reopen: Callable[[Ledger], Ledger], deleted: str) -> None:
    ledger = ledger_with_index(tmp_path, range(5))
    assert ledger.record_unless_claimed(found_done(7)) is True
    files = index_files(ledger) if "-wal" in deleted else index_files(ledger)[:1]
    for p in files:
        p.unlink(missing_ok=True)
    ledger = reopen(ledger)
    assert answers(ledger, range(9)) == [True] * 5 + [False, False, True, False]
    assert ledger.index.path.is_file()


@pytest.mark.parametrize("spoilt", ["the database", "the database, -wal and -shm"])
def test_a_corrupt_index_is_built_again(tmp_path: Path, reopen: Callable[[Ledger], Ledger], spoilt: str) -> None:
    ledger = ledger_with_index(tmp_path, range(5))
    assert ledger.record_unless_claimed(found_done(7)) is True
    for p in index_files(ledger) if "-wal" in spoilt else index_files(ledger)[:1]:
        if p.exists():
            p.write_bytes(bytes(range(256)) * (max(p.stat().st_size, 4096) // 256))
    ledger = reopen(ledger)
    assert answers(ledger, range(9)) == [True] * 5 + [False, False, True, False]
    assert answers(Ledger(ledger.path), range(9)) == [True] * 9


def shorter(ledger: Ledger) -> None:
    ledger.path.unlink()
    ledger.path.write_bytes(raw(step_line(0), step_line(1)))


def truncated(ledger: Ledger) -> None:
    data = ledger.path.read_bytes()
    os.truncate(ledger.path, data.index(b'"run-2"'))  # in the middle of the line that claims step 2
    append_behind_its_back(ledger, b"\n")


def longer(ledger: Ledger) -> None:
    # Another ledger in its place, longer than the part the index covers, and not claiming steps 2-4.
    ledger.path.unlink()
    ledger.path.write_bytes(raw(step_line(0), step_line(1), *(step_line(i, run="other") for i in range(50))))


def same_length(ledger: Ledger) -> None:
    # Rewritten in place, byte for byte as long: steps 2-4 now of another run ("rUn-"), the end bytes differ.
    data = ledger.path.read_bytes()
    for i in (2, 3, 4):
        data = data.replace(f'"run-{i}"'.encode(), f'"rUn-{i}"'.encode())
    with open(ledger.path, "r+b") as f:
        f.write(data)


def saved_by_an_editor(ledger: Ledger) -> None:
    # A new file renamed into place (another inode), as long and with the same last lines: only steps 2
    # and 3 are of another run. Its end bytes tell nothing; that it is another file does.
    data = ledger.path.read_bytes()
    for i in (2, 3):
        data = data.replace(f'"run-{i}"'.encode(), f'"rUn-{i}"'.encode())
    new = ledger.path.with_name("ledger.jsonl.new")
    new.write_bytes(data)
    os.replace(new, ledger.path)


@pytest.mark.parametrize(
    ("change", "claimed"),
    [
        (shorter, [True, True, False, False, False, False]),
        (truncated, [True, True, False, False, False, False]),
        (longer, [True, True, False, False, False, False]),
        (same_length, [True, True, False, False, False, False]),
        (saved_by_an_editor, [True, True, False, False, True, False]),
    ],
)
def test_a_ledger_truncated_or_replaced_is_indexed_again(
    tmp_path: Path, reopen: Callable[[Ledger], Ledger], change: Callable[[Ledger], None], claimed: list[bool]
) -> None:
    ledger = ledger_with_index(tmp_path, range(5))
    change(ledger)
    ledger = reopen(ledger)
    # Steps 0-4 were claimed in the old ledger; where the new one does not claim a step, this execution does.
    assert answers(ledger, range(6)) == claimed


def covered(ledger: Ledger) -> int:
    """How much of the ledger the index says it covers (read from outside, as a person could)."""
    with closing(sqlite3.connect(f"file:{ledger.index.path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT covered FROM coverage").fetchone()[0])


def test_an_index_of_another_format_is_built_again(tmp_path: Path, reopen: Callable[[Ledger], Ledger]) -> None:
    ledger = ledger_with_index(tmp_path, range(5))
    with closing(sqlite3.connect(ledger.index.path, isolation_level=None)) as db:
        # As a later version might leave it: its claims elsewhere, and a format number of its own.
        db.execute("DELETE FROM claims")
        db.execute(f"PRAGMA user_version = {ledger_index.ClaimIndex.VERSION + 1}")
    ledger = reopen(ledger)
    assert answers(ledger, range(6)) == [True] * 5 + [False]


def test_a_ledger_follows_its_index_when_another_builds_it_anew(tmp_path: Path) -> None:
    ledger = ledger_with_index(tmp_path, range(3))
    for p in index_files(ledger):
        p.unlink()
    assert Ledger(ledger.path).record_unless_claimed(found_done(0)) is False  # a new index, another file
    ledger.record(step_line(7))  # by the Ledger whose connection is to the deleted one
    assert covered(ledger) == ledger.path.stat().st_size, "the line was indexed in the deleted index only"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_opens_the_index_anew(tmp_path: Path) -> None:
    """SQLite forbids using a connection in a child of the process that opened it, even to close it."""
    ledger = ledger_with_index(tmp_path, range(3))
    inherited = ledger.index.db
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            checks = [ledger.record_unless_claimed(found_done(1)), ledger.record_unless_claimed(found_done(5))]
            fresh = ledger.index.db is not inherited and ledger_index._INHERITED == [inherited]
            code = 0 if checks == [False, True] and fresh else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.index.db is inherited
    assert answers(ledger, range(7)) == [True, True, True, False, False, True, False]


def test_record_leaves_a_missing_or_stale_index_to_the_next_check(tmp_path: Path) -> None:
    """Building reads the whole ledger: only a check does it, never an append."""
    ledger = ledger_with_index(tmp_path, range(5))
    for p in index_files(ledger):
        p.unlink(missing_ok=True)
    ledger.record(step_line(5))
    assert not ledger.index.path.exists()
    assert answers(ledger, range(7)) == [True] * 6 + [False]
    shorter(ledger)
    ledger.record(step_line(6))  # the index covers more than the ledger now holds: it goes
    assert not ledger.index.path.exists()
    assert answers(ledger, range(8)) == [True, True, False, False, False, False, True, False]


def test_an_index_that_cannot_be_written_leaves_the_ledger_to_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.index.path.mkdir()  # a folder in its place: no database can be made there
    ledger.record(step_line(0))
    assert answers(ledger, range(3)) == [True, False, False]
    assert answers(ledger, range(3)) == [True, True, True]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "claim checks read the whole ledger" in warnings[0], warnings


def test_an_index_held_by_another_connection_is_kept_and_the_ledger_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = ledger_with_index(tmp_path, range(3))
    monkeypatch.setattr(type(ledger.index), "BUSY_TIMEOUT", 0.0)
    inode = ledger.index.path.stat().st_ino
    other = sqlite3.connect(ledger.index.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # say, a person looking into it with the sqlite3 shell
    try:
        assert answers(Ledger(ledger.path), range(5)) == [True, True, True, False, False]
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ledger.index.path.stat().st_ino == inode, "a busy index was taken for a broken one and built again"
    assert answers(ledger, range(5)) == [True] * 5


# Several workers on one workspace: each process checks and appends for the same steps, in turns it cannot choose.
RACER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from orchestrator.ledger import Ledger
ledger = Ledger(__import__("pathlib").Path(sys.argv[2]))
name, steps = sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()  # all start together, once every racer is ready
claimed = []
for round in range(3):
    for i in range(steps):
        entry = {"run_id": f"run-{i}", "deploy_key": "d", "step": "deploy", "env": "DEV", "by": name, "round": round}
        if ledger.record_unless_claimed(entry):
            claimed.append(i)
        ledger.record({**entry, "step": "noise", "applied": False})
print(json.dumps(claimed))
"""


@pytest.mark.parametrize("index", ["built by the racers", "none to be had"])
def test_processes_checking_at_once_claim_each_step_once(tmp_path: Path, index: str) -> None:
    """With an index, SQLite's own write lock would order the racers too; without one, only the flock does."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.path.write_bytes(raw(*(step_line(i, run="earlier") for i in range(200))))  # no index yet
    if index == "none to be had":
        ledger.index.path.mkdir()
    repo = str(Path(release_management.__file__).resolve().parent)
    steps = 40
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, repo, str(ledger.path), f"racer-{n}", str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    for r in racers:
        assert r.stdout is not None and r.stdout.readline() == "ready\n"
    for r in racers:
        assert r.stdin is not None
        r.stdin.write("go\n")
        r.stdin.flush()
    outputs = [r.communicate(timeout=120) for r in racers]
    assert [r.returncode for r in racers] == [0, 0, 0], outputs
    claimed = [i for out, _ in outputs for i in json.loads(out)]
    assert sorted(claimed) == list(range(steps)), "a step was claimed twice, or never"
    entries, unreadable = ledger.read()
    assert unreadable == []
    applied = [e["run_id"] for e in entries if e["deploy_key"] == "d" and e["applied"] is True]
    assert sorted(applied) == sorted(f"run-{i}" for i in range(steps))
    assert len(entries) == 200 + 3 * 3 * steps * 2


def test_threads_sharing_a_ledger_claim_each_step_once(tmp_path: Path) -> None:
    ledger = ledger_with_index(tmp_path, range(1))
    results: list[tuple[int, bool]] = []

    def check(t: int) -> None:
        for i in range(30):
            results.append((i, ledger.record_unless_claimed({**found_done(i), "thread": t})))

    threads = [threading.Thread(target=check, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(i for i, applied in results if applied) == list(range(1, 30))
    assert answers(Ledger(ledger.path), range(31)) == [True] * 30 + [False]


def test_a_check_reads_a_few_bytes_of_the_ledger_not_all_of_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = ledger_with_index(tmp_path, range(5000))
    size = ledger.path.stat().st_size
    assert size > 500_000
    read: list[int] = []
    real_pread, real_read = os.pread, os.read

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read.append(len(data))
        return data

    def read_(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read.append(len(data))
        return data

    def bytes_read_by(call: Callable[..., object], *args: object) -> int:
        read.clear()
        with monkeypatch.context() as m:
            m.setattr(os, "pread", pread)
            m.setattr(os, "read", read_)
            call(*args)
        return sum(read)

    # Found done (the claim far back in the ledger), not done yet, and a plain append; also by a new Ledger,
    # which opens the index afresh. Each reads the end of the ledger (a torn last line? the index's seal?) and
    # the line it appended, to index it: about a kilobyte, at 5,000 lines as at 5.
    for ledger_now in (ledger, Ledger(ledger.path)):
        assert bytes_read_by(ledger_now.record_unless_claimed, found_done(17)) < 2048
        assert bytes_read_by(ledger_now.record_unless_claimed, found_done(9999)) < 2048
        assert bytes_read_by(ledger_now.record, step_line(20000)) < 2048
        assert covered(ledger) == ledger.path.stat().st_size  # every line indexed: the next call reads no tail
    # Without its index, a check must read it all (which shows the count above can see a whole read),
    # and an append still does not.
    for p in index_files(ledger):
        p.unlink()
    assert bytes_read_by(Ledger(ledger.path).record, step_line(30000)) < 2048
    assert bytes_read_by(Ledger(ledger.path).record_unless_claimed, found_done(17)) > size
