"""The release management system being orchestrated: catalog, builds, promotions, tests.

Plain Python with no temporalio import, so it can be used and tested on its own.
Every step is idempotent: run twice for the same release run it has the effect of
once. The ledger records every execution of a step, and says which one applied it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from commands import CommandFailed, CommandRefused, StepCommand, StepCommands, placeholders_for, run_command
from shared import (
    ARTIFACTORY,
    DEFAULT_CHECKS,
    ENVIRONMENTS,
    HEALTH,
    MAX_CHECKS,
    MAX_FREEZE_WINDOWS,
    STOP_ALL,
    ApprovalPolicy,
    ApprovalRecord,
    ApprovalReport,
    ConfigValue,
    DeployInfo,
    FreezeWindow,
    OnFailure,
    ReleaseInfo,
    StepInput,
    check_check_name,
    check_config,
    check_release_key,
    clip,
    describe_validation_error,
)


class ReleaseError(Exception):
    """A problem that retrying cannot fix: the release must stop and say why."""


class UnknownRelease(ReleaseError):
    pass


class CatalogError(ReleaseError):
    pass


class MissingArtifact(ReleaseError):
    pass


class InvalidStep(ReleaseError):
    """A step whose input fails validation, as a client that skipped it could send."""


class NotVerified(ReleaseError):
    """A promotion of a version the ledger does not show passing its tests in the environment before."""


class GateFailed(ReleaseError):
    """A quality gate's verdict: final for this version in this environment, whatever a retry would do."""


class VerificationFailed(ReleaseError):
    """The health check after a deploy's tests failed: final, like a gate."""


# Error types a retry cannot fix; workflows list them in their retry policies.
NON_RETRYABLE_ERRORS = [
    c.__name__
    for c in (UnknownRelease, CatalogError, MissingArtifact, InvalidStep, NotVerified, GateFailed, VerificationFailed)
]

# An error message quotes at most this much of what it read, so one line stays one line.
QUOTE_MAX = 300


class StepOutcome(NamedTuple):
    artifact: str
    # False when this execution found the effect already in place (and the ledger already claims it).
    applied: bool


def _noop() -> None:
    pass


def _never() -> bool:
    return False


def _commands(d: DeployInfo) -> StepCommands:
    """d's step commands; none (all simulated) when the catalog gives none. Checked again here: the
    payload may come from an older release, or a client that skipped the catalog."""
    return StepCommands.model_validate(d.commands or {})


# How much of a check command's output its report keeps (all of it is in the log beside the report).
OUTPUT_KEPT = 2000


def _command_output(log: Path | None) -> dict[str, str]:
    """The report's fields for a check run as a command: its log's name and the end of its output."""
    if log is None:
        return {}
    try:
        text = log.read_bytes()[-OUTPUT_KEPT:].decode(errors="replace")
    except FileNotFoundError:
        text = ""
    return {"log": log.name, "output": text}


