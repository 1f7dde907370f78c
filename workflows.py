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
    from orchestrator.flow.failure_policy import FailurePolicy
    from orchestrator.flow.freeze_gate import FreezeGate
    from orchestrator.flow.lock_client import LockClient
    from orchestrator.flow.messages import update_and_signal
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import bookkeeping, message_of
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
    def __init__(self, release: ReleaseInfo) -> None:
        self.release = ReleaseRun(release)
        self.approvals = Approvals(self.release)
        self.freeze = FreezeGate(self.release, self.approvals)
        self.locks = LockClient(self.release)
        self.policy = FailurePolicy(self.release, self.locks, self.freeze.waiting)
        self.deploys = Deploys(self.release, self.locks, self.freeze, self.policy)

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

    # --- the release ---

    @workflow.run
    async def run(self, release: ReleaseInfo) -> ReleaseResult:
        try:
            await self._gather(release)
            await self.approvals.record_requester()
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
            else:
                self.release.finish(FAILED, message_of(root_cause(err)))
            raise
        self.release.finish(SUCCESS)
        return ReleaseResult(release_key=release.release_key, status="SUCCESS", deploys=outcomes, skipped=skipped)

    async def _gather(self, release: ReleaseInfo) -> None:
        """The release's deploys, from the catalog unless the input brings them (a rollback-env)."""
        if not release.deploys:
            summary = f"gather deploys of {release.release_key}"
            gathered = await bookkeeping(ReleaseActivities.gather_deployments, release.release_key, summary)
            release = gathered.model_copy(update={"now": release.now})
        if not release.deploys:
            raise ApplicationError(f"release {release.release_key} has no deploys", non_retryable=True)
        self.release.gathered(release)
