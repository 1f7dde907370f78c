"""One deploy per (environment, container) at a time, across releases and workers: a standing workflow per target.

A target is an environment (or the artifactory) and a container. Its lock is a long-lived workflow,
`lock/<task queue>/<target>` (StandingLockWorkflow), that keeps an owner and a first-come queue of
waiters, and continues as new when its history grows. Temporal keeps the lock through worker kills and
server restarts. An owner that ended without giving the lock back (a terminated release) is found by
signalling it while others wait: a signal to a closed workflow fails, and the lock moves on.

A release takes and gives back locks with an activity, `move_locks`. Taking is an Update (`take`): a free
lock answers "granted" at once, with no workflow started; a lock in use queues the request, answers who
holds it, and grants it later with a `lock_granted` signal to the requester. Giving a lock back is a
signal. Only the first use of a target starts its workflow, with the requester as its owner (the start
is the grant). TargetLockWorkflow is the 1.1 lock (a workflow per grant), kept so that its runs drain:
the standing lock answers 1.1's messages, and the activity asks a 1.1 lock run the 1.1 way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import VersioningBehavior, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

# While others wait, how often the lock checks that its owner still runs.
OWNER_CHECK = timedelta(seconds=10)
MAX_WAITERS = 1000
# A standing lock continues as new past this many history events: a worker that replays it (after a restart,
# or when its cache let it go) replays little, and its state is its owner and waiters only.
HISTORY_LIMIT = 500


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


class _Lock:
    """What both lock workflows keep and answer: an owner and a first-come queue; 1.1's request, give_back,
    owner_request."""

    @workflow.init
    def __init__(self, state: LockState) -> None:
        self.target = state.target
        self.owner = state.owner
        self.waiters = list(state.waiters)

    @workflow.signal
    def request(self, req: LockRequest) -> None:
        """A request by signal (a 1.1 release's activity signals, then queries owner_request)."""
        if not (self.owner and _same(self.owner, req)):
            self._queue(req)

    @workflow.signal
    def give_back(self, req: LockRequest) -> None:
        if self.owner and _same(self.owner, req):
            self.owner = None
        # A deploy cancelled while it waited leaves the queue too.
        self.waiters = [w for w in self.waiters if not _same(w, req)]

    @workflow.query
    def owner_request(self) -> LockRequest | None:
        return self.owner

    def _queue(self, req: LockRequest) -> None:
        # A retried request comes again: one place in the queue each.
        if any(_same(w, req) for w in self.waiters):
            return
        if len(self.waiters) >= MAX_WAITERS:
            workflow.logger.warning("lock %s: %d waiters, %s not queued", self.target, MAX_WAITERS, req.owner_id)
            return
        self.waiters.append(req)


@workflow.defn
class StandingLockWorkflow(_Lock):
    """A target's lock, standing: a free lock granted by an Update costs one workflow task and no start.

    A versioned worker runs it as UpgradingLockWorkflow (below); a change to it goes behind `workflow.patched`.
    """

    @workflow.update
    def take(self, req: LockRequest) -> LockAnswer:
        """Grant a free lock at once; else queue the request (once) and say who holds the lock."""
        if self.owner is None and not self.waiters:
            self.owner = req
        elif not (self.owner and _same(self.owner, req)):
            self._queue(req)
        mine = self.owner is not None and _same(self.owner, req)
        holder = None if mine or self.owner is None else self.owner.release_key
        return LockAnswer(target=self.target, lock_id=workflow.info().workflow_id, granted=mine, owner=holder)

    @workflow.query
    def waiting(self) -> int:
        return len(self.waiters)

    @workflow.run
    async def run(self, state: LockState) -> None:
        while not _rest_due():
            if self.owner is None and self.waiters:
                nxt = self.waiters.pop(0)
                if await _tell(nxt, "lock_granted"):
                    self.owner = nxt
            elif self.owner is None:
                # Free: nothing to do until someone takes it (an Update grants it in its own handler).
                await workflow.wait_condition(lambda: self.owner is not None or bool(self.waiters) or _rest_due())
            else:
                await _watch_owner(self, _rest_due)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(LockState(target=self.target, owner=self.owner, waiters=self.waiters))


def _rest_due() -> bool:
    """Whether the lock's history is long enough to continue as new."""
    info = workflow.info()
    return info.get_current_history_length() >= HISTORY_LIMIT or info.is_continue_as_new_suggested()


async def _watch_owner(lock: _Lock, rest_due: Callable[[], bool]) -> None:
    """Wait for the owner to give the lock back; while others wait, check now and then that it still runs."""
    owner, queued = lock.owner, bool(lock.waiters)
    try:
        # Wake when the lock is given back, when the first waiter comes (time to watch the owner),
        # or when the history grows long.
        await workflow.wait_condition(
            lambda: lock.owner is not owner or bool(lock.waiters) != queued or rest_due(),
            timeout=OWNER_CHECK if queued else None,
        )
    except TimeoutError:
        if owner is not None and lock.owner is owner and not await _tell(owner, "lock_check"):
            workflow.logger.info("lock %s: owner %s has ended; lock given back", lock.target, owner.owner_id)
            lock.owner = None


@workflow.defn
class TargetLockWorkflow(_Lock):
    """The 1.1 lock, a workflow per grant that ends when free: kept so that 1.1 lock runs drain (removed in 1.3.0).

    Its code is as 1.1 recorded it, so that its histories replay; 1.2 starts none.
    """

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
            await _watch_owner(self, lambda: workflow.info().is_continue_as_new_suggested())
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(LockState(target=self.target, owner=self.owner, waiters=self.waiters))


async def _tell(req: LockRequest, signal: str) -> bool:
    """Signal the requester; False when it has ended (so it can own nothing)."""
    try:
        await workflow.get_external_workflow_handle(req.owner_id, run_id=req.owner_run_id).signal(signal, req.lock_id)
    except ApplicationError as err:
        if err.type == "ExternalWorkflowExecutionNotFound":
            return False
        raise
    return True


@workflow.defn(name="StandingLockWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class UpgradingLockWorkflow(StandingLockWorkflow):
    """The standing lock on a versioned worker: AUTO_UPGRADE, not pinned like a release. It never ends, so it
    moves to the current worker version at its next task (docs/design.md, Versioning). The server refuses a
    versioning behavior from an unversioned worker, hence a class of its own."""

    @workflow.run
    async def run(self, state: LockState) -> None:
        await super().run(state)


def lock_workflows(versioned: bool) -> list[type]:
    """The lock workflows a worker runs: the standing lock, and the 1.1 lock while its runs drain."""
    return [UpgradingLockWorkflow if versioned else StandingLockWorkflow, TargetLockWorkflow]


LOCK_WORKFLOWS = lock_workflows(versioned=False)


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
        handle = self.client.get_workflow_handle(req.lock_id)
        # Twice at most: a lock that ended (terminated by hand) between the Update and the start is asked again.
        for _ in range(2):
            try:
                return await handle.execute_update(StandingLockWorkflow.take, req)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            except WorkflowUpdateFailedError:
                if (await handle.describe()).workflow_type == TargetLockWorkflow.__name__:
                    return await self._ask_1_1(req)  # a 1.1 lock run, draining: it has no Update
                raise
            try:
                # The target's first use: started with this request as its owner, which is the grant.
                await self.client.start_workflow(
                    StandingLockWorkflow.run,
                    LockState(target=req.target, owner=req),
                    id=req.lock_id,
                    task_queue=task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    static_summary=f"lock {req.target}: one deploy at a time",
                )
                return LockAnswer(target=req.target, lock_id=req.lock_id, granted=True)
            except WorkflowAlreadyStartedError:
                continue  # another release started it first: ask it
        raise ApplicationError(f"lock {req.target}: neither running nor startable; asked again")

    async def _ask_1_1(self, req: LockRequest) -> LockAnswer:
        """Ask a 1.1 lock run as 1.1 did: a request signal, then who owns it."""
        handle = self.client.get_workflow_handle(req.lock_id)
        await handle.signal(TargetLockWorkflow.request, req)
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
