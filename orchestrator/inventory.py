"""What each environment holds and who put it there, from the ledger; where the folders differ, drift.

Plain Python, no temporalio import: `run_workflow.py inventory` and `history` read the workspace only.
The ledger is the record: its applied deploy and rollback lines, replayed in order, say what each
environment holds. The folders are then compared with that, and every difference is shown as the
entry's drift: never hidden, never corrected here.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.ledger import open_ledger
from orchestrator.ledger_chain import Chain
from orchestrator.ledger_replay import (  # noqa: F401 (Move and Placement, replay: what inventory's readers use)
    FAILED,
    HELD,
    TEXT_MAX,
    UNTESTED,
    VERIFIED,
    Move,
    Placement,
    replay,
    text_of,
    valid_name,
)
from orchestrator.names import CONTAINER_ID, clip
from shared import ARTIFACTORY, ENVIRONMENTS, RollbackTarget

DRIFT_MAX = 300
CELL_MAX = 40
HISTORY_MAX = 100  # history shows the newest lines, and says how many older ones it left out


@dataclass
class Inventory:
    placements: dict[str, dict[str, Placement]]  # environment (promotion order) -> container (sorted) -> placement
    skipped: int  # ledger lines that could not be read
    chain: Chain = field(default_factory=Chain)  # the ledger's hash chain, as its lines say
    ledger_name: str = "ledger.jsonl"

    def as_json(self) -> dict[str, dict[str, dict[str, str | None]]]:
        return {env: {c: h.as_json() for c, h in placed.items()} for env, placed in self.placements.items()}

    def trusted(self) -> bool:
        """Whether every environment holds only versions whose checks passed there, exactly as deployed."""
        placed = [h for env in self.placements.values() for h in env.values()]
        return self.chain.broken_at is None and all(h.state == VERIFIED and not h.drift for h in placed)


def inventory(workspace: Path, ledger_url: str | None = None) -> Inventory:
    """What each environment holds as the ledger says, each entry with its drift from the folders."""
    ledger = open_ledger(workspace, ledger_url)
    entries, unreadable, chain = ledger.inventory_view()
    placed, _, skipped = replay(entries)
    placements = {}
    for env in ENVIRONMENTS:
        found = compare_folders(workspace, env, placed.get(env, {}))
        if found:
            placements[env] = found
    return Inventory(placements, unreadable + skipped, chain, ledger.name)


def history(
    workspace: Path, env: str, container: str | None = None, ledger_url: str | None = None
) -> tuple[list[Move], int, int]:
    """The promotions and rollbacks into env (of container, if given), newest first (at least the HISTORY_MAX
    newest); the skipped lines; and how many there are in all."""
    entries, unreadable, total = open_ledger(workspace, ledger_url).history_view(env, container, HISTORY_MAX + 1)
    _, moves, skipped = replay(entries)
    mine = [m for m in reversed(moves) if m.env == env and container in (None, m.container)]
    return mine, unreadable + skipped, len(mine) if total is None else total


def check_environment(env: str) -> str:
    """env in upper case, if it is one of the environments; else ValueError."""
    if env.upper() not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {clip(env)!r}; the environments are {', '.join(ENVIRONMENTS)}")
    return env.upper()


def inventory_lines(inv: Inventory) -> list[str]:
    """The inventory as a table, a line per environment and container, then its drift, one line each."""
    entries = [(env, c, h) for env, placed in inv.placements.items() for c, h in placed.items()]
    rows = [
        [env, c, h.version or "?", h.state, h.release_key or "-", when_utc(h.at), h.approved_by or "-", h.run_id or "-"]
        for env, c, h in entries
    ]
    lines = _table(["ENV", "CONTAINER", "VERSION", "STATE", "RELEASE", "AT (UTC)", "APPROVED BY", "RUN"], rows)
    if not rows:
        lines = ["Nothing deployed: the ledger records no deploy, and the environments hold no artifact."]
    lines += [_shown(f"drift: {env} {c}: {h.drift}") for env, c, h in entries if h.drift]
    if rows and not any(h.drift for _, _, h in entries):
        lines.append("No drift: the folders hold what the ledger says.")
    doubtful = [f"{env} {c} {h.version or '?'} ({h.state})" for env, c, h in entries if h.state != VERIFIED]
    if doubtful:
        lines.append(_shown(clip(f"not verified where it runs: {', '.join(doubtful)}", DRIFT_MAX)))
    if inv.chain.broken_at is not None:
        lines.append(inv.chain.describe(inv.ledger_name) + ": what it says after that line cannot be trusted")
    return lines + _skipped(inv.skipped)


def history_lines(
    moves: list[Move], env: str, container: str | None, skipped: int = 0, total: int | None = None
) -> list[str]:
    """A line per move, newest first (at most HISTORY_MAX), or one that says there is none."""
    if not moves:
        of = f" of {container}" if container else ""
        return [_shown(f"No promotions or rollbacks{of} into {env} in the ledger."), *_skipped(skipped)]
    rows = [[f"{when_utc(m.at)} UTC", m.container, m.version, describe_move(m)] for m in moves[:HISTORY_MAX]]
    lines = _table(None, rows)
    total = len(moves) if total is None else total
    if total > HISTORY_MAX:
        lines.append(f"… and {total - HISTORY_MAX} older ones (the ledger has them all)")
    return lines + _skipped(skipped)


def print_inventory(workspace: Path, as_json: bool, ledger_url: str | None = None) -> int:
    """`run_workflow.py inventory [--json]`: the table, or the JSON (a note of skipped lines goes to stderr);
    exit 1 when something drifted or is not verified."""
    try:
        inv = inventory(workspace, ledger_url)
    except OSError as e:
        raise ValueError(f"cannot read the workspace {workspace}: {e.strerror or e}") from None
    if not as_json:
        print("\n".join(inventory_lines(inv)))
    else:
        print(json.dumps(inv.as_json(), indent=2))
        broken = [inv.chain.describe(inv.ledger_name)] if inv.chain.broken_at is not None else []
        for line in [*broken, *_skipped(inv.skipped)]:
            print(line, file=sys.stderr)
    # Exit 1, as diff does, when an environment holds something drifted or not verified there.
    return 0 if inv.trusted() else 1


def print_history(workspace: Path, env: str, container: str | None, ledger_url: str | None = None) -> int:
    """`run_workflow.py history ENV [CONTAINER]`; ValueError for an unknown environment or an invalid container."""
    env = check_environment(env)
    if container is not None and not valid_name(container, CONTAINER_ID):
        raise ValueError(f"container {clip(container)!r} is invalid: use lowercase letters, digits, '.', '_' and '-'")
    try:
        moves, skipped, total = history(workspace, env, container, ledger_url)
    except OSError as e:
        raise ValueError(f"cannot read the workspace {workspace}: {e.strerror or e}") from None
    print("\n".join(history_lines(moves, env, container, skipped, total)))
    return 0


def compare_folders(workspace: Path, env: str, placed: dict[str, Placement]) -> dict[str, Placement]:
    """placed, with each entry's drift from the environment's folder, and an entry for each container only there."""
    folder = workspace / "environments" / env
    files: dict[str, list[str]] = {}
    for name in _names(folder):
        files.setdefault(name.rpartition("-")[0] or name, []).append(name)
    configs = {n.removesuffix(".json") for n in _names(folder / "config") if n.endswith(".json")}
    # The worker follows no link: a linked folder is drift for everything in it, whatever it points at.
    linked = [f"{p.relative_to(workspace)} is a symbolic link" for p in (folder, folder / "config") if p.is_symlink()]
    found: dict[str, Placement] = {}
    for c in sorted(placed.keys() | files.keys() | configs):
        names = files.get(c, [])
        h = placed.get(c)
        if h is None:
            version = names[0].rpartition("-")[2] if len(names) == 1 else None
            others = [f"folder holds {', '.join(names)}"] if len(names) > 1 else []
            what = [*linked, "not in the ledger", *others, *([] if names else ["only a config file"])]
            found[clip(c, TEXT_MAX)] = Placement(text_of(version) or None, drift=_drift(what))
            continue
        want = f"{c}-{h.version}"
        others = [n for n in names if n != want]
        what: list[str] = list(linked)
        if want not in names:
            what.append(
                f"folder holds {', '.join(others)}, not {want}" if others else f"{want} is missing from the folder"
            )
        else:
            what += [f"folder also holds {', '.join(others)}"] if others else []
            what += _artifact_drift(folder / want, workspace / ARTIFACTORY / want)
        what += _config_drift(folder / "config" / f"{c}.json", {"artifact": want, "environment": env}, h)
        h.drift = _drift(what)
        found[c] = h
    return found


def _artifact_drift(path: Path, built: Path) -> list[str]:
    if path.is_symlink():
        return [f"{path.name} is a symbolic link"]
    if not built.is_file():
        return [f"the artifactory has no {path.name} to compare it with"]
    try:
        same = filecmp.cmp(path, built, shallow=False)
    except OSError as e:
        return [f"{path.name} cannot be read: {e.strerror or e}"]
    return [] if same else [f"{path.name} differs from the artifactory's"]


def _config_drift(path: Path, expected: dict[str, object], h: Placement) -> list[str]:
    if path.is_symlink():
        return ["the config file is a symbolic link"]
    try:
        data = path.read_bytes()
        body = json.loads(data)
    except FileNotFoundError:
        return ["no config file"] if h.config_written else []
    except (OSError, ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return ["config file cannot be read"]
    expected = {**expected, "release_key": h.release_key}
    differ = [f"{k} {clip(str(body.get(k)))}" for k, v in expected.items() if body.get(k) != v]
    if differ:
        return [f"config file says {', '.join(differ)}"]
    if h.config_sha256 is not None and hashlib.sha256(data).hexdigest() != h.config_sha256:
        return ["config file differs from the one its deploy wrote"]
    return []


def _names(folder: Path) -> list[str]:
    """The files in folder, hidden temporary ones left out; none if it is not there."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _drift(what: list[str]) -> str | None:
    return clip("; ".join(what), DRIFT_MAX) if what else None


