"""People's approvals of a release and its deploys, the approval policy, and the release date.

Workflow code. An approval arrives by Update (validated, answered) or by Signal of the same name (the Web UI's
way); both are checked by check() and applied by apply(). The approval system is asked by an activity, and may
add approvals; it never takes back one a person gave. Each approval is recorded in the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import ReleaseActivities
    from orchestrator.access import check_release_approver
    from orchestrator.flow.entry_approvals import EntryApprovals
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import bookkeeping, record
    from orchestrator.names import check_approver, clip
    from shared import (
        AWAITING_APPROVAL,
        CANCELLED,
        FAILED,
        SCHEDULED,
        SUCCESS,
        Approval,
        ApprovalReply,
        DeployState,
    )


class Approvals:
    def __init__(self, run: ReleaseRun, entry: EntryApprovals) -> None:
        self.run = run
        # Approvals of a deploy's entry into an environment (approve --env): the same Update and Signal.
        self.entry = entry

    # --- an approval, by Update or Signal ---

    def check(self, approval: Approval) -> object:
        """ValueError says why the approval is refused (by the entry approvals, for one environment's entry)."""
        return self.entry.check(approval) if approval.env is not None else self._targets(approval)

    def _targets(self, approval: Approval) -> tuple[bool, list[DeployState]]:
        """What an approval approves: (the release itself?, deploys). ValueError says why not."""
        state = self.run.state
        key = state.release_key
        check_release_approver(self.run.info, check_approver(approval.approver))
        if state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({state.status}): nothing to approve")
        if not state.deploys:
            raise ValueError(f"release {key} is still gathering its deploys: try again in a moment")
        waiting = self._waiting()
        if approval.deploy is None:
            if state.approved and not waiting:
                raise ValueError(f"release {key} is already approved: nothing waits for approval")
            return not state.approved, waiting
        deploy = next((d for d in state.deploys if approval.deploy in (d.container_id, d.deploy_key)), None)
        if deploy is None:
            names = ", ".join(d.container_id for d in state.deploys)
            raise ValueError(f"release {key} has no deploy {clip(approval.deploy)!r}; its deploys: {names}")
        if _skipped(deploy):
            raise ValueError(f"{deploy.artifact} was skipped: start the release again to ship it")
        if deploy.approved:
            by = f" by {deploy.approved_by}" if deploy.approved_by else ""
            raise ValueError(f"{deploy.artifact} in release {key} is already approved{by}")
        return False, [deploy]

    async def apply(self, approval: Approval) -> ApprovalReply:
        if approval.env is not None:
            return await self.entry.apply(approval)
        release_too, deploys = self._targets(approval)
        approver, now, state = check_approver(approval.approver), workflow.now(), self.run.state
        if release_too:
            state.approved, state.approved_by, state.approved_at = True, approver, now
        for d in deploys:
            d.approved, d.approved_by, d.approved_at = True, approver, now
        what = (["the release"] if release_too else []) + [d.artifact for d in deploys]
        self.run.event(f"approved by {approver}: {', '.join(what)}")
        keys = ([state.release_key] if release_too else []) + [d.deploy_key for d in deploys]
        await record(self.run, "approve", approver, keys, identity=approval.identity)
        return ApprovalReply(
            release_key=state.release_key,
            status=state.status,
            approved=what,
            still_waiting=[d.artifact for d in self._waiting()],
        )

    # --- before the deploys: who asked, the release date, the approval system, the policy ---

    async def record_people(self) -> None:
        """Who started the release, recorded; a rollback-env's asker is its approval, in the state and the ledger."""
        info = self.run.info
        if info.started_by is not None:
            starter = check_approver(info.started_by, "starts it")
            self.run.state.started_by = starter
            await record(self.run, "start", starter, [info.release_key], identity=info.identity)
        requested_by = info.requested_by
        if requested_by is None:
            return
        approver, state = check_approver(requested_by), self.run.state
        state.approved_by, state.approved_at = approver, workflow.now()
        self.run.event(f"rollback asked by {approver}")
        summary = f"record rollback asked by {approver}"
        await record(self.run, "approve", approver, [state.release_key], identity=info.identity, summary=summary)

    async def wait_for_release_date(self) -> None:
        release = self.run.info
        if release.release_date is None or release.now:
            return
        not_before = datetime.combine(release.release_date, time.min, tzinfo=UTC)
        if workflow.now() >= not_before:
            return
        self.run.set_status(SCHEDULED)
        self.run.event(f"waiting for the release date, {not_before:%Y-%m-%d %H:%M} UTC")
        # A durable timer: it survives worker and server restarts, and costs nothing while it waits.
        await workflow.sleep(not_before - workflow.now(), summary=f"release date {release.release_date}")

    async def ask_approval_system(self) -> None:
        release, state = self.run.info, self.run.state
        # A regular activity: it asks the approval system, which can be slow or away.
        report = await bookkeeping(
            ReleaseActivities.gather_release_approval, release, f"check approval of {release.release_key}"
        )
        # The approval system may add approvals; it never takes back one a person gave.
        state.approved = state.approved or report.release_approved
        for d in state.deploys:
            d.approved = d.approved or d.deploy_key not in report.unapproved_deploys

    async def settle(self) -> list[str]:
        """Apply the approval policy: wait, fail, or skip what nobody approved; returns the deploy keys to skip."""
        policy, state, key = self.run.info.approval_policy, self.run.state, self.run.state.release_key
        if self._awaiting() and policy.unapproved == "hold":
            self.run.set_status(AWAITING_APPROVAL)
            self.run.event(f"waiting up to {policy.hold_hours:g} h for approval of {self._awaited()}")
            try:
                await workflow.wait_condition(
                    lambda: not self._awaiting(),
                    timeout=timedelta(hours=policy.hold_hours),
                    timeout_summary="approval deadline",
                )
            except TimeoutError:
                if policy.after_hold == "stop" or not state.approved:
                    raise _not_approved(
                        f"release {key}: no approval of {self._awaited()} within {policy.hold_hours:g} h"
                    ) from None
        if not state.approved:
            raise _not_approved(f"release {key} is not approved")
        pending = [d for d in state.deploys if not d.approved]
        if pending and policy.unapproved == "stop":
            raise _not_approved(f"release {key} has unapproved deploys: {self._awaited()}")
        for d in pending:
            for cell in d.cells.values():
                cell.status = "skipped"
            self.run.event(f"skipped {d.artifact}: not approved")
        return [d.deploy_key for d in pending]

    def _waiting(self) -> list[DeployState]:
        return [d for d in self.run.state.deploys if not d.approved and not _skipped(d)]

    def _awaiting(self) -> bool:
        state = self.run.state
        return not state.approved or any(not d.approved for d in state.deploys)

    def _awaited(self) -> str:
        state = self.run.state
        names = [d.container_id for d in state.deploys if not d.approved]
        return ", ".join((["the release"] if not state.approved else []) + names)


def _skipped(deploy: DeployState) -> bool:
    return all(c.status == "skipped" for c in deploy.cells.values())


def _not_approved(message: str) -> ApplicationError:
    return ApplicationError(message, type="NotApproved", non_retryable=True)
