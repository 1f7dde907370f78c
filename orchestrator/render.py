"""A release's state drawn for people: the table `status` prints, and the Markdown of the Web UI's Current Details.

Plain Python, no temporalio, deterministic: the workflow renders its details with it.
"""

from __future__ import annotations

from datetime import datetime

from shared import ENVIRONMENTS, Cell, ReleaseState

CELL = len("cancelled +2 retries  ")

# How a cell reads in the Web UI's details; a cell in flight shows its step ("deploy").
_MARK = {
    "pending": "pending",
    "done": "✓",
    "failed": "✗ failed",
    "skipped": "skipped",
    "cancelled": "cancelled",
    "held": "✗ held",
    "rolled back": "✗ rolled back",
    "waiting": "waiting",
    "deployed": "deployed",
}


def render_progress(state: ReleaseState) -> str:
    """A table of deploys × environments, then who approved and what each waits for."""
    lines = [f"Release {state.release_key}: {state.status}" + (f" ({state.error})" if state.error else "")]
    if not state.approved:
        lines.append("  the release itself waits for approval")
    elif state.approved_by:
        lines.append(f"  release approved by {state.approved_by}{_at(state.approved_at)}")
    if state.unfrozen_by:
        lines.append(f"  freeze overridden by {state.unfrozen_by}{_at(state.unfrozen_at)}")
    width = max([len(d.artifact) for d in state.deploys] + [6]) + 2
    # Only the environments this release touches, so the table fits the Web UI's details panel.
    envs = [e for e in ENVIRONMENTS if any(e in d.cells for d in state.deploys)]
    lines.append(("  " + "deploy".ljust(width) + "".join(e.ljust(CELL) for e in envs)).rstrip())
    for d in state.deploys:
        cells = []
        for env in envs:
            c = d.cells.get(env)
            text = "" if c is None else _word(c) + (f" {_retries(c)}" if _retries(c) else "")
            cells.append(text[: CELL - 1].ljust(CELL))
        note = "" if d.approved else "  (not approved)"
        if d.approved_by:
            note = f"  (approved by {d.approved_by}{_at(d.approved_at)})"
        lines.append("  " + d.artifact.ljust(width) + "".join(cells).rstrip() + note)
    for d in state.deploys:
        if d.waiting_for:
            lines.append(f"  {d.artifact} is waiting for {d.waiting_for}")
    return "\n".join(lines)


def render_details(state: ReleaseState) -> str:
    """The release for the Web UI's Current Details: Markdown, one line per deploy, so it wraps to fit the panel.

    (A Markdown table is drawn there without cell padding, its cells running into each other.)
    """
    head = f"**{state.status}**" + (f": {_markdown(state.error)}" if state.error else "")
    if not state.approved:
        head += " · the release itself waits for approval"
    elif state.approved_by:
        head += f" · approved by {_markdown(state.approved_by)}{_at(state.approved_at)}"
    if state.unfrozen_by:
        head += f" · freeze overridden by {_markdown(state.unfrozen_by)}{_at(state.unfrozen_at)}"
    lines = [head, ""]
    for d in state.deploys:
        cells = []
        for env, c in d.cells.items():
            word = _word(c)
            text = _MARK.get(word, c.step or word) + (f" ({_retries(c)})" if _retries(c) else "")
            cells.append(f"{env} {text}")
        name = f"**{d.artifact}**" + ("" if d.approved else " (not approved)")
        lines.append(f"- {name}: {' · '.join(cells)}")
    waits = [f"- {d.artifact} waits for {_markdown(d.waiting_for)}" for d in state.deploys if d.waiting_for]
    return "\n".join(lines + ([""] + waits if waits else []))


def _word(c: Cell) -> str:
    """The cell's status as people read it: "deployed" for a cell cancelled after its deploy, before its test."""
    return "deployed" if c.status == "cancelled" and c.deployed else c.status


def _retries(c: Cell) -> str:
    """ "+1 retry", "+2 retries": the times the cell's steps were tried again; "" for none."""
    n = c.attempts - c.steps_done
    return f"+{n} retr{'y' if n == 1 else 'ies'}" if n > 0 else ""


def _markdown(text: str) -> str:
    """Text from outside (an error, a name) kept on one line, its Markdown emphasis marks shown as written."""
    return " ".join(text.split()).replace("*", "\\*").replace("_", "\\_")


def _at(when: datetime | None) -> str:
    return f" at {when:%Y-%m-%d %H:%M} UTC" if when else ""
