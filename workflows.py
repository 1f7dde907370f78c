"""The release workflow: gather a release from the catalog, wait for its date and its approvals, check what it
promotes, run its deploys DEV → TEST → QC → PROD, and say what happened.

Each concern is a helper the workflow owns (orchestrator/flow/): approvals and the release date, freeze windows,
the target locks, the failure policy, the deploys, and the ReleaseRun they all report to. Deterministic code
only: every side effect happens in an activity (activities.py).
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities import ReleaseActivities
    from orchestrator.errors import root_cause
    from orchestrator.flow.approvals import Approvals
    from orchestrator.flow.deploys import Deploys
    from orchestrator.flow.entry_approvals import EntryApprovals
    from orchestrator.flow.failure_policy import FailurePolicy
    from orchestrator.flow.freeze_gate import FreezeGate
    from orchestrator.flow.lock_client import LockClient
    from orchestrator.flow.messages import update_and_signal
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import bookkeeping, message_of, record
    from orchestrator.names import check_approver, clip, one_line
    from shared import (
        CANCELLED,
        FAILED,
        RUNNING,
        SUCCESS,
        Approval,
        ApprovalReply,
        Decision,
        DecisionReply,
        ReleaseInfo,
        ReleaseRequest,
        ReleaseResult,
        ReleaseState,
        Unfreeze,
        UnfreezeReply,
    )


# An input that fails validation (a client other than run_workflow.py) fails the release at once instead of
# retrying its first task. Which worker version runs it: docs/design.md, Versioning.
@workflow.defn(failure_exception_types=[ValidationError])
class ReleaseWorkflow:
    @workflow.init
    def __init__(self, request: ReleaseRequest) -> None:
        self.release = ReleaseRun(ReleaseInfo(release_key=request.release_key, now=request.now))
        self.freeze = FreezeGate(self.release)
        self.approvals = Approvals(self.release, EntryApprovals(self.release, self.freeze.waiting))
        self.locks = LockClient(self.release)
        self.policy = FailurePolicy(self.release, self.locks, self.freeze.waiting)
        self.cancelling: Decision | None = None
        self.deploys = Deploys(self.release, self.locks, self.freeze, self.approvals.entry, self.policy)

    # --- what people and locks send: each handler delegates ---

    @workflow.query
    def progress(self) -> ReleaseState:
        return self.release.state

    approve, approve_signal = update_and_signal(
        "approve", Approval, ApprovalReply, lambda wf: wf.approvals, "an approval"
    )
    unfreeze, unfreeze_signal = update_and_signal(
        "unfreeze", Unfreeze, UnfreezeReply, lambda wf: wf.freeze, "an unfreeze"
    )
    retry, retry_signal = update_and_signal("retry", Decision, DecisionReply, lambda wf: wf.policy.retry, "a retry")
    rollback, rollback_signal = update_and_signal(
        "rollback", Decision, DecisionReply, lambda wf: wf.policy.rollback, "a rollback"
    )

    @workflow.signal
    def lock_granted(self, lock: str) -> None:
        self.locks.grant(lock)

    @workflow.signal
    def lock_check(self, lock: str) -> None:
        """A lock asks whether this release still runs: a signal that arrives is the answer."""

    @workflow.signal
    def cancelled_by(self, decision: Decision) -> None:
        """Who cancels the release (run_workflow.py cancel sends it before the cancel), to be recorded."""
        self.cancelling = decision

    # --- the release ---

    @workflow.run
    async def run(self, request: ReleaseRequest) -> ReleaseResult:
        try:
            await self._gather(request)
            await self.approvals.record_people()
            await self.approvals.wait_for_release_date()
            await self.approvals.ask_approval_system()
            skipped = await self.approvals.settle()
            self.release.set_status(RUNNING)
            to_run = [d for d in self.release.info.deploys if d.deploy_key not in skipped]
            await self.deploys.check_upstream(to_run)
            outcomes = await self.deploys.run_all(to_run)
            await workflow.wait_condition(workflow.all_handlers_finished)
        except (asyncio.CancelledError, Exception) as err:
            # A cancel that lands while an activity runs arrives as that activity's error.
            if isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err):
                self.release.finish(CANCELLED, f"deployed before the cancel: {self.release.deployed()}")
                await self._record_cancel()
            else:
                self.release.finish(FAILED, message_of(root_cause(err)))
            raise
        self.release.finish(SUCCESS)
        return ReleaseResult(release_key=request.release_key, status="SUCCESS", deploys=outcomes, skipped=skipped)

    async def _record_cancel(self) -> None:
        """Record who cancelled the release, if they said (a cancel from elsewhere names nobody)."""
        decision, key = self.cancelling, self.release.state.release_key
        if decision is not None and decision.approver.strip():
            by = one_line(decision.approver)[:100]
            self.release.event(f"cancelled by {by}")
            await record(self.release, "cancel", by, [key], identity=decision.identity)

    async def _gather(self, request: ReleaseRequest) -> None:
        """The release as the worker's catalog describes it; the input says only which, and who asks."""
        key = request.release_key
        if request.by is not None:
            try:
                check_approver(request.by, "starts it")
            except ValueError as e:
                raise ApplicationError(f"release {key}: {e}", type="InvalidInput", non_retryable=True) from None
        if request.model_extra:
            self._refuse_extra(request)
        if request.rollback is not None:
            if request.by is None:
                raise ApplicationError(
                    f"release {key}: say who asks the rollback", type="InvalidInput", non_retryable=True
                )
            release = await bookkeeping(ReleaseActivities.gather_rollback, request, f"gather {key}")
            release = release.model_copy(update={"identity": request.identity})
        else:
            gathered = await bookkeeping(ReleaseActivities.gather_deployments, key, f"gather deploys of {key}")
            update = {"now": request.now, "started_by": request.by, "identity": request.identity}
            release = gathered.model_copy(update=update)
        if not release.deploys:
            raise ApplicationError(f"release {key} has no deploys", non_retryable=True)
        self.release.gathered(release)

    def _refuse_extra(self, request: ReleaseRequest) -> None:
        """An input with fields no person chooses is refused (since 1.1; docs/design.md, Patches: trust-boundary)."""
        workflow.deprecate_patch("trust-boundary")
        names = ", ".join(sorted(request.model_extra or {}))
        raise ApplicationError(
            f"release {request.release_key}: its input holds {clip(names, 200)}, which no person chooses: a "
            "release's input is its key, now, who starts it and a rollback target; the worker's catalog gives "
            "the rest",
            type="InvalidInput",
            non_retryable=True,
        )
