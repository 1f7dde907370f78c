"""Target locks on the time-skipping server: one deploy per (environment, container) at a time, no grant lost."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from pathlib import Path

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from orchestrator.locks import (
    LockActivities,
    LockAnswer,
    LockMove,
    LockRequest,
    LockState,
    StandingLockWorkflow,
    TargetLockWorkflow,
    lock_id,
)
from release_management import ReleaseManagement
from shared import ENVIRONMENTS, ReleaseRequest, ReleaseState
from tests.conftest import CATALOG
from tests.support import GatedStep, eventually, in_process_worker
from workflows import ReleaseWorkflow

INITIAL, HOTFIX = "RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE"


async def start(env: WorkflowEnvironment, tq: str, key: str) -> WorkflowHandle:
    return await env.client.start_workflow(
        ReleaseWorkflow.run,
        ReleaseRequest(release_key=key, now=True),
        id=f"release-{key}-{uuid.uuid4()}",
        task_queue=tq,
    )


async def state_of(handle: WorkflowHandle) -> ReleaseState:
    return await handle.query(ReleaseWorkflow.progress)


def line(rm: ReleaseManagement, key: str, step: str, env: str, container: str) -> dict:
    [found] = [
        e
        for e in rm.ledger.entries()
        if (e["release_key"], e["step"], e.get("env"), e.get("container"), e.get("applied"))
        == (key, step, env, container, True)
    ]
    return found


async def test_a_deploy_waits_while_another_release_tests_in_that_environment(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    """INITIAL tests sbstore in QC (held at a gate); HOTFIX's sbstore reaches QC meanwhile: it waits for the lock."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    qc_test = GatedStep(
        rm, "test", lambda s: (s.release_key, s.env, s.deploy.container_id) == (INITIAL, "QC", "sbstore")
    )
    async with in_process_worker(ts_env, rm, replace=qc_test.activity) as tq:
        first = await start(ts_env, tq, INITIAL)
        await qc_test.wait_entered()
        second = await start(ts_env, tq, HOTFIX)
        seen: list[str] = []

        async def waits_or_deploys() -> bool:
            sbstore = next((d for d in (await state_of(second)).deploys if d.container_id == "sbstore"), None)
            if sbstore is None:
                return False  # still gathering its deploys
            if sbstore.waiting_for:
                seen.append(sbstore.waiting_for)
            return sbstore.cells["QC"].step == "deploy" or bool(seen)

        await eventually(waits_or_deploys)
        qc_test.gate.set()
        assert (await first.result()).status == "SUCCESS"
        assert (await second.result()).status == "SUCCESS"
    assert seen == [f"QC/sbstore: held by {INITIAL}"]
    tested = datetime.fromisoformat(line(rm, INITIAL, "test", "QC", "sbstore")["at"])
    deployed = datetime.fromisoformat(line(rm, HOTFIX, "deploy", "QC", "sbstore")["started_at"])
    assert deployed >= tested, "HOTFIX deployed sbstore into QC while INITIAL was still testing it there"
    assert rm.contents("QC") == ["backendforfrontend-1.7", "frontend-1.1", "sbstore-1.7"]


