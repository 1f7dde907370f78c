"""The release's deploys, run side by side: each promotes its container through its environments, one target
lock at a time, waiting out freezes, and tested under the failure policy.

Workflow code. Each deploy is a coroutine of the release workflow, not a child workflow: a child signalled the
release after every step (a round trip per step on the critical path, and a signal event per step in both
histories). Run here, the release keeps its own state as it goes, its Web UI page shows every step, and
`status` is one query.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities import ReleaseActivities
    from orchestrator.errors import root_cause
    from orchestrator.flow.entry_approvals import EntryApprovals
    from orchestrator.flow.failure_policy import FailurePolicy
    from orchestrator.flow.freeze_gate import FreezeGate
    from orchestrator.flow.lock_client import LockClient
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import bookkeeping, message_of, run_step
    from shared import ARTIFACTORY, ENVIRONMENTS, DeployInfo, DeployResult, StepInput


class Deploys:
    def __init__(
        self, run: ReleaseRun, locks: LockClient, freeze: FreezeGate, entry: EntryApprovals, policy: FailurePolicy
    ) -> None:
        self.run = run
        self.locks = locks
        self.freeze = freeze
        self.entry = entry
        self.policy = policy

    async def check_upstream(self, deploys: list[DeployInfo]) -> None:
        """Deploys that start after DEV promote what is there: all are checked before any starts, so a refused
        one does not leave the others half promoted."""
        release = self.run.info
        promoting = [d for d in deploys if d.environments[0] != ENVIRONMENTS[0] or release.redeploy]
        if not promoting:
            return
        try:
            summary = f"check what {release.release_key} promotes"
            await bookkeeping(
                ReleaseActivities.check_upstream, release.model_copy(update={"deploys": promoting}), summary
            )
        except ActivityError as err:
            if is_cancelled_exception(err):
                raise
            error = root_cause(err)
            for d in promoting:
                self.run.deploy(d.deploy_key).cells[d.environments[0]].status = "failed"
            self.run.event(f"refused before any deploy started: {message_of(error)}")
            raise ApplicationError(
                f"{message_of(error)}; deployed: nothing",
                type=getattr(error, "type", None) or "NotVerified",
                non_retryable=True,
            ) from None

    async def run_all(self, deploys: list[DeployInfo]) -> list[DeployResult]:
        """Every deploy to its end; raises the release's error when one failed (settled or not)."""
        tasks = [asyncio.ensure_future(self._deploy(d)) for d in deploys]
        try:
            await self._stop_others_on_failure(tasks)
        except ApplicationError:
            if self.policy.stop_all is None:
                raise
        if self.policy.stop_all is not None:
            # Outside the except: the release's error must not carry the stop's error as its cause.
            await self.policy.settle_all(deploys)
        results = [t.result() for t in tasks]
        if any(r.failed for r in results):
            raise ApplicationError(self.policy.outcome(results), type=self.policy.failure_type, non_retryable=True)
        return results

    async def _stop_others_on_failure(self, tasks: list[asyncio.Future[Any]]) -> None:
        """Once one deploy fails for good, the others finish the step in flight and go no further.

        Otherwise the release would ship the rest to PROD and leave there a set nobody released.
        """
        pending = list(tasks)
        while pending:
            try:
                done, pending = await workflow.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:
                # The release was cancelled: each deploy stops after its step in flight.
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
            failed = next((f for f in done if not f.cancelled() and f.exception() is not None), None)
            if failed is None:
                continue
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            error = root_cause(failed.exception())  # type: ignore[arg-type]
            stopped = "; the other deploys stopped after their step in flight" if pending else ""
            raise ApplicationError(
                f"{message_of(error)}{stopped}; deployed: {self.run.deployed()}",
                type=getattr(error, "type", None) or "DeployFailed",
                non_retryable=True,
            )

    async def _deploy(self, d: DeployInfo) -> DeployResult:
        """Promote one container through its environments, each under its target lock.

        The environment it copies from stays locked until the copy is made, so no other release
        replaces the version being promoted; the target stays locked through its test, so nobody
        replaces what is being tested. Locks are taken in promotion order (the artifactory, then
        the environments), so two releases never wait for each other in a circle.
        """
        redeploy = self.run.info.redeploy
        steps = self._steps(d)
        first = ENVIRONMENTS.index(d.environments[0])
        # A rollback-env takes the version from the artifactory, which keeps every build.
        source = ARTIFACTORY if first == 0 or redeploy else ENVIRONMENTS[first - 1]
        try:
            # A frozen environment is waited out before its lock is asked for, so that nobody
            # queues behind a release that waits for days.
            await self._may_enter(steps[0])
            await self.locks.wait(d, steps[0], await self.locks.move(d, take=[source, d.environments[0]]))
            if self.run.info.rollback is not None:
                d = await self._choose_rollback(d)
                steps = self._steps(d)
            if d.environments[0] == ENVIRONMENTS[0] and not redeploy:
                await run_step(self.run, "build", steps[0])
            for i, step in enumerate(steps):
                settled = await self._enter(d, step, source, steps[i + 1 : i + 2])
                if settled is not None:
                    return settled  # a gate or health failure, settled by the on_failure policy
                source = step.env
        finally:
            # Everything this deploy owns or waits for; a cancel while waiting leaves the queue. Not when the
            # worker evicts the run from its cache: then the coroutine is closed outside the workflow.
            if workflow.in_workflow() and (mine := self.locks.mine(d.container_id)):
                await self.locks.move(d, give_back=mine)
        return DeployResult(
            deploy_key=d.deploy_key, artifact=f"{d.container_id}-{d.version}", environments=d.environments
        )

    async def _may_enter(self, step: StepInput) -> None:
        """Wait until step's deploy may enter its environment: approved as the catalog requires, not frozen."""
        await self.entry.wait(step)
        await self.freeze.wait_out(step)

    def _open(self, step: StepInput) -> bool:
        """Whether step's deploy may enter its environment now, so that its lock is worth asking for."""
        return self.freeze.frozen(step.env) is None and not self.entry.missing(step.deploy.deploy_key, step.env)

    def _steps(self, d: DeployInfo) -> list[StepInput]:
        """The step inputs of d, one per environment."""
        run_id, key, redeploy = workflow.info().run_id, self.run.state.release_key, self.run.info.redeploy
        return [StepInput(release_key=key, run_id=run_id, deploy=d, env=e, redeploy=redeploy) for e in d.environments]

    async def _choose_rollback(self, d: DeployInfo) -> DeployInfo:
        """A rollback-env's version, chosen under its target's lock: no release promoted meanwhile, and none can
        until it is done. The release's first look (gather) may have seen another."""
        target = self.run.info.rollback
        assert target is not None
        summary = f"choose what {target.release_key()} puts back"
        version = await bookkeeping(ReleaseActivities.choose_rollback, target, summary)
        if version != d.version:
            self.run.event(
                f"{target.env} changed since the rollback was asked: it puts back {d.container_id}-{version}"
            )
            self.run.deploy(d.deploy_key).artifact = f"{d.container_id}-{version}"
            d = d.model_copy(update={"version": version})
        return d

    async def _enter(
        self, d: DeployInfo, step: StepInput, source: str, following: list[StepInput]
    ) -> DeployResult | None:
        """Deploy d into step.env (its lock and the source's owned) and test it there; then own the next
        environment's lock. None, or how the failure policy settled a failed test."""
        # Frozen while this deploy waited for its locks: it waits again, owning them.
        await self._may_enter(step)
        await run_step(self.run, "deploy", step)
        ahead = [s.env for s in following if self._open(s)]
        # The copy is made, so the source goes back; the next environment is asked for
        # now, beside this one's test, so a free lock costs the critical path nothing.
        moved = asyncio.ensure_future(self.locks.move(d, give_back=[source], take=ahead))
        try:
            settled = await self.policy.test(d, step)
        finally:
            answers = await moved  # what it asked for is known before anything is given back
        if settled is not None or not following:
            return settled
        if not ahead:
            # Still owning this environment, which the next one copies from.
            await self._may_enter(following[0])
            answers = await self.locks.move(d, take=[following[0].env])
        await self.locks.wait(d, following[0], answers)
        return None
