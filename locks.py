"""One deploy per (environment, container) at a time, across releases and workers: a lock workflow per target.

A target is an environment (or the artifactory) and a container. Its lock is a small workflow,
`lock/<task queue>/<target>`, that keeps a holder and a first-come queue of waiters. Temporal
keeps the lock through worker kills and server restarts. A holder that ended without releasing
(a terminated release) is found by signalling it while others wait: a signal to a closed
workflow fails, and the lock moves on.

A release takes and gives back locks with an activity, `move_locks`. A free lock costs one
start of its workflow, with the requester as its holder: the server refuses a second start of a
running workflow id, so that start is the grant, and no round trip through a workflow task is
needed. A lock in use gets the request as a signal (signal-with-start) and grants it later with
a `lock_granted` signal to the requester. Giving a lock back is a signal. (`request_lock`, a
regular activity that always queued and always waited for the grant signal, stays for the
deploys of releases recorded before.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

# While others wait, how often the lock checks that its holder still runs.
HOLDER_CHECK = timedelta(seconds=10)
MAX_WAITERS = 1000


class LockRequest(BaseModel):
    lock_id: str
    target: str  # "DEV/frontend", for people
    holder_id: str  # the requesting workflow
    holder_run_id: str
    release_key: str


class LockMove(BaseModel):
    """Locks to give back and locks to ask for, in one activity."""

    release: list[LockRequest] = Field(default_factory=list)
    acquire: list[LockRequest] = Field(default_factory=list)


class LockAnswer(BaseModel):
    target: str
    # Named by the worker that asked, from its task queue: a replay elsewhere reads it from history.
    lock_id: str
    granted: bool
    # False when it was not asked for: one of the same container before it in the move is not granted yet.
    asked: bool = True
    # The release that holds the lock when it is not granted yet (None: unknown, or on its way).
    holder: str | None = None


class LockState(BaseModel):
    """The lock's whole state: its input, and what it carries over a continue-as-new."""

    target: str
    holder: LockRequest | None = None
    waiters: list[LockRequest] = Field(default_factory=list)


def lock_id(task_queue: str, target: str) -> str:
    return f"lock/{task_queue}/{target}"


def _same(a: LockRequest, b: LockRequest) -> bool:
    return (a.holder_id, a.holder_run_id) == (b.holder_id, b.holder_run_id)


@workflow.defn
class TargetLockWorkflow:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        self.target = state.target
        self.holder = state.holder
        self.waiters = list(state.waiters)

    @workflow.signal
    def request(self, req: LockRequest) -> None:
        # A retried request activity sends its signal again: one place in the queue each.
        if (self.holder and _same(self.holder, req)) or any(_same(w, req) for w in self.waiters):
            return
        if len(self.waiters) >= MAX_WAITERS:
            workflow.logger.warning(
                "lock %s: %d waiters already, request of %s dropped", self.target, MAX_WAITERS, req.holder_id
            )
            return
        self.waiters.append(req)

    @workflow.signal
    def release(self, req: LockRequest) -> None:
        if self.holder and _same(self.holder, req):
            self.holder = None
        # A deploy cancelled while it waited leaves the queue too.
        self.waiters = [w for w in self.waiters if not _same(w, req)]

    @workflow.query
    def holder_release(self) -> str | None:
        return self.holder.release_key if self.holder else None

    @workflow.query
    def holder_request(self) -> LockRequest | None:
        return self.holder

    @workflow.run
    async def run(self, state: LockState) -> None:
        while True:
            if self.holder is None and self.waiters:
                nxt = self.waiters.pop(0)
                if await _tell(nxt, "lock_granted"):
                    self.holder = nxt
                continue
            if self.holder is None:
                # Free and nobody waits: end, so no idle lock lingers; the next request starts a new run.
                # A request that lands as this run ends makes Temporal retry the ending with it.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self.waiters:
                    return
                continue
            held, queued = self.holder, bool(self.waiters)
            try:
                # Wake when the lock is released, when the first waiter comes (time to watch
                # the holder), or when the history grows long.
                await workflow.wait_condition(
                    lambda held=held, queued=queued: (
                        self.holder is not held
                        or bool(self.waiters) != queued
                        or workflow.info().is_continue_as_new_suggested()
                    ),
                    timeout=HOLDER_CHECK if queued else None,
                )
            except TimeoutError:
                if self.holder is held and not await _tell(held, "lock_check"):
                    workflow.logger.info("lock %s: holder %s has ended; lock released", self.target, held.holder_id)
                    self.holder = None
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(LockState(target=self.target, holder=self.holder, waiters=self.waiters))


