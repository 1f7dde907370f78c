"""The ledger's index: a SQLite file beside ledger.jsonl that answers "already claimed?" and "verified?" in O(1).

Plain Python, no temporalio. Derived data only: it learns from the ledger's own bytes and can be deleted at any time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import suppress
from pathlib import Path

from orchestrator.ledger_chain import Chain, split_lines
from orchestrator.ledger_format import Proof, identity_of, is_claim, parse_lines, proof_of, read_bytes

# What _lookup answers when the index fails: the ledger answers instead.
FAILED = object()

# Connections to an index that a forked child inherited: SQLite forbids using them in the child, closing
# included, so they are kept here, unused, for its life.
_INHERITED: list[sqlite3.Connection] = []


class ClaimIndex:
    """The identities that ledger lines claim (applied true), the latest proof of each build and test, the hash
    chain's state, and how much of the ledger that covers.

    A SQLite database in WAL mode beside the ledger (with its -wal and -shm files). It is opened,
    read and written only inside the ledger's exclusive flock, which already orders the workers
    sharing a workspace, and it learns only from the ledger's own bytes, parsed as Ledger.read
    parses them: it answers as a full read would. Each use first checks what it covers against the
    ledger, in O(1):
    - lines past the covered end (appended by an older version, by hand, or by a crash between the
      append and the index's commit) are indexed then: that tail only;
    - a ledger shorter than that end, another file in its place, other bytes just before that end, a
      modification time other than the one its last append left (an edit in place, by hand), or an
      index missing, corrupt, unreadable or of another format: the index is built again from the whole
      ledger, once (3 s at 100,000 lines on a busy 2-core machine), and the chain checked from line 1.

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

    # 4: proofs with their digests, the chain, the ledger's mtime; an index of an older version is built again.
    VERSION = 4
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
        self.chain = Chain()
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
        found = self._lookup("SELECT 1 FROM claims WHERE identity = ?", identity)
        return None if found is FAILED else found is not None

    def verified(self, proof: tuple[object, ...]) -> Proof | None:
        """What the latest line about proof says (see proof_of); None if the index fails."""
        found = self._lookup("SELECT passed, sha256 FROM proofs WHERE proof = ?", proof)
        if found is FAILED:
            return None
        return Proof(False, None) if found is None else Proof(bool(found[0]), found[1])  # type: ignore[index]

    def _lookup(self, sql: str, key: tuple[object, ...]) -> tuple[object, ...] | None | object:
        """The row sql finds for key; FAILED if the index fails (it is closed, and warned about once)."""
        assert self.db is not None
        try:
            return self.db.execute(sql, (_key(key),)).fetchone()
        except sqlite3.Error as e:
            self._close()
            self._warn(e)
            return FAILED

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
        row = db.execute(f"SELECT dev, ino, covered, seal, mtime, {CHAIN_COLUMNS} FROM coverage").fetchone()
        ledger = os.fstat(fd)
        if row is None or (row[0], row[1]) != (ledger.st_dev, ledger.st_ino):
            return False
        covered, seal, mtime = row[2], row[3], row[4]
        # Other bytes before the covered end: rewritten. Fewer: a shorter ledger (the seal never is empty but at 0).
        if _seal(fd, covered) != seal:
            return False
        # Written since the last append the index saw, yet not by an append it saw: an edit (or an append) by hand.
        if ledger.st_mtime_ns != mtime:
            return False
        lines, size, head, linked, broken_at, why, seals = row[5:]
        self.chain = Chain(lines, size, head, bool(linked), broken_at, why, seals)
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
        db.execute("CREATE TABLE proofs (proof TEXT PRIMARY KEY, passed INTEGER, sha256 TEXT) WITHOUT ROWID")
        db.execute(
            "CREATE TABLE coverage (dev INTEGER, ino INTEGER, covered INTEGER, seal BLOB, mtime INTEGER, "
            "lines INTEGER, size INTEGER, head TEXT, linked INTEGER, broken_at INTEGER, why TEXT, seals INTEGER)"
        )
        db.execute("INSERT INTO coverage VALUES (0, 0, 0, x'', 0, 0, 0, '', 0, NULL, '', 0)")
        self.chain = Chain()
        db.execute(f"PRAGMA user_version = {self.VERSION}")
        self._index(fd, 0, os.fstat(fd).st_size)

    def _index(self, fd: int, start: int, end: int) -> None:
        """Note the claims and proofs in the ledger's bytes from start (where a line starts) to end, and the links
        of its whole lines; cover up to end.

        A last line without its newline is indexed as a reader sees it: the append that follows always starts a
        line of its own, so it stays that line. Its link waits for that append to end it.
        """
        assert self.db is not None
        data = read_bytes(fd, start, end) if end > start else b""
        linking = data if self.chain.size == start else read_bytes(fd, self.chain.size, end)
        self.chain = self.chain.follow(split_lines(linking))
        if data:
            entries, _ = parse_lines(data)
            claimed = sorted({_key(identity_of(e)) for e in entries if is_claim(e)})
            # In key order SQLite fills its pages one after another: an index build takes half the time.
            self.db.executemany("INSERT OR IGNORE INTO claims VALUES (?)", ((k,) for k in claimed))
            # In ledger order, the last line about each proof wins (a build's is always a pass).
            verdicts: dict[str, Proof] = {}
            for e in entries:
                if (p := proof_of(e)) is not None:
                    verdicts[_key(p[0])] = p[1]
            self.db.executemany(
                "INSERT OR REPLACE INTO proofs VALUES (?, ?, ?)",
                ((k, int(v.passed), v.digest) for k, v in sorted(verdicts.items())),
            )
        ledger, c = os.fstat(fd), self.chain
        self.db.execute(
            f"UPDATE coverage SET dev = ?, ino = ?, covered = ?, seal = ?, mtime = ?, ({CHAIN_COLUMNS}) = "
            "(?, ?, ?, ?, ?, ?, ?)",
            (ledger.st_dev, ledger.st_ino, end, _seal(fd, end), ledger.st_mtime_ns, *_chain_row(c)),
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


CHAIN_COLUMNS = "lines, size, head, linked, broken_at, why, seals"


def _chain_row(c: Chain) -> tuple[object, ...]:
    return c.lines, c.size, c.head, int(c.linked), c.broken_at, c.why, c.seals


# Identities compare as JSON text; for the strings and nulls that steps and approvals write, as in Python.
# One encoder for all: json.dumps with options builds a new one per call, a third of an index build.
_key = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _seal(fd: int, end: int) -> bytes:
    start = max(end - ClaimIndex.SEAL, 0)
    return read_bytes(fd, start, end)
