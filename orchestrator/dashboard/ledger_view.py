"""What the dashboard shows from the ledger and the folders (the grid, an environment's moves, a run's lines),
read again only when the ledger or a deployed file changes, never on a page request.

Plain Python, no temporalio. With the file ledger, only the lines appended since the last look are read and
replayed (the whole file again when it shrank or was rewritten in place); with PostgreSQL, the ledger's indexed
views. Either way a change costs what is new and what the environments hold, not the ledger's length.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.inventory import HISTORY_MAX, Inventory, compare_folders
from orchestrator.ledger import open_ledger
from orchestrator.ledger_chain import Chain, split_lines
from orchestrator.ledger_format import parse_lines
from orchestrator.ledger_replay import Move, Placement, Replay, replay
from shared import ENVIRONMENTS

RUN_LINES_MAX = 400  # a release page shows at most this many of its run's ledger lines, the newest


@dataclass
class FileTail:
    """The file ledger followed by its appends: the chain so far, and the lines read since the last look."""

    path: Path
    offset: int = 0
    stamp: tuple[int, int] | None = None
    unreadable: int = 0
    chain: Chain = field(default_factory=Chain)

    def catch_up(self) -> tuple[bool, list[dict[str, object]]] | None:
        """The entries appended since the last look, and whether they start over (the file shrank, or was
        rewritten in place); None when nothing changed."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self.stamp is None:
                return None
            self._reset()
            return True, []
        stamp = (st.st_size, st.st_mtime_ns)
        if stamp == self.stamp:
            return None
        anew = self.stamp is None or st.st_size < self.offset or st.st_size == self.stamp[0]
        if anew:
            self._reset()
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        # Only whole lines: an append in progress is read at the next look.
        data = data[: data.rfind(b"\n") + 1]
        entries, unreadable = parse_lines(data)
        self.unreadable += len(unreadable)
        self.chain = self.chain.follow(split_lines(data)) if data else self.chain
        self.offset += len(data)
        self.stamp = stamp
        return anew, entries

    def _reset(self) -> None:
        self.offset, self.stamp, self.unreadable, self.chain = 0, None, 0, Chain()


@dataclass(frozen=True)
class LedgerPicture:
    """One reading: the inventory (with drift), and the newest moves into each environment."""

    inventory: Inventory
    moves: dict[str, tuple[list[Move], int]]  # environment -> newest first (at most HISTORY_MAX), and how many


class LedgerView:
    """The ledger as the dashboard shows it; refresh() in a thread, the pages read `picture`."""

    def __init__(self, workspace: Path, ledger_url: str | None = None) -> None:
        self.workspace = workspace
        self.ledger = open_ledger(workspace, ledger_url)
        self.tail = None if ledger_url else FileTail(workspace / "ledger.jsonl")
        self.replay = Replay()
        self.runs: dict[str, list[dict[str, object]]] = {}  # file ledger: run id -> its newest lines
        self.ledger_stamp: object = None
        self.folder_stamp: object = None
        self.placed: dict[str, dict[str, Placement]] = {}
        self.skipped = 0
        self.chain = Chain()
        self.picture = LedgerPicture(Inventory({}, 0, Chain(), self.ledger.name), {})
        self.histories: dict[tuple[object, str], tuple[list[Move], int]] = {}

    def refresh(self) -> bool:
        """Look at the ledger and the folders; whether the picture changed."""
        changed = self._read_ledger()
        folders = self._folders()
        if not changed and folders == self.folder_stamp:
            return False
        self.folder_stamp = folders
        placements = {}
        for env in ENVIRONMENTS:
            # Copies: a page may be reading the last picture's entries while this one is made.
            placed = {c: replace(h) for c, h in self.placed.get(env, {}).items()}
            found = compare_folders(self.workspace, env, placed)
            if found:
                placements[env] = found
        inventory = Inventory(placements, self.skipped, self.chain, self.ledger.name)
        moves = self.picture.moves
        if self.tail is not None and changed:
            moves = {env: self.replay.newest_moves(env, HISTORY_MAX) for env in ENVIRONMENTS}
        self.picture = LedgerPicture(inventory, moves)
        return True

    def history(self, env: str) -> tuple[list[Move], int]:
        """The moves into env, newest first (at most HISTORY_MAX), and how many there are in all."""
        if self.tail is not None:
            return self.picture.moves.get(env, ([], 0))
        key = (self.ledger_stamp, env)
        if key not in self.histories:
            entries, _, total = self.ledger.history_view(env, None, HISTORY_MAX)
            _, moves, _ = replay(entries)
            self.histories = {k: v for k, v in self.histories.items() if k[0] == self.ledger_stamp}
            self.histories[key] = ([m for m in reversed(moves) if m.env == env], total or 0)
        return self.histories[key]

    def run_lines(self, run_id: str) -> list[dict[str, object]]:
        """The ledger lines of one run, in order (the newest RUN_LINES_MAX)."""
        if self.tail is not None:
            return list(self.runs.get(run_id, []))[-RUN_LINES_MAX:]
        return self.ledger.run_entries(run_id, RUN_LINES_MAX)

    def _read_ledger(self) -> bool:
        if self.tail is not None:
            new = self.tail.catch_up()
            if new is None:
                return False
            anew, entries = new
            if anew:
                self.replay, self.runs = Replay(), {}
            self.replay.feed(entries)
            _add_runs(self.runs, entries)
            self.placed = self.replay.placements()
            self.skipped, self.chain = self.tail.unreadable + self.replay.skipped, self.tail.chain
            return True
        stamp = self.ledger.chain()
        if stamp == self.ledger_stamp:
            return False
        self.ledger_stamp = stamp
        entries, unreadable, chain = self.ledger.inventory_view()
        self.placed, _, skipped = replay(entries)
        self.skipped, self.chain = unreadable + skipped, chain
        return True

    def _folders(self) -> tuple[tuple[str, int, int], ...]:
        """Each file in the environments' folders with its size and time: a change to any is a new look."""
        seen = []
        for env in ENVIRONMENTS:
            for folder in (self.workspace / "environments" / env, self.workspace / "environments" / env / "config"):
                try:
                    with os.scandir(folder) as found:
                        for entry in found:
                            st = entry.stat(follow_symlinks=False)
                            seen.append((entry.path, st.st_size, st.st_mtime_ns))
                except OSError:
                    continue
        return tuple(sorted(seen))


def _add_runs(runs: dict[str, list[dict[str, object]]], entries: list[dict[str, object]]) -> None:
    """Each entry under its run, keeping about the newest RUN_LINES_MAX of each."""
    for e in entries:
        if isinstance(run := e.get("run_id"), str):
            lines = runs.setdefault(run, [])
            lines.append(e)
            if len(lines) > 2 * RUN_LINES_MAX:
                del lines[:-RUN_LINES_MAX]
