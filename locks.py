"""One deploy per (environment, container) at a time, across releases and workers: a lock workflow per target.

A target is an environment (or the artifactory) and a container. Its lock is a small workflow,
`lock/<task queue>/<target>`, that keeps a holder and a first-come queue of waiters. A deploy
asks for it through an activity (signal-with-start needs a client), waits for the grant
signal, and signals the release when done. Temporal keeps the lock through worker kills and
server restarts. A holder that ended without releasing (a terminated release) is found by
signalling it while others wait: a signal to a closed workflow fails, and the lock moves on.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

# While others wait, how often the lock checks that its holder still runs.
HOLDER_CHECK = timedelta(seconds=10)
MAX_WAITERS = 1000


class LockRequest(BaseModel):
    lock_id: str
    target: str  # "DEV/frontend", for people
    holder_id: str  # the requesting workflow
    holder_run_id: str
    release_key: str


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