def describe_move(m: Move) -> str:
    run = f"{m.release_key or '?'} (run {m.run_id or '?'})"
    if not m.rollback and m.release_key == RollbackTarget(env=m.env, container=m.container).release_key():
        # rollback-env: a release of its own that puts an earlier version back; its approval is who asked.
        return f"rolled back to {m.version} (rollback-env) by {run}" + (f", asked by {m.by}" if m.by else "")
    if not m.rollback:
        return f"promoted by {run}" + (f", approved by {m.by}" if m.by else "")
    back = f"to {m.restored.version}" if m.restored else "(nothing before)"
    return f"rolled back {back} by {run}" + (f", asked by {m.by}" if m.by else "")


def when_utc(at: str | None) -> str:
    """An ISO time as "2024-01-24 10:00:03" in UTC (a time without a zone is UTC); what it says if it is not one."""
    try:
        when = datetime.fromisoformat(at or "")
    except ValueError:
        return clip(at or "?", CELL_MAX)
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _table(header: list[str] | None, rows: list[list[str]]) -> list[str]:
    """Rows in aligned columns (the last one unpadded, and clipped longer), cells made printable."""
    cells = [
        [_shown(clip(cell, CELL_MAX if i < len(row) - 1 else DRIFT_MAX)) for i, cell in enumerate(row)]
        for row in ([header] if header else []) + rows
    ]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in cells]


def _shown(text: str) -> str:
    """text with anything that could draw in a terminal (newlines, escapes) replaced by '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _skipped(count: int) -> list[str]:
    if not count:
        return []
    lines = "line" if count == 1 else "lines"
    return [f"note: {count} ledger {lines} could not be read and {'was' if count == 1 else 'were'} skipped"]