async def test_a_grant_that_comes_before_the_answer_to_the_request_is_not_lost(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    """The lock's grant signal and the answer "queued" of the activity that asked reach the release together.

    The stand-in for move_locks answers HOTFIX's request for QC/sbstore only once the lock has granted it (its
    signal sent): the release must take the grant at once, not wait for its ask-again timer.
    """
    rm = ReleaseManagement(tmp_path, CATALOG)
    qc_test = GatedStep(
        rm, "test", lambda s: (s.release_key, s.env, s.deploy.container_id) == (INITIAL, "QC", "sbstore")
    )
    real = LockActivities(ts_env.client)
    raced: list[str] = []

    @activity.defn(name="move_locks")
    async def move_locks(move: LockMove) -> list[LockAnswer]:
        answers = await real.move_locks(move)
        for answer in answers:
            if answer.asked and not answer.granted and answer.target == "QC/sbstore":
                qc_test.gate.set()  # INITIAL finishes testing, goes on to PROD and gives QC/sbstore back
                lock = ts_env.client.get_workflow_handle(answer.lock_id)
                wanted = move.take[answers.index(answer)].owner_id

                async def granted(lock: WorkflowHandle = lock, wanted: str = wanted) -> bool:
                    owner = await lock.query(StandingLockWorkflow.owner_request)
                    return owner is not None and owner.owner_id == wanted

                await eventually(granted)
                raced.append(answer.target)
        return answers

    async with in_process_worker(ts_env, rm, replace=[qc_test.activity, move_locks]) as tq:
        first = await start(ts_env, tq, INITIAL)
        await qc_test.wait_entered()
        second = await start(ts_env, tq, HOTFIX)
        assert (await second.result()).status == "SUCCESS"
        assert (await first.result()).status == "SUCCESS"
    assert raced == ["QC/sbstore"]
    history = await second.fetch_history()
    fired = [e for e in history.events if e.HasField("timer_fired_event_attributes")]
    assert fired == [], "the grant was dropped: the release waited for its ask-again timer"


async def test_locks_stand_a_free_target_costs_no_workflow_start(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    """Each target's lock is one standing workflow: a second release takes and gives back the same runs, none new."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    # No skips ahead: while a release waits for a grant, the server could skip to the locks' default 10-year
    # timeout (todo.md) and end them.
    with ts_env.auto_time_skipping_disabled():
        async with in_process_worker(ts_env, rm) as tq:
            assert (await (await start(ts_env, tq, INITIAL)).result()).status == "SUCCESS"
            targets = [f"{place}/{c}" for place in ("artifactory", *ENVIRONMENTS) for c in ("frontend", "sbstore")]
            locks = {t: ts_env.client.get_workflow_handle(lock_id(tq, t)) for t in targets}
            runs = {t: (await h.describe()).run_id for t, h in locks.items()}
            assert (await (await start(ts_env, tq, HOTFIX)).result()).status == "SUCCESS"
            for target, handle in locks.items():
                described = await handle.describe()
                assert (described.run_id, described.workflow_type) == (runs[target], "StandingLockWorkflow"), target
                assert described.status == WorkflowExecutionStatus.RUNNING
                assert await handle.query(StandingLockWorkflow.owner_request) is None, f"{target} is still owned"


def _request(owner: str, target: str = "DEV/frontend") -> LockRequest:
    return LockRequest(lock_id="", target=target, owner_id=owner, owner_run_id="r", release_key=f"KEY-{owner}")


async def test_the_1_1_lock_and_the_standing_lock_answer_each_other(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    """While 1.1 runs drain: a 1.2 activity asks a 1.1 lock run the 1.1 way, and a standing lock queues a 1.1
    release's request signal. Both say who holds the lock."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    async with in_process_worker(ts_env, rm) as tq:
        acts = ActivityEnvironment()
        acts.info = dataclasses.replace(acts.info, task_queue=tq)
        old_id = lock_id(tq, "DEV/frontend")
        holder = _request("a").model_copy(update={"lock_id": old_id})
        old = await ts_env.client.start_workflow(
            TargetLockWorkflow.run, LockState(target="DEV/frontend", owner=holder), id=old_id, task_queue=tq
        )
        [answer] = await acts.run(LockActivities(ts_env.client).move_locks, LockMove(take=[_request("b")]))
        assert (answer.granted, answer.owner) == (False, "KEY-a")
        await old.terminate("the test is over")

        [first] = await acts.run(LockActivities(ts_env.client).move_locks, LockMove(take=[_request("a", "QC/x")]))
        assert first.granted
        standing = ts_env.client.get_workflow_handle(first.lock_id)
        await standing.signal(StandingLockWorkflow.request, _request("b", "QC/x"))
        assert await standing.query(StandingLockWorkflow.waiting) == 1
        assert (await standing.query(StandingLockWorkflow.owner_request)).release_key == "KEY-a"  # type: ignore[union-attr]
        await standing.terminate("the test is over")
