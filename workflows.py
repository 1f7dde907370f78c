"""ReleaseWorkflow runs one DeployWorkflow per deploy; each promotes its container DEV → PROD.

Deterministic code only: every side effect happens in an activity.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities import ReleaseActivities, step_summary
    from release_management import NON_RETRYABLE_ERRORS
    from shared import (
        AWAITING_APPROVAL,
        CANCELLED,
        ENVIRONMENTS,
        FAILED,
        RUNNING,
        SCHEDULED,
        SUCCESS,
        Approval,
        ApprovalRecord,
        Cell,
        DeployRequest,
        DeployResult,
        DeployState,
        ReleaseInfo,
        ReleaseResult,
        ReleaseState,
        StepInput,
        StepProgress,
        StepResult,
        render_progress,
        root_cause,
    )

# Registered by `make server` and the tests; on Temporal Cloud, create them in the namespace.
RELEASE_KEY = SearchAttributeKey.for_keyword("ReleaseKey")
RELEASE_STATUS = SearchAttributeKey.for_keyword("ReleaseStatus")


# A workflow input that fails validation (sent by a client other than
# run_workflow.py) fails the workflow at once instead of retrying its first task.
@workflow.defn(failure_exception_types=[ValidationError])
class ReleaseWorkflow:
    @workflow.init
    def __init__(self, release: ReleaseInfo) -> None:
        self.release = release
        self.state = ReleaseState(release_key=release.release_key, release_date=release.release_date)
        self.gathered = False

    @workflow.run
    async def run(self, release: ReleaseInfo) -> ReleaseResult:
        try:
            result = await self._release()
        except asyncio.CancelledError:
            for cell in (c for d in self.state.deploys for c in d.cells.values()):
                if cell.status in ("pending", "running"):
                    cell.status = "cancelled"
            deployed = "; ".join(
                f"{d.artifact} → {', '.join(e for e, c in d.cells.items() if c.deployed)}"
                for d in self.state.deploys
                if any(c.deployed for c in d.cells.values())
            )
            self._finish(CANCELLED, f"deployed before the cancel: {deployed or 'nothing'}")
            raise
        except Exception as err:
            self._finish(FAILED, str(root_cause(err)))
            raise
        self._finish(SUCCESS)
        return result

    async def _release(self) -> ReleaseResult:
        release = self.release
        if not release.deploys:
            gathered = await workflow.execute_activity_method(
                ReleaseActivities.gather_deployments,
                release.release_key,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=10), non_retryable_error_types=NON_RETRYABLE_ERRORS
                ),
                summary=f"gather deploys of {release.release_key}",
            )
            release = gathered.model_copy(update={"now": release.now})
        if not release.deploys:
            raise ApplicationError(f"release {release.release_key} has no deploys", non_retryable=True)
        self.release = release
        self.state.release_date = release.release_date
        self.state.approved = release.approved
        self.state.deploys = [
            DeployState(
                deploy_key=d.deploy_key,
                container_id=d.container_id,
                artifact=f"{d.container_id}-{d.version}",
                approved=d.approved,
                cells={env: Cell() for env in d.environments},
            )
            for d in release.deploys
        ]
        self.gathered = True

        await self._wait_for_release_date()
        report = await workflow.execute_activity_method(
            ReleaseActivities.gather_release_approval,
            release,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary=f"check approval of {release.release_key}",
        )
        # The approval system may add approvals; it never takes back one a person gave.
        self.state.approved = self.state.approved or report.release_approved
        for d in self.state.deploys:
            d.approved = d.approved or d.deploy_key not in report.unapproved_deploys
        skipped = await self._settle_approvals()

        self._set_status(RUNNING)
        info = workflow.info()
        to_run = [d for d in release.deploys if d.deploy_key not in skipped]
        # Deploys of different containers are independent, so they run side by side;
        # all of them finish (or fail) before the release reports, so none is cut off midway.
        outcomes: list[Any] = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    DeployWorkflow.run,
                    DeployRequest(release_key=release.release_key, run_id=info.run_id, deploy=d),
                    id=f"{info.workflow_id}/{d.container_id}",
                    static_summary=f"{d.container_id}-{d.version} → {', '.join(d.environments)}",
                    # A cancel waits until each deploy has stopped between two steps.
                    cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                for d in to_run
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ReleaseResult(release_key=release.release_key, status="SUCCESS", deploys=outcomes, skipped=skipped)

    async def _wait_for_release_date(self) -> None:
        if self.release.release_date is None or self.release.now:
            return
        not_before = datetime.combine(self.release.release_date, time.min, tzinfo=UTC)
        if workflow.now() >= not_before:
            return
        self._set_status(SCHEDULED)
        self._event(f"waiting for the release date, {not_before:%Y-%m-%d %H:%M} UTC")
        # A durable timer: it survives worker and server restarts, and costs nothing while it waits.
        await workflow.sleep(not_before - workflow.now(), summary=f"release date {self.release.release_date}")

    async def _settle_approvals(self) -> list[str]:
        """Apply the approval policy; returns the deploy keys to skip."""
        policy = self.release.approval_policy
        if self._awaiting_approval() and policy.unapproved == "hold":
            self._set_status(AWAITING_APPROVAL)
            self._event(f"waiting up to {policy.hold_hours:g} h for approval of {self._awaited()}")
            try:
                await workflow.wait_condition(
                    lambda: not self._awaiting_approval(),
                    timeout=timedelta(hours=policy.hold_hours),
                    timeout_summary="approval deadline",
                )
            except TimeoutError:
                if policy.after_hold == "stop" or not self.state.approved:
                    raise ApplicationError(
                        f"release {self.state.release_key}: no approval of {self._awaited()} "
                        f"within {policy.hold_hours:g} h",
                        type="NotApproved",
                        non_retryable=True,
                    ) from None
        if not self.state.approved:
            raise ApplicationError(
                f"release {self.state.release_key} is not approved", type="NotApproved", non_retryable=True
            )
        pending = [d for d in self.state.deploys if not d.approved]
        if pending and policy.unapproved == "stop":
            raise ApplicationError(
                f"release {self.state.release_key} has unapproved deploys: {self._awaited()}",
                type="NotApproved",
                non_retryable=True,
            )
        for d in pending:
            for cell in d.cells.values():
                cell.status = "skipped"
            self._event(f"skipped {d.artifact}: not approved")
        return [d.deploy_key for d in pending]

    def _awaiting_approval(self) -> bool:
        return not self.state.approved or any(not d.approved for d in self.state.deploys)

    def _awaited(self) -> str:
        names = [d.container_id for d in self.state.deploys if not d.approved]
        return ", ".join((["the release"] if not self.state.approved else []) + names)

    # --- approvals: an Update (validated, answers with the new state) or a Signal ---

    @workflow.update
    async def approve(self, approval: Approval) -> ReleaseState:
        await self._apply_approval(approval)
        return self.state

    @approve.validator
    def validate_approve(self, approval: Approval) -> None:
        self._approval_targets(approval)

    # Same name and shape as the update, so the Web UI's "Send a Signal" can approve too.
    @workflow.signal(name="approve")
    async def approve_signal(self, approval: Approval) -> None:
        try:
            self._approval_targets(approval)
        except ValueError as err:
            self._event(f"ignored an approval signal: {err}")
            return
        await self._apply_approval(approval)

    def _approval_targets(self, approval: Approval) -> tuple[bool, list[DeployState]]:
        """What an approval approves: (the release itself?, deploys). ValueError says why not."""
        key = self.state.release_key
        if not approval.approver.strip():
            raise ValueError("the approver is empty: say who approves")
        if self.state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({self.state.status}): nothing to approve")
        if not self.gathered:
            raise ValueError(f"release {key} is still gathering its deploys: try again in a moment")
        waiting = [d for d in self.state.deploys if not d.approved and not _skipped(d)]
        if approval.deploy is None:
            if self.state.approved and not waiting:
                raise ValueError(f"release {key} is already approved: nothing waits for approval")
            return not self.state.approved, waiting
        deploy = next((d for d in self.state.deploys if approval.deploy in (d.container_id, d.deploy_key)), None)
        if deploy is None:
            names = ", ".join(d.container_id for d in self.state.deploys)
            raise ValueError(f"release {key} has no deploy {approval.deploy!r}; its deploys: {names}")
        if _skipped(deploy):
            raise ValueError(f"{deploy.artifact} was skipped: start the release again to ship it")
        if deploy.approved:
            by = f" by {deploy.approved_by}" if deploy.approved_by else ""
            raise ValueError(f"{deploy.artifact} in release {key} is already approved{by}")
        return False, [deploy]

    async def _apply_approval(self, approval: Approval) -> None:
        release_too, deploys = self._approval_targets(approval)
        approver, now = approval.approver.strip(), workflow.now()
        if release_too:
            self.state.approved, self.state.approved_by, self.state.approved_at = True, approver, now
        for d in deploys:
            d.approved, d.approved_by, d.approved_at = True, approver, now
        what = (["the release"] if release_too else []) + [d.artifact for d in deploys]
        self._event(f"approved by {approver}: {', '.join(what)}")
        await workflow.execute_activity_method(
            ReleaseActivities.record_approval,
            ApprovalRecord(
                release_key=self.state.release_key,
                run_id=workflow.info().run_id,
                approver=approver,
                approved_at=now,
                deploy_keys=([self.state.release_key] if release_too else []) + [d.deploy_key for d in deploys],
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary=f"record approval by {approver}",
        )

    # --- progress ---

    @workflow.query
    def progress(self) -> ReleaseState:
        return self.state

    @workflow.signal
    def deploy_progress(self, progress: StepProgress) -> None:
        deploy = next((d for d in self.state.deploys if d.deploy_key == progress.deploy_key), None)
        if deploy is None or progress.env not in deploy.cells:
            return
        cell = deploy.cells[progress.env]
        cell.status, cell.step = progress.status, progress.step
        if progress.attempts:
            cell.deployed = cell.deployed or progress.step == "deploy"
            cell.steps_done += 1
            cell.attempts += progress.attempts
            tries = f" (attempt {progress.attempts})" if progress.attempts > 1 else ""
            self._event(
                f"{progress.step} {deploy.artifact} {'in' if progress.step == 'test' else '→'} {progress.env}{tries}"
            )
        if progress.error:
            self._event(f"{progress.step} {deploy.artifact} in {progress.env} failed: {progress.error}")
        self._show()

    def _event(self, text: str) -> None:
        self.state.events.append(f"{workflow.now():%H:%M:%S} {text}")
        self._show()

    def _show(self) -> None:
        workflow.set_current_details(f"```\n{render_progress(self.state)}\n```")

    def _set_status(self, status: str) -> None:
        self.state.status = status
        # Only releases started with the search attributes (so registered) upsert them.
        if workflow.info().typed_search_attributes.get(RELEASE_KEY) is not None:
            workflow.upsert_search_attributes([RELEASE_STATUS.value_set(status)])
        self._show()

    def _finish(self, status: str, error: str | None = None) -> None:
        self.state.error = error
        self._set_status(status)


def _skipped(deploy: DeployState) -> bool:
    return all(c.status == "skipped" for c in deploy.cells.values())


@workflow.defn(failure_exception_types=[ValidationError])
class DeployWorkflow:
    @workflow.run
    async def run(self, request: DeployRequest) -> DeployResult:
        deploy = request.deploy
        for env in deploy.environments:
            step = StepInput(release_key=request.release_key, run_id=request.run_id, deploy=deploy, env=env)
            # Only the first environment builds; later ones promote what was tested before.
            verbs = (["build"] if env == ENVIRONMENTS[0] else []) + ["deploy", "test"]
            await self._report(step, "running", verbs[0])
            for i, verb in enumerate(verbs):
                status = "done" if i == len(verbs) - 1 else "running"
                handle = self._start(verb, step)
                try:
                    result = await asyncio.shield(handle)
                except asyncio.CancelledError:
                    # A cancelled release lets the step in flight finish, so no copy is cut
                    # off midway and the deploy stops between two steps.
                    result = await handle
                    await self._report(step, status, verb, result.attempt)
                    raise
                except Exception as err:
                    await self._report(step, "failed", verb, error=str(root_cause(err)))
                    raise
                await self._report(step, status, verb, result.attempt)
        return DeployResult(
            deploy_key=deploy.deploy_key,
            artifact=f"{deploy.container_id}-{deploy.version}",
            environments=deploy.environments,
        )

    def _start(self, verb: str, step: StepInput) -> workflow.ActivityHandle[StepResult]:
        return workflow.start_activity_method(
            getattr(ReleaseActivities, verb),
            step,
            # Steps heartbeat while they work, so a step whose worker died is
            # retried after heartbeat_timeout, not after the whole start-to-close.
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=5),
            # Simulated faults retry until they pass; bad input fails at once.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=5),
                non_retryable_error_types=NON_RETRYABLE_ERRORS,
            ),
            summary=step_summary(verb, step),
        )

    async def _report(
        self, step: StepInput, status: str, verb: str, attempts: int = 0, error: str | None = None
    ) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        progress = StepProgress(
            deploy_key=step.deploy.deploy_key, env=step.env, status=status, step=verb, attempts=attempts, error=error
        )
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(
            ReleaseWorkflow.deploy_progress, progress
        )
