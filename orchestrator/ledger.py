"""The ledger: ledger.jsonl, one JSON line per execution of a step, the evidence of what ran and what it changed.

Plain Python, no temporalio. Appends are ordered by a file lock across the workers that share the workspace.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from orchestrator.ledger_format import claimed_in, identity_of, parse_lines, proof_of, read_bytes
from orchestrator.ledger_index import ClaimIndex


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
        self.index = ClaimIndex(path.with_name(f"{path.stem}.index.sqlite"))

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
                    if (p := proof_of(e)) is not None and p[0] == proof:
                        found = p[1]
            return found

    def applied_before(self, identity: tuple[object, ...]) -> bool:
        """Whether a line claims the effect of identity (see identity_of); reads the whole ledger."""
        return claimed_in(self.entries(), identity)

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
        return parse_lines(read_bytes(fd, 0))
