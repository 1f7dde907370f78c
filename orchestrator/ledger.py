"""The ledger: ledger.jsonl, one JSON line per execution of a step, the evidence of what ran and what it changed.

Plain Python, no temporalio. Appends are ordered by a file lock across the workers that share the workspace; each
line links to the one before it (orchestrator/ledger_chain.py), so an edit by hand shows.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from orchestrator.errors import LedgerBroken
from orchestrator.ledger_chain import LINK, SEAL, Chain, last_line, link_for, split_lines
from orchestrator.ledger_format import Proof, claimed_in, identity_of, now_iso, parse_lines, proof_of, read_bytes
from orchestrator.ledger_index import ClaimIndex

# How to accept a break in the chain, as refusals say it.
SEAL_HINT = "run_workflow.py ledger seal --by NAME --reason TEXT"


def open_ledger(workspace: Path, url: str | None = None) -> Ledger:
    """The ledger a worker and the commands use: PostgreSQL where LEDGER_URL names it (orchestrator/ledger_pg.py),
    else ledger.jsonl in the workspace. Both have this module's interface."""
    if url:
        from orchestrator.ledger_pg import PostgresLedger  # psycopg only where a database is used

        return PostgresLedger(url)  # type: ignore[return-value]
    return Ledger(workspace / "ledger.jsonl")


