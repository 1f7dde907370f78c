"""Approvals to enter an environment: where the catalog requires them (required_approvals), a deploy waits before
it enters, with status AWAITING_APPROVAL, until that many different approvers of the environment approved it.

Workflow code. An approval arrives as the approve Update or Signal with an environment (run_workflow.py approve
KEY --by NAME --env ENV); the rules are orchestrator/access.py's.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.access import access_to, check_entry_approver
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import record
    from orchestrator.names import check_approver, clip
    from shared import (
        AWAITING_APPROVAL,
        CANCELLED,
        FAILED,
        FROZEN,
        RUNNING,
        SUCCESS,
        Approval,
        ApprovalReply,
        DeployState,
        StepInput,
    )


class EntryApprovals:
    def __init__(self, run: ReleaseRun, frozen: dict[str, str]) -> None:
        self.run = run
        # The freeze waits of the release's deploys (FreezeGate.waiting): a release no longer waiting may be FROZEN.
        self.frozen = frozen
        # Who approved each deploy's entry into each environment, in order: (deploy key, environment) -> names.
        self.given: dict[tuple[str, str], list[str]] = {}
        # The environment each deploy waits to enter until enough approved it, by deploy key.
        self.waiting: dict[str, str] = {}

    def missing(self, deploy_key: str, env: str) -> int:
        """How many more approvals the deploy needs to enter env."""
        required = access_to(self.run.info, env).required_approvals
        return max(required - len(self.given.get((deploy_key, env), [])), 0)

    async def wait(self, step: StepInput) -> None:
        """Wait until the deploy of step may enter step.env: as many approvers as it requires approved it."""
        key, env = step.deploy.deploy_key, step.env
        if not self.missing(key, env):
            return
        self.waiting[key] = env
        self.run.set_status(AWAITING_APPROVAL)
        try:
            while missing := self.missing(key, env):
                given = self.given.get((key, env), [])
                self.run.note(step, "waiting", "approval", note=self._note(env, missing, given))
                count = len(given)
                await workflow.wait_condition(lambda count=count: len(self.given.get((key, env), [])) > count)
        finally:
            del self.waiting[key]
            if not self.waiting:
                self.run.resume(AWAITING_APPROVAL, FROZEN if self.frozen else RUNNING)
        self.run.note(step, "running", "approval")

    def check(self, approval: Approval) -> list[DeployState]:
        """The deploys whose entry into approval.env this approval counts for; ValueError says why none."""
        state, env = self.run.state, approval.env or ""
        name = check_approver(approval.approver)
        if state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {state.release_key} has finished ({state.status}): nothing to approve")
        if env not in {e for d in state.deploys for e in d.cells}:
            raise ValueError(f"release {state.release_key} does not enter {clip(env)}: nothing to approve there")
        check_entry_approver(self.run.info, name, env)
        ahead = [d for d in state.deploys if self._ahead(d, env)]
        if approval.deploy is not None:
            ahead = [d for d in ahead if approval.deploy in (d.container_id, d.deploy_key)]
            if not ahead:
                raise ValueError(f"release {state.release_key} has no deploy {clip(approval.deploy)!r} to enter {env}")
        mine = [d for d in ahead if name not in self.given.get((d.deploy_key, env), [])]
        if not mine:
            raise ValueError(f"{name} already approved the entry into {env} of {', '.join(d.artifact for d in ahead)}")
        return mine

    async def apply(self, approval: Approval) -> ApprovalReply:
        deploys, env = self.check(approval), approval.env or ""
        name, state = check_approver(approval.approver), self.run.state
        for d in deploys:
            self.given.setdefault((d.deploy_key, env), []).append(name)
        what = [f"{d.artifact} into {env}" for d in deploys]
        self.run.event(f"approved by {name}: {', '.join(what)}")
        await record(self.run, "approve", name, [d.deploy_key for d in deploys], [env], approval.identity)
        still = [f"{d.artifact} into {env}" for d in state.deploys if self._ahead(d, env)]
        return ApprovalReply(release_key=state.release_key, status=state.status, approved=what, still_waiting=still)

    def _ahead(self, d: DeployState, env: str) -> bool:
        """Whether d has yet to enter env, and needs approvals to."""
        cell = d.cells.get(env)
        return cell is not None and cell.status in ("pending", "waiting") and bool(self.missing(d.deploy_key, env))

    def _note(self, env: str, missing: int, given: list[str]) -> str:
        required = missing + len(given)
        by = f" (by {', '.join(given)})" if given else ""
        return f"approval to enter {env}: {len(given)} of {required}{by}"
