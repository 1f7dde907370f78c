"""What a release does when a deploy fails a quality gate or its health check: the catalog's on_failure.

Workflow code. rollback: the environment gets back what it held before the release; hold: the deploy waits
for a person's decision, retry or rollback (each an Update, or a Signal of the same name); stop: it stays as
it is. With all, the release goes no further: the other deploys stop first, then every deploy of the release
in that environment (and anything it left untested) is rolled back, or left, as the action says.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from orchestrator.access import check_actor
    from orchestrator.errors import SETTLED_BY_POLICY, root_cause
    from orchestrator.flow.lock_client import LockClient
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import message_of, record, run_step, start_rollback, whole
    from orchestrator.names import check_approver, clip
    from shared import (
        CANCELLED,
        FAILED,
        FROZEN,
        HELD,
        RUNNING,
        STOP_ALL,
        SUCCESS,
        Decision,
        DecisionReply,
        DeployInfo,
        DeployResult,
        DeployState,
        RollbackRequest,
        StepInput,
    )


class FailurePolicy:
    def __init__(self, run: ReleaseRun, locks: LockClient, frozen: dict[str, str]) -> None:
        self.run = run
        self.locks = locks
        # The freeze waits of the release's deploys (FreezeGate.waiting): a release no longer held may be FROZEN.
        self.frozen = frozen
        # Deploys held after a gate or health failure (on_failure hold): their environment, and the decisions
        # people sent for them ("retry" or "rollback", who), by deploy key.
        self.held: dict[str, str] = {}
        self.decisions: dict[str, tuple[str, Decision]] = {}
        # Set when a failure settled with on_failure all stops the release: (its result, environment, action).
        self.stop_all: tuple[DeployResult, str, str] | None = None
        self.failure_type: str | None = None
        # The two decisions on a held deploy, each checked and applied like an approval.
        self.retry = HeldDecision(self, "retry")
        self.rollback = HeldDecision(self, "rollback")

    async def test(self, d: DeployInfo, step: StepInput) -> DeployResult | None:
        """Test d in step.env: None if it passed; if it failed a gate or its health check, how the policy settled it
        (the deploy goes no further). Any other failure raises, as does a failure under on_failure stop with all
        (the default of a catalog that names no policy)."""
        while True:
            try:
                await run_step(self.run, "test", step, done=True)
                return None
            except ActivityError as err:
                cause = root_cause(err)
                if is_cancelled_exception(err) or getattr(cause, "type", None) not in SETTLED_BY_POLICY:
                    raise
                failure, error = message_of(cause), err
            policy, by, identity = self.run.info.on_failure, None, ""
            if policy == STOP_ALL:
                raise error  # the release stops at this failure
            self.failure_type = self.failure_type or getattr(cause, "type", None) or "DeployFailed"
            action: str = policy.action
            if action == "hold":
                decision, person = await self._hold(d, step, failure)
                by, identity = check_approver(person.approver), person.identity
                if decision == "retry":
                    # A new try of the checks, for a fix made outside; Temporal's retries keep their verdicts.
                    # Recorded in the ledger (since 1.1: docs/design.md, Patches).
                    workflow.deprecate_patch("record-retry")
                    await record(self.run, "retry", by, [d.deploy_key], [step.env], person.identity)
                    step = step.model_copy(update={"retry": step.retry + 1})
                    continue
                action = "rollback"
            result = DeployResult(deploy_key=d.deploy_key, artifact=_artifact(d), environments=d.environments)
            result.failed = failure
            if policy.all:
                # The release goes no further: the others stop first, then settle_all rolls back (for rollback)
                # this deploy and what the others put in step.env or left untested, held rollback included.
                if action == "rollback" and by is not None:
                    result.settled = await self.roll_back(d, step, by, identity)
                self.stop_all = (result, step.env, action)
                raise ApplicationError(failure, type=getattr(cause, "type", None), non_retryable=True)
            result.settled = (
                await self.roll_back(d, step, by, identity) if action == "rollback" else f"left {step.env} as it is"
            )
            return result

    async def roll_back(self, d: DeployInfo, step: StepInput, by: str | None, identity: str = "") -> str:
        """Roll back d in step.env (under the lock the caller owns); what the environment holds now."""
        self.run.note(step, "running", "rollback")
        request = RollbackRequest(step=step.model_copy(update={"retry": 0}), by=by, identity=identity)
        result, _ = await whole(start_rollback(request))
        restored = result.artifact or "nothing"
        cell = self.run.deploy(d.deploy_key).cells[step.env]
        cell.status, cell.step, cell.deployed = "rolled back", "rollback", False
        self.run.event(f"rolled back {step.env} to {restored}" + (f" (asked by {by})" if by else ""))
        return f"rolled back {step.env} to {restored}"

    async def settle_all(self, deploys: list[DeployInfo]) -> None:
        """on_failure with all: the other deploys stopped; those this run deployed into the environment are rolled
        back too when the failed one was. Raises the release's error."""
        assert self.stop_all is not None
        result, env, action = self.stop_all
        settled = [result.settled] if result.settled else [] if action == "rollback" else [f"left {env} as it is"]
        if action == "rollback":
            for d in deploys:
                if d.deploy_key == result.deploy_key and result.settled:
                    continue  # rolled back already, by the person's decision
                settled += await self._roll_back_untested(d, env)
        raise ApplicationError(
            f"{result.failed}; {'; '.join(settled)}; the other deploys stopped; deployed: {self.run.deployed()}",
            type=self.failure_type,
            non_retryable=True,
        )

    def outcome(self, results: list[DeployResult]) -> str:
        """The release's result when deploys failed and were settled: what failed, and what is where."""
        parts = [f"{r.failed}; {r.settled}" for r in results if r.failed]
        reached: dict[str, list[str]] = {}
        for r in results:
            if not r.failed:
                reached.setdefault(r.environments[-1], []).append(r.artifact)
        for env, artifacts in reached.items():
            names = ", ".join(artifacts[:-1]) + " and " + artifacts[-1] if len(artifacts) > 1 else artifacts[0]
            parts.append(f"{names} reached {env}")
        return "; ".join(parts)

    async def _roll_back_untested(self, d: DeployInfo, env: str) -> list[str]:
        """Roll back d in env, and wherever it reached but did not finish testing (its step in flight): nothing of
        this release stays where it was not verified. Latest first, one lock at a time."""
        cells = self.run.deploy(d.deploy_key).cells
        back = [e for e, c in cells.items() if c.deployed and (e == env or c.status != "done")]
        settled = []
        for place in reversed(back):
            step = StepInput(release_key=self.run.state.release_key, run_id=workflow.info().run_id, deploy=d, env=place)
            try:
                await self.locks.wait(d, step, await self.locks.move(d, take=[place]))
                settled.append(await self.roll_back(d, step, None))
            finally:
                if workflow.in_workflow():  # not when the worker evicts the run: the coroutine is being closed
                    await self.locks.move(d, give_back=[place])
        return settled

    async def _hold(self, d: DeployInfo, step: StepInput, failure: str) -> tuple[str, Decision]:
        """Wait for a person's decision on d: ("retry" or "rollback", the decision as they sent it)."""
        deploy = self.run.deploy(d.deploy_key)
        self.held[d.deploy_key] = step.env
        deploy.cells[step.env].status = "held"
        deploy.waiting_for = f"a person: retry or rollback ({failure})"
        self.run.event(f"{deploy.artifact} is held in {step.env}: retry or rollback")
        self.run.set_status(HELD)
        # Recorded, for inventory to say "held" (since 1.1: docs/design.md, Patches).
        workflow.deprecate_patch("record-hold")
        summary = f"record {deploy.artifact} held in {step.env}"
        await record(self.run, "hold", "on_failure: hold", [d.deploy_key], [step.env], summary=summary)
        try:
            await workflow.wait_condition(lambda: d.deploy_key in self.decisions)
        finally:
            del self.held[d.deploy_key]
            deploy.waiting_for = None
            if not self.held:
                self.run.resume(HELD, FROZEN if self.frozen else RUNNING)
        return self.decisions.pop(d.deploy_key)

    def held_deploy(self, decision: Decision, what: str) -> DeployState:
        """The held deploy a decision is about; ValueError says why there is none."""
        state = self.run.state
        key = state.release_key
        check_approver(decision.approver, f"asks to {what}")
        if state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({state.status}): nothing is held")
        held = [d for d in state.deploys if d.deploy_key in self.held and d.deploy_key not in self.decisions]
        if not held:
            raise ValueError(f"release {key} holds no deploy ({state.status}): nothing to {what}")
        if decision.deploy is None:
            if len(held) > 1:
                names = ", ".join(d.container_id for d in held)
                raise ValueError(f"release {key} holds several deploys ({names}): say which with --deploy")
            found = held[0]
        else:
            found = next((d for d in held if decision.deploy in (d.container_id, d.deploy_key)), None)  # type: ignore[assignment]
            if found is None:
                names = ", ".join(d.container_id for d in held)
                raise ValueError(f"release {key} does not hold {clip(decision.deploy)!r}; held: {names}")
        check_actor(self.run.info, check_approver(decision.approver), self.held[found.deploy_key])
        return found

    def decide(self, decision: Decision, action: str) -> DecisionReply:
        deploy = self.held_deploy(decision, action)
        approver = check_approver(decision.approver)
        self.decisions[deploy.deploy_key] = (action, decision)
        self.run.event(f"{action} of {deploy.artifact} asked by {approver}")
        state = self.run.state
        return DecisionReply(
            release_key=state.release_key, status=state.status, deploy=deploy.artifact, decision=action
        )


class HeldDecision:
    """One decision on a held deploy (retry or rollback), as an Update and a Signal take it (flow/messages.py)."""

    def __init__(self, policy: FailurePolicy, action: str) -> None:
        self.policy, self.action, self.run = policy, action, policy.run

    def check(self, decision: Decision) -> None:
        self.policy.held_deploy(decision, self.action)

    async def apply(self, decision: Decision) -> DecisionReply:
        return self.policy.decide(decision, self.action)


def _artifact(d: DeployInfo) -> str:
    return f"{d.container_id}-{d.version}"
