"""One deploy per (environment, container) at a time, across releases and workers: a lock workflow per target.

A target is an environment (or the artifactory) and a container. Its lock is a small workflow,
`lock/<task queue>/<target>`, that keeps an owner and a first-come queue of waiters. Temporal
keeps the lock through worker kills and server restarts. An owner that ended without giving the
lock back (a terminated release) is found by signalling it while others wait: a signal to a closed
workflow fails, and the lock moves on.

A release takes and gives back locks with an activity, `move_locks`. A free lock costs one start
of its workflow, with the requester as its owner: the server refuses a second start of a running
workflow id, so that start is the grant, and no round trip through a workflow task is needed. A
lock in use gets the request as a signal (signal-with-start) and grants it later with a
`lock_granted` signal to the requester. Giving a lock back is a signal.
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

# While others wait, how often the lock checks that its owner still runs.
OWNER_CHECK = timedelta(seconds=10)
MAX_WAITERS = 1000


class LockRequest(BaseModel):
    lock_id: str
    target: str  # "DEV/frontend", for people
    owner_id: str  # the requesting workflow
    owner_run_id: str
    release_key: str


class LockMove(BaseModel):
    """Locks to give back and locks to take, in one activity."""

    give_back: list[LockRequest] = Field(default_factory=list)
    take: list[LockRequest] = Field(default_factory=list)


class LockAnswer(BaseModel):
    target: str
    # Named by the worker that asked, from its task queue: a replay elsewhere reads it from history.
    lock_id: str
    granted: bool
    # False when it was not asked for: one of the same container before it in the move is not granted yet.
    asked: bool = True
    # The release that owns the lock when it is not granted yet (None: unknown, or on its way).
    owner: str | None = None


class LockState(BaseModel):
    """The lock's whole state: its input, and what it carries over a continue-as-new."""

    target: str
    owner: LockRequest | None = None
    waiters: list[LockRequest] = Field(default_factory=list)


def lock_id(task_queue: str, target: str) -> str:
    return f"lock/{task_queue}/{target}"


def target_of(lock: str) -> str:
    """The target a lock id names ("QC/frontend"): its last two parts, whatever its task queue holds."""
    return "/".join(lock.split("/")[-2:])


def _same(a: LockRequest, b: LockRequest) -> bool:
    return (a.owner_id, a.owner_run_id) == (b.owner_id, b.owner_run_id)


@workflow.defn
class TargetLockWorkflow:
    @workflow.init
    def __init__(self, state: LockState) -> None:
        self.target = state.target
        self.owner = state.owner
        self.waiters = list(state.waiters)

    @workflow.signal
    def request(self, req: LockRequest) -> None:
        # A retried request activity sends its signal again: one place in the queue each.
        if (self.owner and _same(self.owner, req)) or any(_same(w, req) for w in self.waiters):
            return
        if len(self.waiters) >= MAX_WAITERS:
            workflow.logger.warning(
                "lock %s: %d waiters already, request of %s dropped", self.target, MAX_WAITERS, req.owner_id
            )
            return
        self.waiters.append(req)

    @workflow.signal
    def give_back(self, req: LockRequest) -> None:
        if self.owner and _same(self.owner, req):
            self.owner = None
        # A deploy cancelled while it waited leaves the queue too.
        self.waiters = [w for w in self.waiters if not _same(w, req)]

    @workflow.query
    def owner_request(self) -> LockRequest | None:
        return self.owner

    @workflow.run
    async def run(self, state: LockState) -> None:
        while True:
            if self.owner is None and self.waiters:
                nxt = self.waiters.pop(0)
                if await _tell(nxt, "lock_granted"):
                    self.owner = nxt
                continue
            if self.owner is None:
                # Free and nobody waits: end, so no idle lock lingers; the next request starts a new run.
                # A request that lands as this run ends makes Temporal retry the ending with it.
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self.waiters:
                    return
                continue
            await self._watch_owner()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(LockState(target=self.target, owner=self.owner, waiters=self.waiters))

    async def _watch_owner(self) -> None:
        """Wait for the owner to give the lock back; while others wait, check now and then that it still runs."""
        owner, queued = self.owner, bool(self.waiters)
        try:
            # Wake when the lock is given back, when the first waiter comes (time to watch the owner),
            # or when the history grows long.
            await workflow.wait_condition(
                lambda: (
                    self.owner is not owner
                    or bool(self.waiters) != queued
                    or workflow.info().is_continue_as_new_suggested()
                ),
                timeout=OWNER_CHECK if queued else None,
            )
        except TimeoutError:
            if owner is not None and self.owner is owner and not await _tell(owner, "lock_check"):
                workflow.logger.info("lock %s: owner %s has ended; lock given back", self.target, owner.owner_id)
                self.owner = None


async def _tell(req: LockRequest, signal: str) -> bool:
    """Signal the requester; False when it has ended (so it can own nothing)."""
    try:
        await workflow.get_external_workflow_handle(req.owner_id, run_id=req.owner_run_id).signal(signal, req.lock_id)
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
        return [self.move_locks]

    @activity.defn
    async def move_locks(self, move: LockMove) -> list[LockAnswer]:
        """Give back move.give_back and ask for move.take; one answer per lock asked for, in order.

        A container's locks are asked for in the order given, and none after one that is not
        granted: taken out of order, two releases could each own what the other waits for.
        Lock ids are named here, from this worker's task queue.
        """
        by_container: dict[str, list[LockRequest]] = {}
        for req in move.take:
            by_container.setdefault(req.target.partition("/")[2], []).append(req)
        # Side by side: containers are independent, and what is given back is never asked for.
        asked = await asyncio.gather(
            *map(self._ask_in_order, by_container.values()), *map(self._give_back, move.give_back)
        )
        answers = {a.target: a for group in asked[: len(by_container)] for a in group}  # type: ignore[union-attr]
        return [answers[req.target] for req in move.take]

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
            # Started with this request as its owner: only one start of a running id succeeds.
            await self.client.start_workflow(
                TargetLockWorkflow.run,
                LockState(target=req.target, owner=req),
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
        owner = await handle.query(TargetLockWorkflow.owner_request)
        if owner is not None and _same(owner, req):
            return LockAnswer(target=req.target, lock_id=req.lock_id, granted=True)
        return LockAnswer(
            target=req.target, lock_id=req.lock_id, granted=False, owner=owner.release_key if owner else None
        )

    async def _give_back(self, req: LockRequest) -> LockAnswer | None:
        try:
            await self.client.get_workflow_handle(req.lock_id).signal(TargetLockWorkflow.give_back, req)
        except RPCError as err:
            # A lock that has ended (or an operator terminated) owns nothing any more.
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        return None