class Ledger:
    """Append-only JSON lines, one per execution of a step: the evidence of what ran and what it changed.

    Every execution that completes is recorded, retries included. Of the lines about one
    (run, deploy, step, environment), exactly one says "applied": true: the execution that
    put the effect in place; the others found it done and say false.

    Whether a line claims an effect already is answered by an index beside the ledger
    (ledger.index.sqlite: see ClaimIndex), so each call costs the same at 10 lines or 100,000
    (resources/bench_ledger.py); reading the whole ledger for it took 1-1.5 s at 100,000 lines.
    The ledger stays the source of truth: the index is derived from its bytes, and can be deleted
    at any time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name  # what messages call it
        self.index = ClaimIndex(path.with_name(f"{path.stem}.index.sqlite"))

    def migrate(self) -> int:
        """Nothing to migrate in a file (PostgresLedger.migrate creates its tables)."""
        return 0

    def lines(self) -> list[str]:
        """Every line as written (what `ledger export` copies), a torn last one left out."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [raw.decode("utf-8", "replace") for raw in split_lines(data) if raw.strip()]

    def import_lines(self, raw_lines: Iterable[str]) -> Chain:
        """Lines of another ledger, as they are, into an empty ledger file; ValueError if this one holds lines."""
        with self._locked() as fd:
            if os.fstat(fd).st_size:
                raise ValueError(f"{self.path} holds lines: import into an empty ledger")
            for line in raw_lines:
                data = f"{line}\n".encode()
                while data:
                    data = data[os.write(fd, data) :]
            os.fsync(fd)
            return self._chain(fd)

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
                claimed = claimed_in(self._read(fd)[0], identity)
            applied = not claimed
            self._append(fd, {**entry, "applied": applied})
            return applied

    def verified(self, container: str, version: str, place: str) -> Proof:
        """What the ledger proves of container at version in place: built (place "artifactory"), or its latest
        tests there passed (a later failure takes back an earlier pass, whichever run it was), and the digest
        of those bytes. LedgerBroken while the chain is broken: then nothing is proven.

        O(1) through the index, like record_unless_claimed.
        """
        if not self.path.exists():
            return Proof(False, None)  # nothing was ever recorded, and a question creates no ledger
        proof = (container, version, place)
        with self._locked() as fd, self._indexed(fd, build=True) as index:
            found = index.verified(proof) if index is not None else None
            chain = index.chain if index is not None else self._chain(fd)
            if chain.broken_at is not None:
                raise LedgerBroken(f"{chain.describe(self.path.name)}; promotions wait for {SEAL_HINT}")
            if found is None:
                found = Proof(False, None)
                for e in self._read(fd)[0]:
                    if (p := proof_of(e)) is not None and p[0] == proof:
                        found = p[1]
            return found

    def chain(self) -> Chain:
        """The hash chain's state: intact, or where it first breaks (O(1) through the index)."""
        if not self.path.exists():
            return Chain()
        with self._locked() as fd, self._indexed(fd, build=True) as index:
            return index.chain if index is not None else self._chain(fd)

    def verify(self) -> Chain:
        """The chain as the whole ledger says, read from line 1 (what `ledger verify` prints); the index is not used."""
        with self._shared() as fd:
            return Chain() if fd is None else self._chain(fd)

    def seal(self, by: str, reason: str) -> Chain:
        """Accept the chain's break: a seal line, linked to the line before it, names who and why; the chain
        goes on from it. ValueError if nothing is broken."""
        with self._locked() as fd, self._indexed(fd, build=True):
            chain = self._chain(fd)
            if chain.broken_at is None:
                raise ValueError(f"{chain.describe(self.path.name)}: nothing to seal")
            entry = {"step": SEAL, "by": by, "reason": reason, "accepts": chain.broken_at, "why": chain.why}
            self._append(fd, {**entry, "at": now_iso()})
            return chain

    def applied_before(self, identity: tuple[object, ...]) -> bool:
        """Whether a line claims the effect of identity (see identity_of); reads the whole ledger."""
        return claimed_in(self.entries(), identity)

    def entries(self) -> list[dict[str, object]]:
        return self.read()[0]

    # What inventory, history and rollback-env read: the whole file, each line once (PostgresLedger: indexed).

    def inventory_view(self) -> tuple[list[dict[str, object]], int, Chain]:
        """The entries, how many lines are unreadable, and the chain: from one read of the file."""
        with self._shared() as fd:
            data = b"" if fd is None else read_bytes(fd, 0)
        entries, unreadable = parse_lines(data)
        return entries, len(unreadable), Chain().follow(split_lines(data))

    def history_view(self, env: str, container: str | None, newest: int) -> tuple[list[dict[str, object]], int, None]:
        entries, unreadable = self.read()
        return entries, len(unreadable), None

    def target_entries(self, env: str, container: str) -> list[dict[str, object]]:
        return [e for e in self.entries() if e.get("env") == env and e.get("container") == container]

    def read(self) -> tuple[list[dict[str, object]], list[int]]:
        """The entries, and the 1-based numbers of lines that are not JSON objects (skipped)."""
        with self._shared() as fd:
            return ([], []) if fd is None else self._read(fd)

    @contextmanager
    def _shared(self) -> Iterator[int | None]:
        """The ledger open for reading under a shared lock (never a line an append has only half written);
        None if there is no ledger. A read creates nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield fd
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
    def _indexed(self, fd: int, build: bool) -> Iterator[ClaimIndex | None]:
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
        size = os.fstat(fd).st_size
        line = (json.dumps({**entry, LINK: link_for(_last_line(fd, size))}, sort_keys=True) + "\n").encode()
        # A crash mid-append can leave a torn last line with no newline; glued onto it,
        # this record would be unreadable too, so it starts a line of its own.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line) :]
        os.fsync(fd)

    @staticmethod
    def _read(fd: int) -> tuple[list[dict[str, object]], list[int]]:
        return parse_lines(read_bytes(fd, 0))

    @staticmethod
    def _chain(fd: int) -> Chain:
        return Chain().follow(split_lines(read_bytes(fd, 0)))


def _last_line(fd: int, size: int) -> bytes | None:
    """The ledger's last line that is not blank, read backwards from its end: O(that line)."""
    end, tail, piece = size, b"", 1024
    while end > 0:
        start = max(0, end - piece)
        tail, end, piece = read_bytes(fd, start, end) + tail, start, piece * 2
        # Complete once a non-blank line follows a newline in tail (the first piece may be a line's end).
        if any(line.strip() for line in tail.split(b"\n")[1:]):
            break
    return last_line(tail)
