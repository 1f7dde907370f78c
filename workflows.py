"""ReleaseWorkflow runs one DeployWorkflow per deploy; each promotes its container DEV → PROD.

Deterministic code only: every side effect happens in an activity.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities import ReleaseActivities, step_summary
    from locks import LockActivities, LockAnswer, LockMove, LockRequest, TargetLockWorkflow, lock_id
    from release_management import NON_RETRYABLE_ERRORS
    from shared import (
        ARTIFACTORY,
        AWAITING_APPROVAL,
        CANCELLED,
        ENVIRONMENTS,
        EVENT_CHARS,
        EVENTS_KEPT,
        FAILED,
        FROZEN,
        HELD,
        RUNNING,
        SCHEDULED,
        STOP_ALL,
        SUCCESS,
        Approval,
        ApprovalRecord,
        ApprovalReply,
        Cell,
        Decision,
        DecisionReply,
        DeployInfo,
        DeployRequest,
        DeployResult,
        DeployState,
        ReleaseInfo,
        ReleaseResult,
        ReleaseState,
        RollbackRequest,
        StepInput,
        StepProgress,
        StepResult,
        Unfreeze,
        UnfreezeReply,
        check_approver,
        clip,
        frozen_until,
        render_details,
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
        # Target locks granted to this release's deploys (by lock id), for releases that run their own deploys.
        self.granted: set[str] = set()
        # The locks this release's deploys hold or wait for, by target ("DEV/frontend").
        self.locks: dict[str, LockRequest] = {}
        # Lock moves waiting for the activity that sends them (see _move_locks).
        self.lock_moves: list[tuple[LockMove, asyncio.Future[list[LockAnswer]]]] = []
        self.moving = False
        # Targets asked for by a move whose answer has not come yet, with how many moves ask: a grant for one
        # may come before the answer (the lock grants it between the activity's look and its completion).
        self.asking: dict[str, int] = {}
        # The environment each deploy waits to enter while it is frozen, by deploy key.
        self.frozen: dict[str, str] = {}
        # Deploys held after a gate or health failure (on_failure hold): their environment, and the
        # decisions people sent for them ("retry" or "rollback", who), by deploy key.
        self.held: dict[str, str] = {}
        self.decisions: dict[str, tuple[str, str]] = {}
        # Set when a failure settled with on_failure all stops the release: (its result, environment, action).
        self.stop_all: tuple[DeployResult, str, str] | None = None
        self.failure_type: str | None = None

    @workflow.run
    async def run(self, release: ReleaseInfo) -> ReleaseResult:
        try:
            result = await self._release()
        except (asyncio.CancelledError, Exception) as err:
            # A cancel that lands while an activity runs arrives as that activity's error.
            if isinstance(err, asyncio.CancelledError) or is_cancelled_exception(err):
                self._close_cells("cancelled")
                self._finish(CANCELLED, f"deployed before the cancel: {self._deployed()}")
            else:
                self._close_cells("cancelled")
                self._finish(FAILED, _message(root_cause(err)))
            raise
        self._finish(SUCCESS)
        return result

    def _close_cells(self, status: str) -> None:
        for d in self.state.deploys:
            d.waiting_for = None
            for cell in d.cells.values():
                if cell.status in ("pending", "waiting", "running", "held"):
                    cell.status = status  # type: ignore[assignment]

    def _deployed(self) -> str:
        """What reached where: "frontend-1.1 → DEV, TEST; sbstore-1.7 → DEV", or "nothing"."""
        deployed = "; ".join(
            f"{d.artifact} → {', '.join(e for e, c in d.cells.items() if c.deployed)}"
            for d in self.state.deploys
            if any(c.deployed for c in d.cells.values())
        )
        return deployed or "nothing"

    async def _release(self) -> ReleaseResult:
        release = self.release
        if not release.deploys:
            # A regular activity, not a local one: a catalog that cannot be read is fixed by a
            # person while this retries, and the Web UI and the starter show a pending activity
            # with its attempt and last error; a local activity would not show.
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
        if release.requested_by and workflow.patched("rollback-env"):
            # A rollback-env: who asked for it is its approval, in the state and the ledger.
            approver, now = check_approver(release.requested_by), workflow.now()
            self.state.approved_by, self.state.approved_at = approver, now
            self._event(f"rollback asked by {approver}")
            await self._record_approval(
                ApprovalRecord(
                    release_key=release.release_key,
                    run_id=workflow.info().run_id,
                    approver=approver,
                    approved_at=now,
                    deploy_keys=[release.release_key],
                ),
                summary=f"record rollback asked by {approver}",
            )

        await self._wait_for_release_date()
        # A regular activity too: it asks the approval system, which can be slow or away.
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
        to_run = [d for d in release.deploys if d.deploy_key not in skipped]
        # Deploys that start after DEV promote what is there: all are checked before any starts, so a
        # refused one does not leave the others half promoted. Releases recorded before did not check.
        promoting = [d for d in to_run if d.environments[0] != ENVIRONMENTS[0] or release.redeploy]
        if promoting and workflow.patched("check-upstream-first"):
            try:
                await workflow.execute_activity_method(
                    ReleaseActivities.check_upstream,
                    release.model_copy(update={"deploys": promoting}),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(
                        maximum_interval=timedelta(seconds=10), non_retryable_error_types=NON_RETRYABLE_ERRORS
                    ),
                    summary=f"check what {release.release_key} promotes",
                )
            except ActivityError as err:
                if is_cancelled_exception(err):
                    raise
                error = root_cause(err)
                refused = {d.deploy_key: d.environments[0] for d in promoting}
                for deploy in self.state.deploys:
                    if deploy.deploy_key in refused:
                        deploy.cells[refused[deploy.deploy_key]].status = "failed"
                self._event(f"refused before any deploy started: {_message(error)}")
                raise ApplicationError(
                    f"{_message(error)}; deployed: nothing",
                    type=getattr(error, "type", None) or "NotVerified",
                    non_retryable=True,
                ) from None
        # Releases recorded before this change ran each deploy as a child workflow that signalled
        # its progress after every step; see _run_deploys for why the release runs them itself.
        if workflow.patched("release-runs-its-deploys"):
            outcomes = await self._run_deploys(to_run)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return ReleaseResult(release_key=release.release_key, status="SUCCESS", deploys=outcomes, skipped=skipped)
        info = workflow.info()
        # Deploys of different containers are independent, so they run side by side;
        # all of them finish (or fail) before the release reports, so none is cut off midway.
        children = [
            asyncio.ensure_future(
                workflow.execute_child_workflow(
                    DeployWorkflow.run,
                    DeployRequest(
                        release_key=release.release_key, run_id=info.run_id, deploy=d, lock_scope=info.task_queue
                    ),
                    id=f"{info.workflow_id}/{d.container_id}",
                    static_summary=f"{d.container_id}-{d.version} → {', '.join(d.environments)}",
                    # A cancel waits until each deploy has stopped between two steps.
                    cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            )
            for d in to_run
        ]
        # Releases recorded before this change let every deploy run to its end.
        if workflow.patched("stop-promoting-on-failure"):
            await self._stop_others_on_failure(children)
        outcomes: list[Any] = await asyncio.gather(*children, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ReleaseResult(release_key=release.release_key, status="SUCCESS", deploys=outcomes, skipped=skipped)

    async def _stop_others_on_failure(self, children: list[asyncio.Future[Any]]) -> None:
        """Once one deploy fails for good, the others finish the step in flight and go no further.

        Otherwise the release would ship the rest to PROD and leave there a set nobody released.
        """
        pending = list(children)
        while pending:
            try:
                done, pending = await workflow.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:
                # The release was cancelled: each deploy stops after its step in flight.
                for child in pending:
                    child.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
            failed = next((f for f in done if not f.cancelled() and f.exception() is not None), None)
            if failed is None:
                continue
            for child in pending:
                child.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            error = root_cause(failed.exception())  # type: ignore[arg-type]
            stopped = "; the other deploys stopped after their step in flight" if pending else ""
            raise ApplicationError(
                f"{_message(error)}{stopped}; deployed: {self._deployed()}",
                type=getattr(error, "type", None) or "DeployFailed",
                non_retryable=True,
            )

    # --- deploys, run by the release itself ---

    async def _run_deploys(self, deploys: list[DeployInfo]) -> list[DeployResult]:
        """Each deploy is a coroutine of this workflow; they run side by side.

        Releases recorded before ran each deploy as a child workflow that signalled the release
        after every step and waited for the signal to be acknowledged: a round trip per step on
        the critical path, and a signal event per step in both histories. Run here, the release
        keeps its own state as it goes, its Web UI page shows every step, and `status` is one query.
        """
        tasks = [asyncio.ensure_future(self._deploy(d)) for d in deploys]
        try:
            await self._stop_others_on_failure(tasks)  # type: ignore[arg-type]
        except ApplicationError:
            if self.stop_all is None:
                raise
        if self.stop_all is not None:
            # Outside the except: the release's error must not carry the stop's error as its cause.
            await self._settle_all(deploys)
        results = [t.result() for t in tasks]
        failed = [r for r in results if r.failed]
        if failed:
            raise ApplicationError(self._outcome(results), type=self.failure_type, non_retryable=True)
        return results

    async def _settle_all(self, deploys: list[DeployInfo]) -> None:
        """on_failure with all: the other deploys stopped; those this run deployed into the environment are
        rolled back too when the failed one was. Raises the release's error."""
        assert self.stop_all is not None
        result, env, action = self.stop_all
        settled = [result.settled] if result.settled else [] if action == "rollback" else [f"left {env} as it is"]
        if action == "rollback":
            run_id = workflow.info().run_id
            for d in deploys:
                if d.deploy_key == result.deploy_key and result.settled:
                    continue  # rolled back already, by the person's decision
                cells = next(x for x in self.state.deploys if x.deploy_key == d.deploy_key).cells
                # That environment, and any the deploy reached but did not finish testing (its step in flight):
                # nothing of this release stays where it was not verified. Latest first, one lock at a time.
                back = [e for e, c in cells.items() if c.deployed and (e == env or c.status != "done")]
                for place in reversed(back):
                    step = StepInput(release_key=self.state.release_key, run_id=run_id, deploy=d, env=place)
                    try:
                        await self._wait_for_locks(d, step, await self._move_locks(d, acquire=[place]))
                        settled.append(await self._rollback(d, step, None))
                    finally:
                        await self._move_locks(d, release=[place])
        raise ApplicationError(
            f"{result.failed}; {'; '.join(settled)}; the other deploys stopped; deployed: {self._deployed()}",
            type=self.failure_type,
            non_retryable=True,
        )

    def _outcome(self, results: list[DeployResult]) -> str:
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

    async def _deploy(self, d: DeployInfo) -> DeployResult:
        """Promote one container through its environments, each under its target lock.

        The environment it copies from stays locked until the copy is made, so no other release
        replaces the version being promoted; the target stays locked through its test, so nobody
        replaces what is being tested. Locks are taken in promotion order (the artifactory, then
        the environments), so two releases never wait for each other in a circle.
        """
        run_id, redeploy = workflow.info().run_id, self.release.redeploy
        steps = [
            StepInput(release_key=self.state.release_key, run_id=run_id, deploy=d, env=e, redeploy=redeploy)
            for e in d.environments
        ]
        first = ENVIRONMENTS.index(d.environments[0])
        # A rollback-env takes the version from the artifactory, which keeps every build.
        source = ARTIFACTORY if first == 0 or redeploy else ENVIRONMENTS[first - 1]
        try:
            # A frozen environment is waited out before its lock is asked for, so that nobody
            # queues behind a release that waits for days.
            await self._wait_out_freeze(steps[0])
            await self._wait_for_locks(d, steps[0], await self._move_locks(d, acquire=[source, d.environments[0]]))
            if d.environments[0] == ENVIRONMENTS[0] and not redeploy:
                await self._step("build", steps[0])
            for i, step in enumerate(steps):
                # Frozen while this deploy waited for its locks: it waits again, holding them.
                await self._wait_out_freeze(step)
                await self._step("deploy", step)
                following = d.environments[i + 1 : i + 2]
                ahead = [e for e in following if self._freeze(e) is None]
                # The copy is made, so the source goes back; the next environment is asked for
                # now, beside this one's test, so a free lock costs the critical path nothing.
                moved = asyncio.ensure_future(self._move_locks(d, release=[source], acquire=ahead))
                try:
                    settled = await self._test(d, step)
                finally:
                    answers = await moved  # what it asked for is known before anything is given back
                if settled is not None:
                    return settled  # a gate or health failure, settled by the on_failure policy
                if following:
                    if not ahead:
                        # Still holding this environment, which the next one copies from.
                        await self._wait_out_freeze(steps[i + 1])
                        answers = await self._move_locks(d, acquire=following)
                    await self._wait_for_locks(d, steps[i + 1], answers)
                    source = step.env
        finally:
            # Everything this deploy holds or waits for; a cancel while waiting leaves the queue.
            mine = [t.partition("/")[0] for t in self.locks if t.partition("/")[2] == d.container_id]
            if mine:
                await self._move_locks(d, release=mine)
        return DeployResult(
            deploy_key=d.deploy_key, artifact=f"{d.container_id}-{d.version}", environments=d.environments
        )

    async def _move_locks(self, d: DeployInfo, release: list[str] = (), acquire: list[str] = ()) -> list[LockAnswer]:  # type: ignore[assignment]
        """Give back and ask for the locks of d's container in these places; the answers to `acquire`, in order.

        The deploys' moves go out in batches, one activity at a time, so that a release of
        many deploys does not start an activity per deploy at each step.
        """
        info = workflow.info()
        gone = [self.locks.pop(f"{place}/{d.container_id}") for place in release]
        for req in gone:
            self.granted.discard(req.lock_id)
        wanted = [
            LockRequest(
                lock_id="",  # named by the worker that asks (see LockActivities.move_locks)
                target=f"{place}/{d.container_id}",
                holder_id=info.workflow_id,
                holder_run_id=info.run_id,
                release_key=self.state.release_key,
            )
            for place in acquire
        ]
        answer: asyncio.Future[list[LockAnswer]] = asyncio.get_running_loop().create_future()
        self.lock_moves.append((LockMove(release=gone, acquire=wanted), answer))
        for req in wanted:
            self.asking[req.target] = self.asking.get(req.target, 0) + 1
        if not self.moving:
            self.moving = True
            asyncio.ensure_future(self._send_lock_moves())
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            # A move under way completes, so that what it asked for is known and given back.
            await answer
            raise
        finally:
            for req in wanted:
                self.asking[req.target] -= 1
                if not self.asking[req.target]:
                    del self.asking[req.target]

    async def _send_lock_moves(self) -> None:
        try:
            while self.lock_moves:
                batch, self.lock_moves = self.lock_moves, []
                move = LockMove(
                    release=[r for m, _ in batch for r in m.release], acquire=[r for m, _ in batch for r in m.acquire]
                )
                try:
                    answers = await workflow.execute_activity_method(
                        LockActivities.move_locks,
                        move,
                        # A regular activity, though a local one would be cheaper (no task round
                        # trip, no history events): with local activities, a status query that
                        # arrived while one ran failed with a nondeterminism error in the SDK's
                        # core ("Missing associated machine for LocalActivity"). It does not hold
                        # up the workflow task either, so the step scheduled beside it starts at once.
                        start_to_close_timeout=timedelta(seconds=10),
                        retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
                        summary=clip(
                            ", ".join(
                                [f"lock {r.target}" for r in move.acquire]
                                + [f"unlock {r.target}" for r in move.release]
                            ),
                            200,
                        ),
                    )
                except BaseException as err:
                    for _, waiter in batch:
                        waiter.set_exception(err)
                    continue
                for a in (a for a in answers if a.asked):
                    self.locks[a.target] = next(r for r in move.acquire if r.target == a.target).model_copy(
                        update={"lock_id": a.lock_id}
                    )
                self.granted.update(a.lock_id for a in answers if a.granted)
                for m, waiter in batch:
                    waiter.set_result(answers[: len(m.acquire)])
                    answers = answers[len(m.acquire) :]
        finally:
            self.moving = False

    async def _wait_for_locks(self, d: DeployInfo, step: StepInput, answers: list[LockAnswer]) -> None:
        for answer in answers:
            if not answer.asked:  # the one before it is granted now
                [answer] = await self._move_locks(d, acquire=[answer.target.partition("/")[0]])
            holder, told = answer.holder, False
            while answer.lock_id not in self.granted:
                if holder not in (None, step.release_key) and not told:
                    told = True
                    self._note(step, "waiting", "lock", note=f"{answer.target}: held by {holder}")
                try:
                    await workflow.wait_condition(
                        lambda answer=answer: answer.lock_id in self.granted, timeout=LOCK_REQUEST_AGAIN
                    )
                except TimeoutError:
                    # Asked again now and then: a lock workflow an operator terminated starts anew.
                    place = answer.target.partition("/")[0]
                    [again] = await self._move_locks(d, acquire=[place])
                    holder = again.holder
            if told:
                self._note(step, "running", "lock")

    # --- gate and health failures: the release's on_failure policy ---

    async def _test(self, d: DeployInfo, step: StepInput) -> DeployResult | None:
        """Test d in step.env: None if it passed; if it failed a gate or its health check, how the release's
        on_failure policy settled it (the deploy goes no further). Any other failure raises.

        Releases recorded before policies let such a failure stop the release, as it still does with
        on_failure stop and all (the default of a catalog that names no policy).
        """
        while True:
            try:
                await self._step("test", step, done=True)
                return None
            except ActivityError as err:
                cause = root_cause(err)
                if (
                    is_cancelled_exception(err)
                    or getattr(cause, "type", None) not in SETTLED_BY_POLICY
                    or not workflow.patched("on-failure-policies")
                ):
                    raise
                failure, error = _message(cause), err
            policy, by = self.release.on_failure, None
            if policy == STOP_ALL:
                raise error  # the release stops at this failure, as it did before policies
            self.failure_type = self.failure_type or getattr(cause, "type", None) or "DeployFailed"
            action: str = policy.action
            if action == "hold":
                decision, by = await self._hold(d, step, failure)
                if decision == "retry":
                    # A new try of the checks, for a fix made outside; Temporal's retries keep their verdicts.
                    step = step.model_copy(update={"retry": step.retry + 1})
                    continue
                action = "rollback"
            result = DeployResult(
                deploy_key=d.deploy_key, artifact=f"{d.container_id}-{d.version}", environments=d.environments
            )
            result.failed = failure
            if policy.all:
                # The release goes no further: the others stop first, then _run_deploys rolls back (for rollback)
                # this deploy and what the others put in step.env or left untested, held rollback included.
                if action == "rollback" and by is not None:
                    result.settled = await self._rollback(d, step, by)
                self.stop_all = (result, step.env, action)
                raise ApplicationError(failure, type=getattr(cause, "type", None), non_retryable=True)
            result.settled = await self._rollback(d, step, by) if action == "rollback" else f"left {step.env} as it is"
            return result

    async def _rollback(self, d: DeployInfo, step: StepInput, by: str | None) -> str:
        """Roll back d in step.env (under the lock the caller holds); what the environment holds now."""
        request = RollbackRequest(step=step.model_copy(update={"retry": 0}), by=by)
        self._note(step, "running", "rollback")
        handle = workflow.start_activity_method(
            ReleaseActivities.rollback,
            request,
            activity_id=step_summary("rollback", step),
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=5),
            # Like a step: faults a person can fix are retried; the rollback must happen.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=5),
                non_retryable_error_types=NON_RETRYABLE_ERRORS,
            ),
            summary=step_summary("rollback", step),
        )
        result, _ = await _whole(handle)
        restored = result.artifact or "nothing"
        cell = next(x for x in self.state.deploys if x.deploy_key == d.deploy_key).cells[step.env]
        cell.status, cell.step, cell.deployed = "rolled back", "rollback", False
        self._event(f"rolled back {step.env} to {restored}" + (f" (asked by {by})" if by else ""))
        return f"rolled back {step.env} to {restored}"

    async def _hold(self, d: DeployInfo, step: StepInput, failure: str) -> tuple[str, str]:
        """Wait for a person's decision on d: ("retry" or "rollback", who)."""
        deploy = next(x for x in self.state.deploys if x.deploy_key == d.deploy_key)
        self.held[d.deploy_key] = step.env
        deploy.cells[step.env].status = "held"
        deploy.waiting_for = f"a person: retry or rollback ({failure})"
        self._event(f"{deploy.artifact} is held in {step.env}: retry or rollback")
        self._set_status(HELD)
        try:
            await workflow.wait_condition(lambda: d.deploy_key in self.decisions)
        finally:
            del self.held[d.deploy_key]
            deploy.waiting_for = None
            if not self.held and self.state.status == HELD:
                self._set_status(FROZEN if self.frozen else RUNNING)
        return self.decisions.pop(d.deploy_key)

    def _held_deploy(self, decision: Decision, what: str) -> DeployState:
        """The held deploy a decision is about; ValueError says why there is none."""
        key = self.state.release_key
        check_approver(decision.approver, f"asks to {what}")
        if self.state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({self.state.status}): nothing is held")
        held = [d for d in self.state.deploys if d.deploy_key in self.held and d.deploy_key not in self.decisions]
        if not held:
            raise ValueError(f"release {key} holds no deploy ({self.state.status}): nothing to {what}")
        if decision.deploy is None:
            if len(held) > 1:
                names = ", ".join(d.container_id for d in held)
                raise ValueError(f"release {key} holds several deploys ({names}): say which with --deploy")
            return held[0]
        found = next((d for d in held if decision.deploy in (d.container_id, d.deploy_key)), None)
        if found is None:
            names = ", ".join(d.container_id for d in held)
            raise ValueError(f"release {key} does not hold {clip(decision.deploy)!r}; held: {names}")
        return found

    def _decide(self, decision: Decision, action: str) -> DecisionReply:
        deploy = self._held_deploy(decision, action)
        approver = check_approver(decision.approver)
        self.decisions[deploy.deploy_key] = (action, approver)
        self._event(f"{action} of {deploy.artifact} asked by {approver}")
        return DecisionReply(
            release_key=self.state.release_key, status=self.state.status, deploy=deploy.artifact, decision=action
        )

    @workflow.update
    def retry(self, decision: Decision) -> DecisionReply:
        return self._decide(decision, "retry")

    @retry.validator
    def validate_retry(self, decision: Decision) -> None:
        self._held_deploy(decision, "retry")

    @workflow.signal(name="retry")
    def retry_signal(self, decision: Decision) -> None:
        try:
            self._decide(decision, "retry")
        except ValueError as err:
            self._event(f"ignored a retry signal: {err}")

    @workflow.update
    def rollback(self, decision: Decision) -> DecisionReply:
        return self._decide(decision, "rollback")

    @rollback.validator
    def validate_rollback(self, decision: Decision) -> None:
        self._held_deploy(decision, "rollback")

    @workflow.signal(name="rollback")
    def rollback_signal(self, decision: Decision) -> None:
        try:
            self._decide(decision, "rollback")
        except ValueError as err:
            self._event(f"ignored a rollback signal: {err}")

    def _freeze(self, env: str) -> tuple[datetime, Any] | None:
        """When the freeze of env in force now ends, and its window; None if env is not frozen (or was unfrozen)."""
        windows = self.release.freezes.get(env)  # type: ignore[call-overload]
        if not windows or self.state.unfrozen_by is not None:
            return None
        return frozen_until(windows, workflow.now())

    async def _wait_out_freeze(self, step: StepInput) -> None:
        """Wait until step.env is no longer frozen, on a durable timer, or until a person unfreezes the release.

        Releases recorded before freeze windows had none, so this adds nothing to their histories.
        """
        frozen = self._freeze(step.env)
        if frozen is None or not workflow.patched("freeze-windows"):
            return
        key = step.deploy.deploy_key
        while frozen is not None:
            until, window = frozen
            reason = f": {window.reason}" if window.reason else ""
            self.frozen[key] = step.env
            self._note(
                step, "waiting", "freeze", note=f"the {step.env} freeze to end at {until:%Y-%m-%d %H:%M} UTC{reason}"
            )
            self._set_status(FROZEN)
            try:
                await workflow.wait_condition(
                    lambda: self.state.unfrozen_by is not None,
                    timeout=until - workflow.now(),
                    timeout_summary=f"{step.env} freeze ends",
                )
            except TimeoutError:
                pass
            finally:
                del self.frozen[key]
                if not self.frozen and self.state.status == FROZEN:
                    self._set_status(RUNNING)
            # Another window may begin where this one ends.
            frozen = self._freeze(step.env)
        self._note(step, "running", "freeze")

    async def _step(self, verb: str, step: StepInput, done: bool = False) -> None:
        status = "done" if done else "running"
        self._note(step, "running", verb)
        try:
            result, cancelled = await _whole(_start_step(verb, step, activity_id=step_summary(verb, step)))
        except Exception as err:
            self._note(step, "failed", verb, error=_message(root_cause(err)))
            raise
        self._note(step, status, verb, result.attempt)
        if cancelled:
            raise asyncio.CancelledError()

    def _note(
        self,
        step: StepInput,
        status: str,
        verb: str,
        attempts: int = 0,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        self._apply_progress(
            StepProgress(
                deploy_key=step.deploy.deploy_key,
                env=step.env,
                status=status,  # type: ignore[arg-type]
                step=verb,
                attempts=attempts,
                error=error,
                note=note,
            )
        )

    @workflow.signal
    def lock_granted(self, lock: str) -> None:
        # Only locks this release asked for, or asks for now: a stray signal must not grow the state. A grant
        # may come before the answer of the move that asked (in the same workflow task, signals come first).
        target = "/".join(lock.split("/")[-2:])
        if target in self.asking or any(r.lock_id == lock for r in self.locks.values()):
            self.granted.add(lock)

    @workflow.signal
    def lock_check(self, lock: str) -> None:
        """A lock asks whether this release still runs: a signal that arrives is the answer."""

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
    async def approve(self, approval: Approval) -> ApprovalReply:
        approved = await self._apply_approval(approval)
        return ApprovalReply(
            release_key=self.state.release_key,
            status=self.state.status,
            approved=approved,
            still_waiting=[d.artifact for d in self.state.deploys if not d.approved and not _skipped(d)],
        )

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
        check_approver(approval.approver)
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
            raise ValueError(f"release {key} has no deploy {clip(approval.deploy)!r}; its deploys: {names}")
        if _skipped(deploy):
            raise ValueError(f"{deploy.artifact} was skipped: start the release again to ship it")
        if deploy.approved:
            by = f" by {deploy.approved_by}" if deploy.approved_by else ""
            raise ValueError(f"{deploy.artifact} in release {key} is already approved{by}")
        return False, [deploy]

    async def _apply_approval(self, approval: Approval) -> list[str]:
        release_too, deploys = self._approval_targets(approval)
        approver, now = check_approver(approval.approver), workflow.now()
        if release_too:
            self.state.approved, self.state.approved_by, self.state.approved_at = True, approver, now
        for d in deploys:
            d.approved, d.approved_by, d.approved_at = True, approver, now
        what = (["the release"] if release_too else []) + [d.artifact for d in deploys]
        self._event(f"approved by {approver}: {', '.join(what)}")
        await self._record_approval(
            ApprovalRecord(
                release_key=self.state.release_key,
                run_id=workflow.info().run_id,
                approver=approver,
                approved_at=now,
                deploy_keys=([self.state.release_key] if release_too else []) + [d.deploy_key for d in deploys],
            ),
            summary=f"record approval by {approver}",
        )
        return what

    async def _record_approval(self, record: ApprovalRecord, summary: str) -> None:
        await workflow.execute_activity_method(
            ReleaseActivities.record_approval,
            record,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary=summary,
        )

    # --- unfreeze: an Update (validated, answers) or a Signal of the same name and shape ---

    @workflow.update
    async def unfreeze(self, request: Unfreeze) -> UnfreezeReply:
        environments = await self._apply_unfreeze(request)
        return UnfreezeReply(release_key=self.state.release_key, status=self.state.status, environments=environments)

    @unfreeze.validator
    def validate_unfreeze(self, request: Unfreeze) -> None:
        self._unfreeze_check(request)

    @workflow.signal(name="unfreeze")
    async def unfreeze_signal(self, request: Unfreeze) -> None:
        try:
            self._unfreeze_check(request)
        except ValueError as err:
            self._event(f"ignored an unfreeze signal: {err}")
            return
        await self._apply_unfreeze(request)

    def _unfreeze_check(self, request: Unfreeze) -> str:
        key = self.state.release_key
        approver = check_approver(request.approver, "unfreezes")
        if self.state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({self.state.status}): nothing to unfreeze")
        if self.state.unfrozen_by is not None:
            raise ValueError(f"release {key} is already unfrozen by {self.state.unfrozen_by}")
        if not self.frozen:
            raise ValueError(f"release {key} is not frozen ({self.state.status}): nothing waits for a freeze to end")
        return approver

    async def _apply_unfreeze(self, request: Unfreeze) -> list[str]:
        approver, now = self._unfreeze_check(request), workflow.now()
        environments = sorted(set(self.frozen.values()), key=ENVIRONMENTS.index)
        self.state.unfrozen_by, self.state.unfrozen_at = approver, now
        self._event(f"freeze of {', '.join(environments)} overridden by {approver} for this release")
        await self._record_approval(
            ApprovalRecord(
                release_key=self.state.release_key,
                run_id=workflow.info().run_id,
                approver=approver,
                approved_at=now,
                deploy_keys=[self.state.release_key],
                step="unfreeze",
                environments=environments,  # type: ignore[arg-type]
            ),
            summary=f"record unfreeze by {approver}",
        )
        return environments

    # --- progress ---

    @workflow.query
    def progress(self) -> ReleaseState:
        return self.state

    @workflow.signal
    def deploy_progress(self, progress: StepProgress) -> None:
        """A deploy's step, from a child of a release recorded before releases ran their own deploys."""
        self._apply_progress(progress)

    def _apply_progress(self, progress: StepProgress) -> None:
        deploy = next((d for d in self.state.deploys if d.deploy_key == progress.deploy_key), None)
        if deploy is None or progress.env not in deploy.cells:
            return
        cell = deploy.cells[progress.env]
        cell.status, cell.step = progress.status, progress.step
        deploy.waiting_for = progress.note if progress.status == "waiting" else None
        if progress.note:
            self._event(f"{deploy.artifact} waits for {progress.note}")
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
        self.state.events.append(clip(f"{workflow.now():%H:%M:%S} {text}", EVENT_CHARS))
        del self.state.events[:-EVENTS_KEPT]
        self.state.event_count += 1
        self._show()

    def _show(self) -> None:
        workflow.set_current_details(render_details(self.state))

    def _set_status(self, status: str) -> None:
        self.state.status = status
        # Only releases started with the search attributes (so registered) upsert them.
        if workflow.info().typed_search_attributes.get(RELEASE_KEY) is not None:
            workflow.upsert_search_attributes([RELEASE_STATUS.value_set(status)])
        self._show()

    def _finish(self, status: str, error: str | None = None) -> None:
        self.state.error = error
        self._set_status(status)


def _message(err: BaseException) -> str:
    """An error's own words, without the "Type: " that str() of an ApplicationError puts first."""
    return clip(getattr(err, "message", None) or str(err), 1000)


async def _whole(handle: workflow.ActivityHandle[StepResult]) -> tuple[StepResult, bool]:
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


def _start_step(verb: str, step: StepInput, activity_id: str | None = None) -> workflow.ActivityHandle[StepResult]:
    """Start a build, deploy or test; activity_id, when given, names it for people (its summary).

    Regular activities: these are the steps people watch, pending in the Web UI with their
    attempts, heartbeating while they work, so a dead worker is noticed in seconds.
    """
    return workflow.start_activity_method(
        getattr(ReleaseActivities, verb),
        step,
        activity_id=activity_id,
        # Steps heartbeat while they work, so a step whose worker died is retried after
        # heartbeat_timeout, whatever the start-to-close: that one only bounds a step that keeps
        # heartbeating, such as a test running its checks' commands one after another.
        start_to_close_timeout=timedelta(hours=24),
        heartbeat_timeout=timedelta(seconds=5),
        # Simulated faults and workspace errors a person can fix (permissions, a full
        # disk) retry with a capped backoff; bad input and bugs fail at once.
        retry_policy=RetryPolicy(
            initial_interval=timedelta(seconds=1),
            maximum_interval=timedelta(seconds=5),
            non_retryable_error_types=NON_RETRYABLE_ERRORS,
        ),
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=step_summary(verb, step),
    )


def _skipped(deploy: DeployState) -> bool:
    return all(c.status == "skipped" for c in deploy.cells.values())


# Failures a release's on_failure policy settles; any other failure stops the release.
SETTLED_BY_POLICY = ("GateFailed", "VerificationFailed")

# Lock order: the artifactory (ARTIFACTORY), then the environments in promotion order. Every
# deploy takes locks in this order, so two deploys never wait for each other in a circle.
# A deploy that waits for a lock asks again this often (a terminated lock starts anew).
LOCK_REQUEST_AGAIN = timedelta(seconds=60)


@workflow.defn(failure_exception_types=[ValidationError])
class DeployWorkflow:
    def __init__(self) -> None:
        self.granted: set[str] = set()
        self.held: list[LockRequest] = []
        self.scope = ""

    @workflow.run
    async def run(self, request: DeployRequest) -> DeployResult:
        # Releases recorded before target locks replay without them.
        if workflow.patched("target-locks"):
            try:
                await self._promote_locked(request)
            finally:
                for lock in reversed(self.held):
                    await self._release(lock)
        else:
            await self._promote(request)
        deploy = request.deploy
        return DeployResult(
            deploy_key=deploy.deploy_key,
            artifact=f"{deploy.container_id}-{deploy.version}",
            environments=deploy.environments,
        )

    async def _promote(self, request: DeployRequest) -> None:
        deploy = request.deploy
        for env in deploy.environments:
            step = StepInput(release_key=request.release_key, run_id=request.run_id, deploy=deploy, env=env)
            # Only the first environment builds; later ones promote what was tested before.
            verbs = (["build"] if env == ENVIRONMENTS[0] else []) + ["deploy", "test"]
            await self._report(step, "running", verbs[0])
            for i, verb in enumerate(verbs):
                await self._step(verb, step, "done" if i == len(verbs) - 1 else "running")

    async def _promote_locked(self, request: DeployRequest) -> None:
        """Each environment under its lock, and the one it copies from held until the copy is made.

        Holding the source until the deploy is done means no other release can replace the
        version being promoted; holding the target through its test means nobody replaces
        what is being tested.
        """
        deploy = request.deploy
        self.scope = request.lock_scope
        first = ENVIRONMENTS.index(deploy.environments[0])
        source = ARTIFACTORY if first == 0 else ENVIRONMENTS[first - 1]
        for env in deploy.environments:
            step = StepInput(release_key=request.release_key, run_id=request.run_id, deploy=deploy, env=env)
            if env == deploy.environments[0]:
                await self._acquire(step, source)
                if env == ENVIRONMENTS[0]:
                    await self._report(step, "running", "build")
                    await self._step("build", step, "running")
            await self._acquire(step, env)
            await self._report(step, "running", "deploy")
            await self._step("deploy", step, "running")
            await self._release(self.held[0])  # the source: its copy is made
            await self._step("test", step, "done")

    async def _step(self, verb: str, step: StepInput, status: str) -> None:
        try:
            result, cancelled = await _whole(self._start(verb, step))
        except Exception as err:
            await self._report(step, "failed", verb, error=_message(root_cause(err)))
            raise
        await self._report(step, status, verb, result.attempt)
        if cancelled:
            raise asyncio.CancelledError()

    def _start(self, verb: str, step: StepInput) -> workflow.ActivityHandle[StepResult]:
        return _start_step(verb, step)

    # --- target locks ---

    async def _acquire(self, step: StepInput, place: str) -> None:
        info = workflow.info()
        target = f"{place}/{step.deploy.container_id}"
        req = LockRequest(
            lock_id=lock_id(self.scope or info.task_queue, target),
            target=target,
            holder_id=info.workflow_id,
            holder_run_id=info.run_id,
            release_key=step.release_key,
        )
        # Held from the moment it is asked for, so a cancel while waiting leaves the queue.
        self.held.append(req)
        told = False
        while req.lock_id not in self.granted:
            # Asked again now and then: a lock workflow an operator terminated starts anew,
            # and a live lock ignores a request it already queued.
            holder = await workflow.execute_activity_method(
                LockActivities.request_lock,
                req,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
                summary=f"lock {target}",
            )
            # None, or this release: the grant is on its way, nothing to tell.
            if holder not in (None, step.release_key) and not told and req.lock_id not in self.granted:
                told = True
                await self._report(step, "waiting", "lock", note=f"{target}: held by {holder}")
            try:
                await workflow.wait_condition(lambda: req.lock_id in self.granted, timeout=LOCK_REQUEST_AGAIN)
            except TimeoutError:
                continue

    async def _release(self, req: LockRequest) -> None:
        self.held.remove(req)
        self.granted.discard(req.lock_id)
        try:
            await workflow.get_external_workflow_handle(req.lock_id).signal(TargetLockWorkflow.release, req)
        except ApplicationError as err:
            # A lock workflow an operator terminated holds nothing any more.
            if err.type != "ExternalWorkflowExecutionNotFound":
                raise

    @workflow.signal
    def lock_granted(self, lock: str) -> None:
        self.granted.add(lock)

    @workflow.signal
    def lock_check(self, lock: str) -> None:
        """The lock asks whether this deploy still runs: a signal that arrives is the answer."""

    async def _report(
        self,
        step: StepInput,
        status: str,
        verb: str,
        attempts: int = 0,
        error: str | None = None,
        note: str | None = None,
    ) -> None:
        parent = workflow.info().parent
        if parent is None:
            return
        progress = StepProgress(
            deploy_key=step.deploy.deploy_key,
            env=step.env,
            status=status,
            step=verb,
            attempts=attempts,
            error=error,
            note=note,
        )
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(
            ReleaseWorkflow.deploy_progress, progress
        )
