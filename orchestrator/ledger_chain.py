"""The ledger's hash chain: each line carries the SHA-256 of the line before it, so an edit, a deletion or a line
written by hand shows as the first line whose link does not match, until a person seals the break.

Plain Python, no temporalio. A line's link is "prev": the hex SHA-256 of the previous line's bytes as stored
(without its newline; "" for the first line of a ledger). Lines written before 1.1 carry no link: they are the
first segment, read as they are. Once a line carries a link, every line after it must carry the right one,
but for a seal line, which accepts the break before it and starts a new segment (ledger seal).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

# The field that links a line to the one before it, and the step of a line that accepts a break.
LINK = "prev"
SEAL = "seal"


def line_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Chain:
    """What the chain says after some lines: how many, their bytes (newlines included), the hash of the last,
    whether links began, the first line that breaks it (1-based; None while intact or once sealed) and why, and
    how many seals it holds."""

    lines: int = 0
    size: int = 0
    head: str = ""
    linked: bool = False
    broken_at: int | None = None
    why: str = ""
    seals: int = 0

    def follow(self, raw_lines: list[bytes]) -> Chain:
        """The chain after raw_lines (whole lines, without their newlines), in ledger order."""
        chain = self
        for raw in raw_lines:
            # A blank line (only by hand) has a number but no part in the chain.
            chain = chain._next(raw) if raw.strip() else replace(chain, lines=chain.lines + 1)
            chain = replace(chain, size=chain.size + len(raw) + 1)
        return chain

    def _next(self, raw: bytes) -> Chain:
        number, entry = self.lines + 1, parse_line(raw)
        link = entry.get(LINK) if entry is not None else None
        after = replace(self, lines=number, head=line_hash(raw))
        if not isinstance(link, str):
            if not self.linked or self.broken_at is not None:
                return after  # the first segment (no links yet), or already broken: the first break is named
            return replace(after, broken_at=number, why="it carries no link to the line before it")
        if link != self.head:
            if entry is not None and entry.get("step") == SEAL:
                # A seal must link to the line before it: else anyone could seal a forged tail.
                return after if self.broken_at is not None else replace(after, broken_at=number, why=_mismatch(number))
            if self.broken_at is not None:
                return replace(after, linked=True)
            return replace(after, linked=True, broken_at=number, why=_mismatch(number))
        if entry is not None and entry.get("step") == SEAL and self.broken_at is not None:
            return replace(after, linked=True, broken_at=None, why="", seals=self.seals + 1)
        return replace(after, linked=True)

    def describe(self, name: str) -> str:
        """One line: the chain intact, or where it breaks."""
        if self.broken_at is not None:
            return f"{name} is broken at line {self.broken_at}: {self.why}"
        if not self.linked:
            return f"{name}: {self.lines} lines, none linked yet (written before 1.1)"
        sealed = f", {self.seals} break(s) sealed" if self.seals else ""
        return f"{name}: {self.lines} lines, the chain is intact{sealed}"


def link_for(previous_line: bytes | None) -> str:
    """The link a new line carries: the hash of the line before it, "" for a ledger's first line."""
    return "" if previous_line is None else line_hash(previous_line)


def split_lines(data: bytes) -> list[bytes]:
    """The whole lines in data (which starts at a line), without newlines; a torn last line is left out."""
    return data.split(b"\n")[:-1]


def last_line(tail: bytes) -> bytes | None:
    """The line a new line links to, from the ledger's last bytes: its last line that is not blank, torn or not
    (an append after a torn line ends it first). None if there is none in tail."""
    lines = [line for line in tail.split(b"\n") if line.strip()]
    return lines[-1] if lines else None


def parse_line(raw: bytes | str) -> dict[str, object] | None:
    """A line as the JSON object it holds; None for anything else (a torn or hand-written line)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _mismatch(number: int) -> str:
    return f"its link does not match line {number - 1} (a line was edited, removed or added by hand)"