async def _tell(req: LockRequest, signal: str) -> bool:
    """Signal the requester; False when it has ended (so it can hold nothing)."""
    try:
        await workflow.get_external_workflow_handle(req.holder_id, run_id=req.holder_run_id).signal(signal, req.lock_id)
    except ApplicationError as err:
        if err.type == "ExternalWorkflowExecutionNotFound":
            return False
        raise
    return True


class LockActivities:
    def __init__(self, client: Client) -> None:
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        """Every lock activity, for registering on a worker."""
        return [self.request_lock, self.move_locks]

    @activity.defn
    async def move_locks(self, move: LockMove) -> list[LockAnswer]:
        """Give back move.release and ask for move.acquire; one answer per lock asked for, in order.

        A container's locks are asked for in the order given, and none after one that is not
        granted: taken out of order, two releases could each hold what the other waits for.
        Lock ids are named here, from this worker's task queue.
        """
        by_container: dict[str, list[LockRequest]] = {}
        for req in move.acquire:
            by_container.setdefault(req.target.partition("/")[2], []).append(req)
        # Side by side: containers are independent, and what is given back is never asked for.
        asked = await asyncio.gather(
            *map(self._ask_in_order, by_container.values()), *map(self._give_back, move.release)
        )
        answers = {a.target: a for group in asked[: len(by_container)] for a in group}  # type: ignore[union-attr]
        return [answers[req.target] for req in move.acquire]

    async def _ask_in_order(self, reqs: list[LockRequest]) -> list[LockAnswer]:
        answers: list[LockAnswer] = []
        for req in reqs:
            if answers and not answers[-1].granted:
                name = lock_id(activity.info().task_queue, req.target)
                answers.append(LockAnswer(target=req.target, lock_id=name, granted=False, asked=False))
            else:
                answers.append(await self._ask(req))
        return answers

    async def _ask(self, req: LockRequest) -> LockAnswer:
        task_queue = activity.info().task_queue
        req = req.model_copy(update={"lock_id": lock_id(task_queue, req.target)})
        summary = f"lock {req.target}: one deploy at a time"
        try:
            # Started with this request as its holder: only one start of a running id succeeds.
            await self.client.start_workflow(
                TargetLockWorkflow.run,
                LockState(target=req.target, holder=req),
                id=req.lock_id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=summary,
            )
            return LockAnswer(target=req.target, lock_id=req.lock_id, granted=True)
        except WorkflowAlreadyStartedError:
            pass
        # In use (or this request was granted by an attempt whose answer was lost): queue, then look.
        handle = await self.client.start_workflow(
            TargetLockWorkflow.run,
            LockState(target=req.target),
            id=req.lock_id,
            task_queue=task_queue,
            start_signal="request",
            start_signal_args=[req],
            static_summary=summary,
        )
        holder = await handle.query(TargetLockWorkflow.holder_request)
        if holder is not None and _same(holder, req):
            return LockAnswer(target=req.target, lock_id=req.lock_id, granted=True)
        return LockAnswer(
            target=req.target, lock_id=req.lock_id, granted=False, holder=holder.release_key if holder else None
        )

    async def _give_back(self, req: LockRequest) -> LockAnswer | None:
        try:
            await self.client.get_workflow_handle(req.lock_id).signal(TargetLockWorkflow.release, req)
        except RPCError as err:
            # A lock that has ended (or an operator terminated) holds nothing any more.
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        return None

    @activity.defn
    async def request_lock(self, req: LockRequest) -> str | None:
        """Queue for the lock, starting its workflow if needed; returns the release that holds it now."""
        handle = await self.client.start_workflow(
            TargetLockWorkflow.run,
            LockState(target=req.target),
            id=req.lock_id,
            task_queue=activity.info().task_queue,
            start_signal="request",
            start_signal_args=[req],
            static_summary=f"lock {req.target}: one deploy at a time",
        )
        return await handle.query(TargetLockWorkflow.holder_release)
