"""What each dashboard page shows, as plain data for its template: the grid, the waiting list, a release's
timeline, an environment's history and its comparison with the environment before it.

Plain Python, no temporalio: the pages read the last LedgerPicture and the watcher's rows, never the servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.inventory import Inventory, Move, Placement, when_utc
from shared import ENVIRONMENTS, ReleaseState, RollbackTarget

if TYPE_CHECKING:
    from orchestrator.dashboard.releases import ReleaseRow, Waiting

# What a cell's state looks like: its word, and the style that colours it (the word is always shown).
STATE_STYLE = {"verified": "ok", "untested": "warn", "failed": "bad", "held": "warn", "drift": "bad"}
CELL_STYLE = {"done": "ok", "failed": "bad", "held": "warn", "waiting": "warn", "running": "run", "rolled back": "bad"}


@dataclass(frozen=True)
class GridCell:
    version: str
    state: str  # verified, untested, failed, held, or drift
    style: str
    release_key: str | None
    run_id: str | None
    at: str
    approved_by: str | None
    drift: str | None


def grid(inv: Inventory) -> tuple[list[str], list[tuple[str, list[GridCell | None]]]]:
    """The environments, and a row per container: its cell in each environment (None: nothing there)."""
    containers = sorted({c for placed in inv.placements.values() for c in placed})
    rows = []
    for c in containers:
        rows.append((c, [_cell(inv.placements.get(env, {}).get(c)) for env in ENVIRONMENTS]))
    return list(ENVIRONMENTS), rows


def _cell(h: Placement | None) -> GridCell | None:
    if h is None:
        return None
    state = "drift" if h.drift else h.state
    return GridCell(
        h.version or "?",
        state,
        STATE_STYLE.get(state, "warn"),
        h.release_key,
        h.run_id,
        when_utc(h.at) if h.at else "",
        h.approved_by,
        h.drift,
    )


def grid_counts(inv: Inventory) -> dict[str, int]:
    """How many cells are in each state, for the line above the grid."""
    counts: dict[str, int] = {}
    for placed in inv.placements.values():
        for h in placed.values():
            state = "drift" if h.drift else h.state
            counts[state] = counts.get(state, 0) + 1
    return counts


def untrusted(inv: Inventory) -> list[str]:
    """Why the grid cannot be trusted, one line each: the chain's break; nothing when every cell is verified."""
    why = [inv.chain.describe(inv.ledger_name)] if inv.chain.broken_at is not None else []
    if inv.skipped:
        why.append(f"{inv.skipped} ledger lines could not be read and were skipped")
    return why


@dataclass(frozen=True)
class Comparison:
    container: str
    before: str | None  # the version in the environment before
    here: str | None
    ahead: bool  # the environment before holds a version this one lacks


def compare(inv: Inventory, env: str) -> tuple[str | None, list[Comparison]]:
    """The environment before env, and each container's version in both."""
    i = ENVIRONMENTS.index(env)
    if i == 0:
        return None, []
    before = ENVIRONMENTS[i - 1]
    theirs, ours = inv.placements.get(before, {}), inv.placements.get(env, {})
    rows = []
    for c in sorted(theirs.keys() | ours.keys()):
        was, now = theirs.get(c), ours.get(c)
        v_before, v_here = (was.version if was else None), (now.version if now else None)
        rows.append(Comparison(c, v_before, v_here, v_before is not None and v_before != v_here))
    return before, rows


def moves(history: list[Move]) -> list[dict[str, Any]]:
    """The moves as the environment page lists them: what happened, by which release, asked or approved by whom."""
    shown = []
    for m in history:
        if m.rollback:
            what = f"rolled back to {m.restored.version}" if m.restored else "rolled back (nothing before)"
        elif m.release_key == RollbackTarget(env=m.env, container=m.container).release_key():
            what = "rolled back (rollback-env)"
        else:
            what = "promoted"
        by = f"{'asked' if m.rollback or what.startswith('rolled') else 'approved'} by {m.by}" if m.by else ""
        shown.append(
            {
                "at": when_utc(m.at),
                "container": m.container,
                "version": m.version,
                "what": what,
                "release_key": m.release_key,
                "run_id": m.run_id,
                "by": by,
            }
        )
    return shown


def deploy_rows(state: ReleaseState) -> tuple[list[str], list[dict[str, Any]]]:
    """The release's deploys x its environments: each cell's status, step and attempts (retries)."""
    envs = [env for env in ENVIRONMENTS if any(env in d.cells for d in state.deploys)]
    rows = []
    for d in state.deploys:
        cells = []
        for env in envs:
            c = d.cells.get(env)
            cells.append(
                None
                if c is None
                else {"status": c.status, "style": CELL_STYLE.get(c.status, ""), "step": c.step, "attempts": c.attempts}
            )
        rows.append(
            {
                "artifact": d.artifact,
                "container": d.container_id,
                "approved_by": d.approved_by,
                "waiting_for": d.waiting_for,
                "cells": cells,
            }
        )
    return envs, rows


def timeline(lines: list[dict[str, object]]) -> list[dict[str, str]]:
    """A run's ledger lines as people read them, in order: when, what, where, and what came of it."""
    shown = []
    for e in lines:
        step = str(e.get("step") or "?")
        who = e.get("approver") or e.get("by")
        what = [f"{e.get('container')}-{e.get('version')}"] if e.get("container") else []
        what += [f"in {e.get('env')}"] if e.get("env") else []
        attempt = e.get("attempt")
        if isinstance(attempt, int) and attempt > 1:
            what.append(f"attempt {attempt}")
        outcome = {True: "passed", False: "failed"}.get(e.get("passed"), "")  # type: ignore[arg-type]
        if e.get("applied") is False:
            outcome = "already done: not applied again"
        if e.get("failed_check"):
            outcome = f"failed: {e.get('failed_check')}"
        shown.append(
            {
                "at": when_utc(str(e.get("at") or "")),
                "step": step,
                "what": " ".join(map(str, what)),
                "by": str(who) if who else "",
                "outcome": outcome,
            }
        )
    return shown


def waiting_list(rows: list[ReleaseRow]) -> list[Waiting]:
    return [w for row in rows for w in row.waiting()]
