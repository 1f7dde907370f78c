"""How the release starts its activities: the timeouts and retry policy of each kind, defined once.

Workflow code: every side effect is in an activity. Three kinds:
- bookkeeping (gather, approvals, the upstream check, records): a person fixes what they need (a catalog, the
  approval system) while they retry, so they are regular activities, shown pending with their last error;
- steps (build, deploy, test, rollback): people watch them, they heartbeat, and a dead worker is noticed in 5 s;
- lock moves: short, beside the steps, off the critical path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import ReleaseActivities
    from orchestrator.errors import NON_RETRYABLE_ERRORS, root_cause
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.locks import LockActivities, LockAnswer, LockMove
    from orchestrator.names import clip
    from shared import DecisionRecord, RollbackRequest, StepInput, StepResult, step_summary

T = TypeVar("T")

BOOKKEEPING_TIMEOUT = timedelta(seconds=30)
# Simulated faults and workspace errors a person can fix (permissions, a full disk) retry with a capped
# backoff; bad input and bugs fail at once.
BOOKKEEPING_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), non_retryable_error_types=NON_RETRYABLE_ERRORS)
STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=NON_RETRYABLE_ERRORS,
)
# Steps heartbeat while they work, so a step whose worker died is retried after STEP_HEARTBEAT, whatever
# the start-to-close: that one only bounds a step that keeps heartbeating, such as a test running its
# checks' commands one after another.
STEP_TIMEOUT = timedelta(hours=24)
STEP_HEARTBEAT = timedelta(seconds=5)
LOCK_MOVE_TIMEOUT = timedelta(seconds=10)
LOCK_MOVE_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=5))


async def bookkeeping(activity: Callable[..., T], arg: Any, summary: str) -> T:
    """Run a bookkeeping activity (ReleaseActivities.gather_deployments, ...) to its result."""
    return await workflow.execute_activity_method(
        activity,  # type: ignore[arg-type]
        arg,
        start_to_close_timeout=BOOKKEEPING_TIMEOUT,
        retry_policy=BOOKKEEPING_RETRY,
        summary=summary,
    )


def start_step(verb: str, step: StepInput) -> workflow.ActivityHandle[StepResult]:
    """Start a build, deploy or test, named for people ("deploy frontend-1.0 → QC") by its id and summary."""
    return _start(getattr(ReleaseActivities, verb), step, step_summary(verb, step))


def start_rollback(request: RollbackRequest) -> workflow.ActivityHandle[StepResult]:
    """Start a rollback: a step like the others, since it must happen; retried like them."""
    return _start(ReleaseActivities.rollback, request, step_summary("rollback", request.step))


def _start(activity: Callable[..., Any], arg: Any, name: str) -> workflow.ActivityHandle[StepResult]:
    return workflow.start_activity_method(
        activity,
        arg,
        activity_id=name,
        start_to_close_timeout=STEP_TIMEOUT,
        heartbeat_timeout=STEP_HEARTBEAT,
        retry_policy=STEP_RETRY,
        # A cancel waits for the attempt in flight: no copy is cut off midway.
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=name,
    )


async def whole(handle: workflow.ActivityHandle[StepResult]) -> tuple[StepResult, bool]:
    """The step's result, and whether the release was cancelled while the step ran.

    A cancelled release lets the attempt in flight finish, so no copy is cut off midway, but
    asks Temporal for no further retries: cancel ends in seconds even while a step keeps failing.
    """
    try:
        return await asyncio.shield(handle), False
    except asyncio.CancelledError:
        handle.cancel()
        try:
            return await handle, True
        except Exception:
            raise asyncio.CancelledError() from None


async def move_locks(move: LockMove) -> list[LockAnswer]:
    """Give back and take locks in one activity.

    A regular activity, though a local one would be cheaper (no task round trip, no history events): with
    local activities, a status query that arrived while one ran failed with a nondeterminism error in the
    SDK's core ("Missing associated machine for LocalActivity"). It does not hold up the workflow task
    either, so the step scheduled beside it starts at once.
    """
    summary = ", ".join([f"lock {r.target}" for r in move.take] + [f"unlock {r.target}" for r in move.give_back])
    return await workflow.execute_activity_method(
        LockActivities.move_locks,
        move,
        start_to_close_timeout=LOCK_MOVE_TIMEOUT,
        retry_policy=LOCK_MOVE_RETRY,
        summary=clip(summary, 200),
    )


async def record(
    run: ReleaseRun,
    step: str,
    by: str,
    deploy_keys: list[str],
    environments: list[str] = (),  # type: ignore[assignment]
    identity: str = "",
    summary: str | None = None,
) -> None:
    """Record a person's decision in the ledger: step approve, unfreeze, start, cancel or retry (DecisionRecord)."""
    decision = DecisionRecord(
        release_key=run.state.release_key,
        run_id=workflow.info().run_id,
        by=by,
        at=workflow.now(),
        deploy_keys=deploy_keys,
        step=step,  # type: ignore[arg-type]
        environments=list(environments),  # type: ignore[arg-type]
        identity=identity,
    )
    summary = summary or (f"record {step} by {by}" if step != "approve" else f"record approval by {by}")
    await bookkeeping(ReleaseActivities.record_approval, decision, summary)


def message_of(err: BaseException) -> str:
    """An error's own words, without the "Type: " that str() of an ApplicationError puts first."""
    return clip(getattr(err, "message", None) or str(err), 1000)


async def run_step(run: ReleaseRun, verb: str, step: StepInput, done: bool = False) -> None:
    """Run a build, deploy or test to its end, noting it in the release's progress; done: the environment's last."""
    run.note(step, "running", verb)
    try:
        result, cancelled = await whole(start_step(verb, step))
    except Exception as err:
        run.note(step, "failed", verb, error=message_of(root_cause(err)))
        raise
    run.note(step, "done" if done else "running", verb, result.attempt)
    if cancelled:
        raise asyncio.CancelledError()
