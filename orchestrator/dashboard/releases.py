"""What the dashboard shows from Temporal: the newest releases, the state of each running one (its `progress`
query), and what each waits for from a person; refreshed in the background, read by the pages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.service import RPCError

from orchestrator.cli.actions import status_word
from orchestrator.cli.follower import entry_waited_for
from orchestrator.flow.release_run import RELEASE_STATUS_ATTRIBUTE
from shared import AWAITING_APPROVAL, FROZEN, ReleaseState

RECENT = 100  # the newest releases the dashboard lists
QUERY_SECONDS = 2
QUERIES_AT_ONCE = 16
RELEASE_PREFIX = "release-"


@dataclass(frozen=True)
class Waiting:
    """Something a release waits for from a person, and the action that answers it."""

    release_key: str
    what: str  # as people read it: "approval of the release", "approval to enter QC", ...
    action: str  # approve, unfreeze, retry-or-rollback
    deploy: str | None = None  # a container id
    env: str | None = None


@dataclass
class ReleaseRow:
    key: str
    workflow_id: str
    run_id: str
    status: str  # the release's own word (AWAITING_APPROVAL, SUCCESS...) where it set one, else Temporal's
    running: bool
    started: datetime | None
    closed: datetime | None
    task_queue: str
    state: ReleaseState | None = None
    state_error: str | None = None

    def waiting(self) -> list[Waiting]:
        return waiting_of(self.key, self.state) if self.running and self.state else []


def waiting_of(key: str, state: ReleaseState) -> list[Waiting]:
    """What the release waits for from a person, as its state says."""
    found: list[Waiting] = []
    entering = False
    for d in state.deploys:
        waiting_for = d.waiting_for or ""
        if env := entry_waited_for(waiting_for):
            found.append(Waiting(key, f"{d.artifact}: approval to enter {env}", "approve", env=env))
            entering = True
        if any(c.status == "held" for c in d.cells.values()):
            found.append(
                Waiting(key, f"{d.artifact} is held: {waiting_for or 'a failed check'}", "held", d.container_id)
            )
    if state.status == AWAITING_APPROVAL and not entering:
        unapproved = [d for d in state.deploys if not d.approved]
        if not state.approved or not unapproved:
            found.append(Waiting(key, "approval of the release", "approve"))
        found += [Waiting(key, f"approval of {d.artifact}", "approve", d.container_id) for d in unapproved]
    if state.status == FROZEN:
        found.append(Waiting(key, "the end of a freeze window, or an unfreeze", "unfreeze"))
    # One entry approval per environment, whichever deploy shows it.
    unique: dict[tuple[str, str | None, str | None], Waiting] = {}
    for w in found:
        unique.setdefault((w.action, w.deploy, w.env), w)
    return list(unique.values())


@dataclass
class ReleaseWatcher:
    """The newest releases and their states, read from Temporal once a second by refresh()."""

    connect: Callable[[], Awaitable[Client]]
    client: Client | None = None
    rows: dict[str, ReleaseRow] = field(default_factory=dict)
    error: str | None = None  # why Temporal cannot be read now, in one line
    finished_read: dict[str, str] = field(default_factory=dict)  # key -> run id whose final state is kept

    async def refresh(self) -> None:
        try:
            if self.client is None:
                self.client = await self.connect()
            listed = [w async for w in self.client.list_workflows('WorkflowType="ReleaseWorkflow"', limit=RECENT)]
        except (RPCError, RuntimeError, OSError) as e:
            self.error = f"Temporal cannot be read now ({getattr(e, 'message', None) or e}); the grid is the ledger's"
            return
        self.error = None
        rows: dict[str, ReleaseRow] = {}
        for w in listed:  # newest first: a key's first is its latest run
            key = w.id.removeprefix(RELEASE_PREFIX)
            if key not in rows:
                rows[key] = self._row(key, w)
        limit = asyncio.Semaphore(QUERIES_AT_ONCE)
        await asyncio.gather(*(self._read_state(row, limit) for row in rows.values() if self._wants_state(row)))
        self.rows = rows

    def _row(self, key: str, w: WorkflowExecution) -> ReleaseRow:
        running = w.status == WorkflowExecutionStatus.RUNNING
        word = w.typed_search_attributes.get(RELEASE_STATUS_ATTRIBUTE) or status_word(w.status)
        if not running and word in ("RUNNING", AWAITING_APPROVAL, FROZEN, "HELD", "SCHEDULED"):
            word = status_word(w.status)  # ended from outside (terminated): Temporal's word
        row = ReleaseRow(key, w.id, w.run_id, word, running, w.start_time, w.close_time, w.task_queue)
        if (old := self.rows.get(key)) is not None and old.run_id == w.run_id:
            row.state, row.state_error = old.state, old.state_error
        return row

    def _wants_state(self, row: ReleaseRow) -> bool:
        """Running releases each time; a finished one until its final state is read once."""
        return row.running or self.finished_read.get(row.key) != row.run_id

    async def _read_state(self, row: ReleaseRow, limit: asyncio.Semaphore) -> None:
        assert self.client is not None
        handle = self.client.get_workflow_handle(row.workflow_id, run_id=row.run_id)
        async with limit:
            try:
                row.state = await handle.query(
                    "progress", result_type=ReleaseState, rpc_timeout=timedelta(seconds=QUERY_SECONDS)
                )
                row.state_error = None
                if not row.running:
                    self.finished_read[row.key] = row.run_id
            except Exception as e:  # any failure (no worker, a timeout, the server away): shown, asked again
                row.state_error = (
                    f"its progress cannot be read now (no worker answers: {getattr(e, 'message', None) or e})"
                )