def _bytes_of(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden temporary file and a rename, so a crash leaves old or new, never half."""
    # A name of its own per writer: two releases building the same artifact at once
    # must not write into one temporary file and rename each other's half-written data.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def identity_of(entry: Mapping[str, object]) -> tuple[object, ...]:
    """What a ledger line is about: one step of one deploy in one environment of one release run.

    A try a person asked for (retry, see StepInput) is a step of its own; lines without one keep their identity.
    """
    identity = tuple(entry.get(k) for k in ("run_id", "deploy_key", "step", "env"))
    return (*identity, entry["retry"]) if entry.get("retry") else identity


class Ledger:
    """Append-only JSON lines, one per execution of a step: the evidence of what ran and what it changed.

    Every execution that completes is recorded, retries included. Of the lines about one
    (run, deploy, step, environment), exactly one says "applied": true: the execution that
    put the effect in place; the others found it done and say false.

    Whether a line claims an effect already is answered by an index beside the ledger
    (ledger.index.sqlite: see _ClaimIndex), so each call costs the same at 10 lines or 100,000
    (resources/bench_ledger.py); reading the whole ledger for it took 1-1.5 s at 100,000 lines.
    The ledger stays the source of truth: the index is derived from its bytes, and can be deleted
    at any time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = _ClaimIndex(path.with_name(f"{path.stem}.index.sqlite"))

    def record(self, entry: Mapping[str, object]) -> None:
        """Append entry as one line; O(1), whatever the ledger's size."""
        # build=False: an index that is missing stays so, and one that must be built again is removed,
        # for the next check to build: an append never reads the whole ledger.
        with self._locked() as fd, self._indexed(fd, build=False):
            self._append(fd, entry)

    def record_unless_claimed(self, entry: Mapping[str, object]) -> bool:
        """Append entry with applied true if no line claims its effect yet, else false; return which.

        O(1), through the index; the first check after the index was lost rebuilds it: O(n), once.
        """
        with self._locked() as fd, self._indexed(fd, build=True) as index:
            identity = identity_of(entry)
            claimed = index.claimed(identity) if index is not None else None
            if claimed is None:
                # No index to be had (no room for it, say): the ledger answers, read whole, as before there was one.
                claimed = _claimed(self._read(fd)[0], identity)
            applied = not claimed
            self._append(fd, {**entry, "applied": applied})
            return applied

    def verified(self, container: str, version: str, place: str) -> bool:
        """Whether the ledger records container at version built (place "artifactory"), or whether its latest
        tests in place passed: a later failure there takes back an earlier pass, whichever run it was.

        O(1) through the index, like record_unless_claimed.
        """
        if not self.path.exists():
            return False  # nothing was ever recorded, and a question creates no ledger
        proof = (container, version, place)
        with self._locked() as fd, self._indexed(fd, build=True) as index:
            found = index.verified(proof) if index is not None else None
            if found is None:
                found = False
                for e in self._read(fd)[0]:
                    if (p := _proof_of(e)) is not None and p[0] == proof:
                        found = p[1]
            return found

    def applied_before(self, identity: tuple[object, ...]) -> bool:
        """Whether a line claims the effect of identity (see identity_of); reads the whole ledger."""
        return _claimed(self.entries(), identity)

    def entries(self) -> list[dict[str, object]]:
        return self.read()[0]

    def read(self) -> tuple[list[dict[str, object]], list[int]]:
        """The entries, and the 1-based numbers of lines that are not JSON objects (skipped)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return [], []
        try:
            # Shared lock: never read a line an append has only half written.
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._read(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        # The lock orders appends (and the rare check-then-append) across workers sharing the workspace.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _indexed(self, fd: int, build: bool) -> Iterator[_ClaimIndex | None]:
        # Inside the lock: one index transaction around the check and the append, committed (the new
        # line indexed) once the line is in the ledger, rolled back if the append fails.
        index = self.index if self.index.begin(fd, build) else None
        try:
            yield index
        except BaseException:
            if index is not None:
                index.rollback()
            raise
        if index is not None:
            index.commit(fd)

    @staticmethod
    def _append(fd: int, entry: Mapping[str, object]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        size = os.fstat(fd).st_size
        # A crash mid-append can leave a torn last line with no newline; glued onto it,
        # this record would be unreadable too, so it starts a line of its own.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line) :]
        os.fsync(fd)

    @staticmethod
    def _read(fd: int) -> tuple[list[dict[str, object]], list[int]]:
        return _parse(_read_bytes(fd, 0))


def _read_bytes(fd: int, start: int, end: int | None = None) -> bytes:
    """The file's bytes from start to end (or to its end)."""
    chunks, offset = [], start
    while end is None or offset < end:
        chunk = os.pread(fd, 1 << 16 if end is None else min(1 << 16, end - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> tuple[list[dict[str, object]], list[int]]:
    """The entries in ledger bytes that start a line, and the 1-based numbers of lines that are not JSON objects."""
    entries: list[dict[str, object]] = []
    unreadable: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = None
        # A torn line, or anything not written by record, is not evidence of a step.
        if isinstance(value, dict):
            entries.append(value)
        else:
            unreadable.append(number)
    return entries, unreadable


def _claims(entry: Mapping[str, object]) -> bool:
    # Lines written before "applied" existed were each one applied effect.
    return entry.get("applied", True) is True


def _claimed(entries: list[dict[str, object]], identity: tuple[object, ...]) -> bool:
    return any(_claims(e) and identity_of(e) == identity for e in entries)


def _proof_of(entry: Mapping[str, object]) -> tuple[tuple[object, object, object], bool] | None:
    """What a ledger line says for promotions: ((container, version, "artifactory"), True) for a build,
    ((container, version, env), passed) for tests in env; None for anything else.

    Test lines written before quality gates have no "passed": those tests could only pass.
    """
    step = entry.get("step")
    if step == "build":
        return (entry.get("container"), entry.get("version"), ARTIFACTORY), True
    if step == "test":
        return (entry.get("container"), entry.get("version"), entry.get("env")), entry.get("passed", True) is True
    return None


# Connections to an index that a forked child inherited: SQLite forbids using them in the child, closing
# included, so they are kept here, unused, for its life.
_INHERITED: list[sqlite3.Connection] = []


class _ClaimIndex:
    """The identities that ledger lines claim (applied true), and how much of the ledger that covers.

    A SQLite database in WAL mode beside the ledger (with its -wal and -shm files). It is opened,
    read and written only inside the ledger's exclusive flock, which already orders the workers
    sharing a workspace, and it learns only from the ledger's own bytes, parsed as Ledger.read
    parses them: it answers as a full read would. Each use first checks what it covers against the
    ledger, in O(1):
    - lines past the covered end (appended by an older version, by hand, or by a crash between the
      append and the index's commit) are indexed then: that tail only;
    - a ledger shorter than that end, another file in its place, other bytes just before that end,
      or an index missing, corrupt, unreadable or of another format: the index is built again from
      the whole ledger, once (3 s at 100,000 lines on a busy 2-core machine). An edit by hand that
      keeps the ledger's length and its last bytes goes unnoticed: delete the index after one.

    Why this design (measured on ext4, 2 cores; the ledger's own append and fsync take 0.35-1 ms):
    - a connection kept open costs 0.05 ms a call; one opened for each call costs 0.4-2.5 ms
      (journal files created and removed, a checkpoint with fsyncs on each close);
    - WAL with synchronous=NORMAL commits without an fsync, yet a power cut can only lose the last
      commits, never leave the index inconsistent: what it lost is a tail, indexed again from the
      ledger, which is fsynced before the index commits;
    - an in-memory set per process needs no file, but each worker would read the whole ledger on
      its first check and keep every identity in memory.
    A connection closed when its Ledger is collected can checkpoint (copy committed pages into the
    database file) outside the flock: SQLite's own locks order that, and it changes no answer.
    """

    # 3: proofs (builds, and the latest verdict of tests) beside claims; an index of an older version is built again.
    VERSION = 3
    # How many bytes before the covered end the index keeps, to tell an appended ledger from a rewritten one.
    SEAL = 256
    # Seconds to wait for SQLite's own lock, which only a connection closing outside the flock can hold.
    BUSY_TIMEOUT = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        # (pid, st_dev, st_ino) of the file db has open: once the file is replaced or the process forked, reopen.
        self.opened: tuple[int, int, int] | None = None
        self.covered = 0
        self.warned = False

    def begin(self, fd: int, build: bool) -> bool:
        """Open a transaction on the index, covering the whole ledger; False if there is none to use.

        An index that must be built again is, if build; if not, it is removed, for the next check to build.
        """
        try:
            if self._caught_up(fd):
                return True
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
                # Still held after the busy timeout (by a connection closing in another process, or a
                # person's sqlite3 shell in a transaction): no sign of damage, so it stays; the ledger answers.
                self._close()
                return False
        except OSError:
            pass
        self._close()
        try:
            self._remove()
            if build:
                self._build(fd)
                return True
        except (sqlite3.Error, OSError) as e:
            self._close()
            self._warn(e)
        return False

    def claimed(self, identity: tuple[object, ...]) -> bool | None:
        """Whether a line claims identity; None if the index fails (then the ledger answers)."""
        assert self.db is not None
        try:
            return self.db.execute("SELECT 1 FROM claims WHERE identity = ?", (_key(identity),)).fetchone() is not None
        except sqlite3.Error as e:
            self._close()
            self._warn(e)
            return None

    def verified(self, proof: tuple[object, ...]) -> bool | None:
        """Whether the latest line about proof proves it (see _proof_of); None if the index fails."""
        assert self.db is not None
        try:
            row = self.db.execute("SELECT passed FROM proofs WHERE proof = ?", (_key(proof),)).fetchone()
            return row is not None and bool(row[0])
        except sqlite3.Error as e:
            self._close()
            self._warn(e)
            return None

    def commit(self, fd: int) -> None:
        """Index what was appended since begin, and commit; if that fails, the next begin catches up."""
        if self.db is None:
            return
        try:
            self._index(fd, self.covered, os.fstat(fd).st_size)
            self.db.execute("COMMIT")
        except (sqlite3.Error, OSError):
            self._close()

    def rollback(self) -> None:
        if self.db is not None:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                self._close()

    def _caught_up(self, fd: int) -> bool:
        db = self._connect()
        if db is None:
            return False
        db.execute("BEGIN IMMEDIATE")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != self.VERSION:
            return False
        row = db.execute("SELECT dev, ino, covered, seal FROM coverage").fetchone()
        ledger = os.fstat(fd)
        if row is None or (row[0], row[1]) != (ledger.st_dev, ledger.st_ino):
            return False
        covered, seal = row[2], row[3]
        # Other bytes before the covered end: rewritten. Fewer: a shorter ledger (the seal never is empty but at 0).
        if _seal(fd, covered) != seal:
            return False
        self._index(fd, covered, ledger.st_size)
        return True

    def _connect(self) -> sqlite3.Connection | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        opened = (os.getpid(), st.st_dev, st.st_ino)
        if self.db is None or self.opened != opened:
            self._close()
            self.db, self.opened = _open_index(self.path, self.BUSY_TIMEOUT), opened
        return self.db

    def _build(self, fd: int) -> None:
        self.db = db = _open_index(self.path, self.BUSY_TIMEOUT)
        st = os.stat(self.path)
        self.opened = (os.getpid(), st.st_dev, st.st_ino)
        db.execute("BEGIN IMMEDIATE")
        db.execute("CREATE TABLE claims (identity TEXT PRIMARY KEY) WITHOUT ROWID")
        db.execute("CREATE TABLE proofs (proof TEXT PRIMARY KEY, passed INTEGER) WITHOUT ROWID")
        db.execute("CREATE TABLE coverage (dev INTEGER, ino INTEGER, covered INTEGER, seal BLOB)")
        db.execute("INSERT INTO coverage VALUES (0, 0, 0, x'')")
        db.execute(f"PRAGMA user_version = {self.VERSION}")
        self._index(fd, 0, os.fstat(fd).st_size)

    def _index(self, fd: int, start: int, end: int) -> None:
        """Note the claims in the ledger's bytes from start (where a line starts) to end; cover up to end.

        A last line without its newline is indexed as a reader sees it: the append that follows
        always starts a line of its own, so it stays that line.
        """
        assert self.db is not None
        if end > start:
            entries, _ = _parse(_read_bytes(fd, start, end))
            claims = sorted({_key(identity_of(e)) for e in entries if _claims(e)})
            # In key order SQLite fills its pages one after another: an index build takes half the time.
            self.db.executemany("INSERT OR IGNORE INTO claims VALUES (?)", ((k,) for k in claims))
            # In ledger order, the last line about each proof wins (a build's is always a pass).
            verdicts: dict[str, bool] = {}
            for e in entries:
                if (p := _proof_of(e)) is not None:
                    verdicts[_key(p[0])] = p[1]
            self.db.executemany(
                "INSERT OR REPLACE INTO proofs VALUES (?, ?)", ((k, int(v)) for k, v in sorted(verdicts.items()))
            )
        ledger = os.fstat(fd)
        self.db.execute(
            "UPDATE coverage SET dev = ?, ino = ?, covered = ?, seal = ?",
            (ledger.st_dev, ledger.st_ino, end, _seal(fd, end)),
        )
        self.covered = end

    def _close(self) -> None:
        db, opened, self.db, self.opened = self.db, self.opened, None, None
        if db is None:
            return
        if opened is not None and opened[0] != os.getpid():
            _INHERITED.append(db)
            return
        # A file deleted or replaced meanwhile is safe to close on: SQLite sees it moved, and then
        # neither checkpoints nor deletes the -wal file, which may by now be another index's.
        with suppress(sqlite3.Error):
            db.close()

    def _remove(self) -> None:
        # With its -wal and -shm files: nothing of it stays behind in the workspace.
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _warn(self, error: Exception) -> None:
        if not self.warned:
            self.warned = True
            logging.getLogger(__name__).warning(
                "ledger index %s cannot be used (%s); claim checks read the whole ledger", self.path, error
            )


def _open_index(path: Path, timeout: float) -> sqlite3.Connection:
    # isolation_level None: transactions begin and end where _ClaimIndex says. check_same_thread off: the
    # worker's threads share a Ledger, and the flock already lets them in one at a time.
    db = sqlite3.connect(path, timeout, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


# Identities compare as JSON text; for the strings and nulls that steps and approvals write, as in Python.
# One encoder for all: json.dumps with options builds a new one per call, a third of an index build.
_key = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _seal(fd: int, end: int) -> bytes:
    start = max(end - _ClaimIndex.SEAL, 0)
    return _read_bytes(fd, start, end)


def _known_environment(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {clip(env)!r}; the environments are {', '.join(ENVIRONMENTS)}")
    return env


class CatalogRelease(BaseModel):
    release_key: str
    release_date: str | None = None
    approved: bool = True
    # Checked when the release starts (ReleaseEnvironments): a bad entry stops that release, not the others.
    environments: list[str] = Field(min_length=1)
    versions: dict[str, str] = Field(min_length=1)
    unapproved: list[str] = Field(default_factory=list)
    approval_policy: ApprovalPolicy | None = None
    on_failure: OnFailure | None = None


class ReleaseEnvironments(BaseModel):
    """A release's environments, as it starts: known names, consecutive in promotion order."""

    environments: list[Annotated[str, AfterValidator(_known_environment)]]

    @field_validator("environments")
    @classmethod
    def _consecutive(cls, v: list[str]) -> list[str]:
        idx = [ENVIRONMENTS.index(e) for e in v]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            # A promotion copies from the environment before, so a gap could never be verified.
            raise ValueError(
                f"{', '.join(v)} must be consecutive in the order {' → '.join(ENVIRONMENTS)} (PROD needs QC before it)"
            )
        return v


class EnvironmentSettings(BaseModel):
    """What the catalog says about one environment: its quality gates, configuration and freeze windows."""

    # A misspelt field ("check") would silently leave an environment without its gates.
    model_config = ConfigDict(extra="forbid")

    # None: the default checks of the environment (DEFAULT_CHECKS); [] : no quality gate.
    checks: list[Annotated[str, AfterValidator(check_check_name)]] | None = Field(default=None, max_length=MAX_CHECKS)
    config: dict[str, ConfigValue] = Field(default_factory=dict)
    freeze: list[FreezeWindow] = Field(default_factory=list, max_length=MAX_FREEZE_WINDOWS)

    @field_validator("checks")
    @classmethod
    def _checks(cls, v: list[str] | None) -> list[str] | None:
        if HEALTH in (v or []):
            raise ValueError(
                f"{HEALTH!r} is the health check that follows every environment's checks: name yours otherwise"
            )
        twice = sorted({c for c in v or [] if (v or []).count(c) > 1})
        if twice:
            raise ValueError(f"check {twice[0]!r} is named twice")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
        return check_config(v)


class Catalog(BaseModel):
    containers: dict[str, str]
    default_approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    # Absent: the release stops at the first gate or health failure and leaves it as it is (as before rollbacks).
    default_on_failure: OnFailure = Field(default_factory=lambda: STOP_ALL.model_copy())
    # Keys checked one by one with their values, so one reading names every problem.
    environments: dict[Annotated[str, AfterValidator(_known_environment)], EnvironmentSettings] = Field(
        default_factory=dict
    )
    releases: list[CatalogRelease]
    # Steps run as commands instead of the simulation (see commands.py); absent: all simulated.
    commands: StepCommands | None = None

    def settings(self, env: str) -> EnvironmentSettings:
        return self.environments.get(env) or EnvironmentSettings()

    def checks(self, env: str) -> list[str]:
        checks = self.settings(env).checks
        return list(DEFAULT_CHECKS.get(env, []) if checks is None else checks)


def _catalog_problem(err: ValidationError, text: str) -> str:
    """A validation error of the catalog in one line: the release (by key) and the field of each problem."""
    try:
        data = json.loads(text)
        releases = data.get("releases") if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        releases = None
    parts = []
    for e in err.errors():
        loc, msg = list(e.get("loc", ())), str(e.get("msg", "")).removeprefix("Value error, ")
        where = ""
        if loc[:1] == ["releases"] and len(loc) > 1 and isinstance(loc[1], int):
            entry = releases[loc[1]] if isinstance(releases, list) and loc[1] < len(releases) else None
            key = entry.get("release_key") if isinstance(entry, dict) else None
            where = f"release {clip(key)}: " if isinstance(key, str) else f"releases[{loc[1]}]: "
            loc = loc[2:]
        # "[key]": pydantic's mark of a dict key that fails, where the key itself says enough.
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "[key]").lstrip(".")
        parts.append(f"{where}{field}: {msg}" if field else f"{where}{msg}")
    return "; ".join(parts)


# Called by a step once its effect is in place, before its ledger line: (verb, step, attempt).
AfterEffect = Callable[[str, StepInput, int], None]


class ReleaseManagement:
    """Releases as data (the catalog) and the folders artifacts move through.

    after_effect, if set, is called by each step once its effect is in place (put there by
    this execution or an earlier one) and before its ledger line is written: the window in
    which a crash leaves an applied step unrecorded. Fault injection strikes there
    (FAILURE_AT=effect), so that tests make a retry really run an applied step again;
    midway likewise strikes between a deploy's artifact and its configuration (FAILURE_AT=midway).
    """

    def __init__(
        self,
        workspace: Path,
        catalog: Path,
        step_seconds: float = 0.0,
        after_effect: AfterEffect | None = None,
        failing_checks: frozenset[tuple[str, str, str]] = frozenset(),
        midway: AfterEffect | None = None,
    ) -> None:
        self.workspace = workspace
        self.catalog_path = catalog
        self.step_seconds = step_seconds
        self.after_effect = after_effect
        # (artifact, environment, check) of the quality-gate checks that fail (FAILING_CHECKS).
        self.failing_checks = failing_checks
        # Called by a deploy between its two writes, its artifact in place and its configuration not yet.
        self.midway = midway
        self.artifactory = workspace / "artifactory"
        self.ledger = Ledger(workspace / "ledger.jsonl")

    # --- catalog -------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The catalog, checked; any problem with it is a CatalogError of one line naming the file."""
        path = self.catalog_path
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CatalogError(f"cannot read release catalog {path}: {e.strerror or e}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CatalogError(f"release catalog {path} is not UTF-8: invalid byte at offset {e.start}") from None
        try:
            catalog = Catalog.model_validate_json(text)
        except ValidationError as e:
            raise CatalogError(
                f"release catalog {path} is invalid: {clip(_catalog_problem(e, text), QUOTE_MAX)}"
            ) from None
        except Exception as e:  # say, RecursionError on absurd nesting: still the catalog's fault
            raise CatalogError(f"release catalog {path} cannot be read: {type(e).__name__}") from None
        if not catalog.releases:
            raise CatalogError(f"release catalog {path} lists no releases")
        seen: set[str] = set()
        for r in catalog.releases:
            if r.release_key in seen:
                # First-wins would release whichever entry happens to come first, silently.
                raise CatalogError(f"release catalog {path} lists release {clip(r.release_key)!r} more than once")
            seen.add(r.release_key)
        return catalog

    def release_keys(self) -> list[str]:
        return [r.release_key for r in self.catalog().releases]

    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        catalog = self.catalog()
        entry = next((r for r in catalog.releases if r.release_key == release_key), None)
        if entry is None:
            known = clip(", ".join(r.release_key for r in catalog.releases), QUOTE_MAX)
            try:
                check_release_key(release_key)
                what = f"unknown release key {release_key!r}"
            except ValueError as e:
                what = str(e)  # names the rule or the limit, quoting the key clipped
            raise UnknownRelease(f"{what}; known keys: {known}")
        try:
            ReleaseEnvironments(environments=entry.environments)
        except ValidationError as e:
            problem = _catalog_problem(e, "")
            raise CatalogError(
                f"release catalog {self.catalog_path} is invalid: release {release_key}: {clip(problem, QUOTE_MAX)}"
            ) from None
        try:
            deploys = []
            for container, version in entry.versions.items():
                if container not in catalog.containers:
                    raise CatalogError(
                        f"release {release_key} names container {clip(container)!r}, "
                        f"which the catalog's containers do not list"
                    )
                deploys.append(
                    DeployInfo(
                        deploy_key=f"{release_key}:{container}",
                        container_id=container,
                        version=version,
                        git_url=catalog.containers[container],
                        environments=entry.environments,  # type: ignore[arg-type]
                        approved=container not in entry.unapproved,
                        checks={env: catalog.checks(env) for env in entry.environments},
                        commands=catalog.commands.model_dump(exclude_none=True) if catalog.commands else None,
                        config={env: catalog.settings(env).config for env in entry.environments},
                    )
                )
            return ReleaseInfo(
                release_key=release_key,
                release_date=entry.release_date,  # type: ignore[arg-type]
                approved=entry.approved,
                approval_policy=entry.approval_policy or catalog.default_approval_policy,
                deploys=deploys,
                freezes={e: catalog.settings(e).freeze for e in entry.environments if catalog.settings(e).freeze},
                on_failure=entry.on_failure or catalog.default_on_failure,
            )
        except ValidationError as e:
            raise CatalogError(
                f"release {release_key} in the catalog: {clip(describe_validation_error(e), QUOTE_MAX)}"
            ) from None

    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        return ApprovalReport(
            release_approved=release.approved,
            unapproved_deploys=[d.deploy_key for d in release.deploys if not d.approved],
        )

    def record_approval(self, record: ApprovalRecord, attempt: int = 1) -> None:
        """One ledger line per approved deploy (deploy_key is the release key for the release itself).

        A repeated call (a retry) adds lines with applied false: an approval is claimed once.
        """
        for deploy_key in record.deploy_keys:
            self.ledger.record_unless_claimed(
                {
                    "release_key": record.release_key,
                    "run_id": record.run_id,
                    "deploy_key": deploy_key,
                    "step": record.step,
                    "env": None,
                    **({"environments": record.environments} if record.environments else {}),
                    "approver": record.approver,
                    "attempt": attempt,
                    "at": record.approved_at.isoformat(timespec="milliseconds"),
                }
            )

    # --- steps ---------------------------------------------------------------

    def env_dir(self, env: str) -> Path:
        return self.workspace / "environments" / env

    def report_path(self, d: DeployInfo, env: str, check: str) -> Path:
        return self.artifactory / "reports" / _artifact(d) / f"{env}-{check}.json"

    def config_path(self, env: str, container: str) -> Path:
        return self.env_dir(env) / "config" / f"{container}.json"

    def contents(self, env: str) -> list[str]:
        """Artifacts deployed to env (hidden temporary files excluded)."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def build(
        self,
        step: StepInput,
        attempt: int = 1,
        progress: Callable[[], None] = _noop,
        cancelled: Callable[[], bool] = _never,
    ) -> StepOutcome:
        """Write the artifact; applied if this execution wrote it (it was missing or different)."""
        started = _now()
        step = _checked(step, "build")
        d = step.deploy
        self._work(progress)
        self.artifactory.mkdir(parents=True, exist_ok=True)
        artifact = self.artifactory / _artifact(d)
        command = _commands(d).build
        if command is not None:
            before = _bytes_of(artifact)
            log = self.artifactory / "reports" / _artifact(d) / "build.log"
            self._run(command, step, None, artifact, log, progress, cancelled)
            if not artifact.is_file():
                raise CommandFailed(f"the build command left no {artifact.name} in the artifactory")
            applied = _bytes_of(artifact) != before
        else:
            content = build_content(d, step.release_key)
            applied = not artifact.exists() or artifact.read_bytes() != content
            if applied:
                atomic_write(artifact, content)
        self._effect_in_place("build", step, attempt)
        return StepOutcome(artifact.name, self._record(step, "build", attempt, started, applied))

    def deploy(
        self,
        step: StepInput,
        attempt: int = 1,
        progress: Callable[[], None] = _noop,
        cancelled: Callable[[], bool] = _never,
    ) -> StepOutcome:
        """Copy the artifact from the environment before, with its configuration; applied if it changed a file.

        Refused (NotVerified) unless the ledger shows this version passing its tests in the
        environment before (DEV: built into the artifactory): a file there is not enough.

        The configuration file is the commit point. The new artifact goes in beside the old one,
        then the configuration naming it, then the old artifact goes: a crash between any two
        leaves a configuration beside the artifact it names, never beside another version alone.

        The caller runs one deploy per environment and container at a time (a lock held
        outside): removing the container's other versions then never removes a version
        another deploy just put there.
        """
        started = _now()
        step = _checked(step, "deploy")
        d, env = step.deploy, step.env
        name = _artifact(d)
        source, missing = self._promotable(d, env, step.redeploy)
        self._work(progress)
        target_dir = self.env_dir(env)
        target_dir.mkdir(parents=True, exist_ok=True)
        self._keep_before(step)
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise missing from None  # removed while this step worked: no retry brings it back
        target = target_dir / name
        command = _commands(d).deploy
        if command is not None:
            before = _bytes_of(target)
            log = self.artifactory / "reports" / name / f"{env}-deploy.log"
            self._run(command, step, env, target, log, progress, cancelled)
            if _bytes_of(target) != data:
                raise CommandFailed(f"the deploy command did not put {name} from {source.parent.name} into {env}")
            applied = before != data
        else:
            applied = _write_if_changed(target, data)
        if self.midway is not None:
            self.midway("deploy", step, attempt)
        config = self.config_path(env, d.container_id)
        config.parent.mkdir(exist_ok=True)
        rendered = render_config(d, env, step.release_key)
        applied = _write_if_changed(config, rendered) or applied
        # Only once the new version and its configuration are in place does the old one go.
        for old in target_dir.iterdir():
            if (
                old.name != name
                and old.is_file()
                and not old.name.startswith(".")
                and _container_of(old.name) == d.container_id
            ):
                try:
                    old.unlink()
                except FileNotFoundError:
                    continue
                applied = True
        self._effect_in_place("deploy", step, attempt)
        # The config's digest: the inventory tells a config edited by hand from the one deployed.
        extra = {"config_sha256": hashlib.sha256(rendered).hexdigest()}
        return StepOutcome(name, self._record(step, "deploy", attempt, started, applied, extra))

    def test(
        self,
        step: StepInput,
        attempt: int = 1,
        progress: Callable[[], None] = _noop,
        cancelled: Callable[[], bool] = _never,
    ) -> StepOutcome:
        """Run the environment's quality gates on the deployed artifact, then its health check; one report each.

        Applied if this execution wrote a report. A report this try already wrote is its verdict: a
        retry by Temporal never runs a check again, so a failure stays one (GateFailed, or
        VerificationFailed for the health check, both final), and a check that passed is not run
        twice. Only a new try that a person asks for (step.retry) runs them anew. The ledger line
        says whether the tests passed.
        """
        started = _now()
        step = _checked(step, "test")
        d, env = step.deploy, step.env
        name = _artifact(d)
        if not (self.env_dir(env) / name).is_file():
            raise MissingArtifact(f"cannot test {d.container_id} {d.version} in {env}: {env} does not hold {name}")
        self._work(progress)
        applied = False
        checks = d.checks_in(env)
        for check in [*checks, HEALTH]:
            report = self.report_path(d, env, check)
            verdict = _verdict(report, step.run_id, step.retry)
            if verdict is None:
                verdict = self._check(d, env, check, step, progress, cancelled)
                # A report of another run is replaced: the report says what this run found.
                report.parent.mkdir(parents=True, exist_ok=True)
                body = {
                    "container": d.container_id,
                    "version": d.version,
                    "environment": env,
                    "check": check,
                    "passed": verdict[0],
                    "findings": verdict[1],
                    "release_key": step.release_key,
                    "run_id": step.run_id,
                    **({"retry": step.retry} if step.retry else {}),
                    **_command_output(report.with_suffix(".log") if _commands(d).for_check(check) else None),
                    "started_at": started,
                    "finished_at": _now(),
                }
                atomic_write(report, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
                applied = True
            passed, findings = verdict
            if not passed:
                self._record(step, "test", attempt, started, applied, {"passed": False, "failed_check": check})
                finding = f": {findings[0]}" if findings else ""
                error = VerificationFailed if check == HEALTH else GateFailed
                raise error(clip(f"{name} failed {check} in {env}{finding}", QUOTE_MAX))
        self._effect_in_place("test", step, attempt)
        return StepOutcome(
            name, self._record(step, "test", attempt, started, applied, {"passed": True, "checks": checks})
        )

    def rollback(
        self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop, by: str | None = None
    ) -> StepOutcome:
        """Give step.env back exactly what it held of the container before this run deployed there.

        The artifact files and the config file, byte for byte, or nothing if it held nothing. In the
        order a deploy writes (old artifact beside the new, then the config, then the other removed),
        so a crash leaves the old pair or the new, never a config beside another version alone.
        Idempotent; a run that never deployed there has nothing to give back, and records nothing.
        """
        started = _now()
        step = _checked(step, "roll back")
        d, env = step.deploy, step.env
        kept = self._kept(step)
        if not kept.is_dir():
            return StepOutcome("", False)
        self._work(progress)
        target_dir = self.env_dir(env)
        old = sorted(
            p.name for p in kept.iterdir() if p.name != KEPT_CONFIG and _container_of(p.name) == d.container_id
        )
        applied = False
        for name in old:
            applied = _write_if_changed(target_dir / name, (kept / name).read_bytes()) or applied
        if self.midway is not None:
            self.midway("rollback", step, attempt)
        config = self.config_path(env, d.container_id)
        if (kept / KEPT_CONFIG).is_file():
            applied = _write_if_changed(config, (kept / KEPT_CONFIG).read_bytes()) or applied
        elif config.exists():
            config.unlink()
            applied = True
        for other in self._held(env, d.container_id):
            if other.name not in old:
                other.unlink(missing_ok=True)
                applied = True
        restored = self._holder_before(env, d.container_id, step.run_id) if old else None
        self._effect_in_place("rollback", step, attempt)
        extra = {"restored": restored, "by": by}
        # The artifact it holds again ("" for none), for the release to say what is where.
        return StepOutcome(old[0] if old else "", self._record(step, "rollback", attempt, started, applied, extra))

    def _kept(self, step: StepInput) -> Path:
        return self.env_dir(step.env) / ".rollback" / step.run_id / step.deploy.container_id

    def _held(self, env: str, container: str) -> list[Path]:
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return [
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and _container_of(p.name) == container
        ]

    def _keep_before(self, step: StepInput) -> None:
        """Keep what step.env holds of the container, once per run, before this run's deploy changes it."""
        kept = self._kept(step)
        if kept.is_dir():
            return  # kept by an earlier attempt, before anything was changed
        kept.parent.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f".{kept.name}.{secrets.token_hex(4)}.partial")
        partial.mkdir()
        for held in self._held(step.env, step.deploy.container_id):
            atomic_write(partial / held.name, held.read_bytes())
        config = self.config_path(step.env, step.deploy.container_id)
        if config.is_file():
            atomic_write(partial / KEPT_CONFIG, config.read_bytes())
        # Whole or not at all: a crash before the rename leaves a partial folder, and the retry keeps anew.
        os.rename(partial, kept)

    def _holder_before(self, env: str, container: str, run_id: str) -> dict[str, object] | None:
        """Who put what env holds of container there, as the ledger says, leaving out run_id's own lines.

        Reads the whole ledger: a rollback is rare, and a deploy must not pay for it.
        """
        holder: dict[str, object] | None = None
        for e in self.ledger.entries():
            if e.get("env") != env or e.get("container") != container or e.get("run_id") == run_id or not _claims(e):
                continue
            if e.get("step") == "deploy":
                holder = {k: e.get(k) for k in ("version", "release_key", "run_id", "at", "config_sha256")}
            elif e.get("step") == "rollback":
                restored = e.get("restored")
                holder = restored if isinstance(restored, dict) else None
        return holder

    def rollback_env(self, env: str, container: str, by: str, to: str | None = None) -> ReleaseInfo:
        """The release that re-promotes into env the version of container that passed its tests there before
        the one it holds (or version `to`, which must have): from the artifactory, with the env's gates.

        ReleaseError says why not, in one line. Reads the whole ledger: a rollback is rare.
        """
        catalog = self.catalog()
        if container not in catalog.containers:
            raise CatalogError(f"the catalog has no container {clip(container)!r}: {', '.join(catalog.containers)}")
        _known_environment(env)
        held: str | None = None
        verdicts: dict[str, bool] = {}
        for e in self.ledger.entries():
            if e.get("env") != env or e.get("container") != container or not _claims(e):
                continue
            if e.get("step") == "deploy":
                held = str(e.get("version"))
            elif e.get("step") == "rollback":
                restored = e.get("restored")
                held = str(restored.get("version")) if isinstance(restored, dict) else None
            elif e.get("step") == "test":
                version = str(e.get("version"))
                verdicts.pop(version, None)  # keeps them in the order of their latest verdict
                verdicts[version] = e.get("passed", True) is True
        passed = [v for v, ok in verdicts.items() if ok and v != held]
        if to is not None:
            if not verdicts.get(to):
                raise NotVerified(
                    f"cannot roll back {env} {container} to {clip(to)}: it never passed its tests in {env}"
                )
            version = to
        elif not passed:
            now = f"it holds {container}-{held}" if held else f"it holds no {container}"
            raise NotVerified(f"cannot roll back {env} {container}: no other version passed its tests there ({now})")
        else:
            version = passed[-1]
        key = f"ROLLBACK-{env}-{container}"
        deploy = DeployInfo(
            deploy_key=f"{key}:{container}",
            container_id=container,
            version=version,
            git_url=catalog.containers[container],
            environments=[env],  # type: ignore[list-item]
            checks={env: catalog.checks(env)},  # type: ignore[dict-item]
            config={env: catalog.settings(env).config},  # type: ignore[dict-item]
            commands=catalog.commands.model_dump(exclude_none=True) if catalog.commands else None,
        )
        return ReleaseInfo(
            release_key=key,
            now=True,
            deploys=[deploy],
            redeploy=True,
            requested_by=by,
            on_failure=catalog.default_on_failure,
        )

    def _check(
        self,
        d: DeployInfo,
        env: str,
        check: str,
        step: StepInput,
        progress: Callable[[], None],
        cancelled: Callable[[], bool],
    ) -> tuple[bool, list[str]]:
        """A check's verdict: its command's (exit 0 passes; a final failure fails, with its last lines as the
        finding; "try again" raises), or the simulation's, which fails where FAILING_CHECKS says."""
        command = _commands(d).for_check(check)
        if command is not None:
            log = self.report_path(d, env, check).with_suffix(".log")
            try:
                self._run(command, step, env, self.env_dir(env) / _artifact(d), log, progress, cancelled, check)
            except CommandRefused:
                raise  # nothing ran: a mistake in the catalog, not the check's verdict
            except CommandFailed as e:
                return False, [str(e)]
            return True, []
        if (_artifact(d), env, check) in self.failing_checks:
            return False, [f"FAILING_CHECKS names {_artifact(d)}:{env}:{check}"]
        return True, []

    def _run(
        self,
        command: StepCommand,
        step: StepInput,
        env: str | None,
        artifact: Path,
        log: Path,
        progress: Callable[[], None],
        cancelled: Callable[[], bool],
        check: str | None = None,
    ) -> None:
        """Run a step's command in the workspace, its output in log; CommandError says how it failed."""
        log.parent.mkdir(parents=True, exist_ok=True)
        values = placeholders_for(step.deploy, step.release_key, env, artifact, check)
        run_command(command, values, self.workspace, log, heartbeat=progress, cancelled=cancelled)

    def check_upstream(self, release: ReleaseInfo) -> None:
        """Refuse, before any of them starts, a release whose deploys cannot enter their first environment.

        Deploys that start in DEV are built by the release itself; the others promote what the
        environment before holds, and must be verified there. Checked again by each deploy.
        """
        refusals: list[ReleaseError] = []
        for d in release.deploys:
            if d.environments[0] != ENVIRONMENTS[0] or release.redeploy:
                try:
                    self._promotable(d, d.environments[0], release.redeploy)
                except ReleaseError as e:
                    refusals.append(e)
        if refusals:
            raise type(refusals[0])(clip("; ".join(str(e) for e in refusals), QUOTE_MAX * 3))

    def _promotable(self, d: DeployInfo, env: str, redeploy: bool = False) -> tuple[Path, MissingArtifact]:
        """The source file of d's promotion into env, and the error to raise if it goes missing.

        NotVerified unless the ledger shows d's version passing its tests in the environment before
        (DEV: built into the artifactory): a file there is not enough. MissingArtifact if it is not there.
        A redeploy (rollback-env) takes the artifactory's copy of a version that passed in env itself.
        """
        source_dir, source_label = (self.artifactory, "the artifactory") if redeploy else self._source(env)
        upstream = ENVIRONMENTS[ENVIRONMENTS.index(env) - 1] if env != ENVIRONMENTS[0] else ARTIFACTORY
        upstream = env if redeploy else upstream
        if not self.ledger.verified(d.container_id, d.version, upstream):
            why = (
                "the artifactory never built it"
                if upstream == ARTIFACTORY
                else f"it never passed its tests in {upstream}"
            )
            raise NotVerified(f"cannot deploy {d.container_id} {d.version} to {env}: {why}")
        name = _artifact(d)
        missing = MissingArtifact(
            f"cannot deploy {d.container_id} {d.version} to {env}: {source_label} does not hold {name}"
        )
        if not (source_dir / name).is_file():
            raise missing
        return source_dir / name, missing

    def _source(self, env: str) -> tuple[Path, str]:
        i = ENVIRONMENTS.index(env)
        if i == 0:
            return self.artifactory, "the artifactory"
        return self.env_dir(ENVIRONMENTS[i - 1]), ENVIRONMENTS[i - 1]

    def _effect_in_place(self, verb: str, step: StepInput, attempt: int) -> None:
        if self.after_effect is not None:
            self.after_effect(verb, step, attempt)

    def _work(self, progress: Callable[[], None]) -> None:
        # Simulated work, in short slices so the caller can report liveness. A step that takes
        # no time has none to report: a heartbeat would cost it a round trip to the server.
        deadline = time.monotonic() + self.step_seconds
        while (left := deadline - time.monotonic()) > 0:
            progress()
            time.sleep(min(left, 0.5))

    def _record(
        self,
        step: StepInput,
        verb: str,
        attempt: int,
        started_at: str,
        applied: bool,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Record this execution; return whether the ledger counts it as the one that applied the step."""
        d = step.deploy
        entry: dict[str, object] = {
            **(extra or {}),
            "release_key": step.release_key,
            "run_id": step.run_id,
            "deploy_key": d.deploy_key,
            "container": d.container_id,
            "version": d.version,
            "step": verb,
            "env": step.env,
            **({"retry": step.retry} if step.retry else {}),
            "attempt": attempt,
            "started_at": started_at,
            "at": _now(),
        }
        if applied:
            self.ledger.record({**entry, "applied": True})
            return True
        # The effect was in place already. Usually an earlier execution applied it and
        # recorded so; but a crash between the effect and its ledger line leaves no line
        # claiming it, and then this execution claims it, so that exactly one applied line
        # exists per step. (An earlier execution still running, cut off but not dead,
        # could then record a second one; the lock around deploys makes that rare.)
        return self.ledger.record_unless_claimed(entry)


def _checked(step: StepInput, verb: str) -> StepInput:
    """step, validated again: a client that skipped validation must not make a step write outside its folders."""
    try:
        return StepInput.model_validate(step.model_dump(warnings=False))
    except ValidationError as e:
        raise InvalidStep(f"refusing to {verb}: {clip(describe_validation_error(e), QUOTE_MAX)}") from None


def _verdict(report: Path, run_id: str, retry: int = 0) -> tuple[bool, list[str]] | None:
    """(passed, findings) of a check report this run's try wrote; None if there is none that reads."""
    try:
        body = json.loads(report.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # not a report this tool wrote whole: run the check again
    if not isinstance(body, dict) or body.get("run_id") != run_id or body.get("retry", 0) != retry:
        return None
    findings = body.get("findings")
    return body.get("passed") is True, [str(f) for f in findings] if isinstance(findings, list) else []


# The config file as a rollback keeps it: not an artifact's name, which has a version after its last "-".
KEPT_CONFIG = "config.json"


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write data atomically unless path already holds it; whether it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, data)
    return True


def render_config(d: DeployInfo, env: str, release_key: str) -> bytes:
    """The configuration file of d in env: the catalog's values for env, and the artifact they go with.

    "{container}", "{version}" and "{env}" in a string value are replaced, so one endpoint serves every container.
    """
    values = {
        key: value.replace("{container}", d.container_id).replace("{version}", d.version).replace("{env}", env)
        if isinstance(value, str)
        else value
        for key, value in d.config.get(env, {}).items()  # type: ignore[call-overload]
    }
    body = {
        "artifact": _artifact(d),
        "container": d.container_id,
        "version": d.version,
        "environment": env,
        "release_key": release_key,
        "values": values,
    }
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def _artifact(d: DeployInfo) -> str:
    return f"{d.container_id}-{d.version}"


def _container_of(artifact_name: str) -> str:
    return artifact_name.rsplit("-", 1)[0]


def build_content(d: DeployInfo, release_key: str) -> bytes:
    return (f"container: {d.container_id}\nversion: {d.version}\nrelease: {release_key}\ngit: {d.git_url}\n").encode()
