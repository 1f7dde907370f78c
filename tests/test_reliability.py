"""Nothing lost, nothing stuck, on the time-skipping server: failing deploys, retry storms, bad input, locks."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import MissingArtifact, root_cause
from shared import (
    AWAITING_APPROVAL,
    CANCELLED,
    EVENTS_KEPT,
    FAILED,
    Approval,
    ApprovalReply,
    ReleaseInfo,
    ReleaseRequest,
    StepInput,
    StepResult,
)
from tests.support import activity_starts, in_process_worker
from tests.test_approvals import catalog_with, unapproved_sbstore, until_status
from utils import SimulatedFailure
from workflows import ReleaseWorkflow

KEY = "RELEASE-NOV-23-INITIAL"


async def start(env: WorkflowEnvironment, tq: str, key: str = KEY) -> WorkflowHandle:
    return await env.client.start_workflow(
        ReleaseWorkflow.run, ReleaseRequest(release_key=key), id=f"release-{key}-{uuid.uuid4()}", task_queue=tq
    )


async def test_a_deploy_that_fails_for_good_stops_the_others(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path)
    testing_in_qc: set[str] = set()
    others_in_qc = threading.Event()

    @activity.defn
    def deploy(step: StepInput) -> StepResult:
        # sbstore's artifact is lost on its way to TEST, once the others test in QC.
        # It heartbeats while it waits: on the time-skipping server, a step that is silent for its heartbeat
        # timeout may be timed out by a skip ahead, and its retry would come late.
        if step.deploy.container_id == "sbstore" and step.env == "TEST":
            for _ in range(600):
                if others_in_qc.wait(0.1):
                    break
                activity.heartbeat()
            assert others_in_qc.is_set()
            raise MissingArtifact("cannot deploy sbstore 1.0 to TEST: DEV does not hold sbstore-1.0")
        artifact, _ = rm.deploy(step)
        return StepResult(artifact=artifact, attempt=activity.info().attempt)

    @activity.defn
    async def test(step: StepInput) -> StepResult:
        # The others test in QC until the release tells them to stop: that step finishes whole. The bound is only
        # against a hang: the stop comes within seconds, later on a busy machine.
        if step.env == "QC":
            testing_in_qc.add(step.deploy.container_id)
            if len(testing_in_qc) == 2:
                others_in_qc.set()
            try:
                async with asyncio.timeout(90):
                    while True:
                        activity.heartbeat()
                        await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass
        artifact, _ = await asyncio.to_thread(rm.test, step)
        return StepResult(artifact=artifact, attempt=activity.info().attempt)

    async with in_process_worker(ts_env, rm, replace=[deploy, test]) as tq:
        handle = await start(ts_env, tq)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    cause = root_cause(err.value)
    assert isinstance(cause, ApplicationError) and cause.type == "MissingArtifact"
    assert "cannot deploy sbstore 1.0 to TEST" in str(cause) and "the other deploys stopped" in str(cause)
    # The deploys in flight to QC finished whole; nothing went further, so PROD holds no set nobody released.
    assert rm.contents("QC") == ["backendforfrontend-1.0", "frontend-1.0"]
    assert rm.contents("PROD") == []
    assert state.status == FAILED and state.error == str(cause).removeprefix("MissingArtifact: ")
    reached = {e["container"]: e["env"] for e in rm.ledger.entries() if e["step"] == "deploy"}
    assert reached.get("sbstore") == "DEV"


# On the dev server: the cancel meets activities whose failures are buffered, which the time-skipping server
# may never cancel (sdk-java#2391); it then skips ahead to the run's timeout instead.
async def test_cancel_ends_a_retry_storm_at_once(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path)
    attempts: list[int] = []

    @activity.defn
    def build(step: StepInput) -> StepResult:
        attempts.append(activity.info().attempt)
        raise SimulatedFailure("the build farm is down")

    async with in_process_worker(dev_server, rm, replace=build) as tq:
        handle = await start(dev_server, tq)
        async with asyncio.timeout(30):
            while len(attempts) < 9:  # noqa: ASYNC110 - three builds, each failing three times
                await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 20)
        state = await handle.query(ReleaseWorkflow.progress)
        seen = len(attempts)
    assert isinstance(err.value.cause, CancelledError)
    assert state.status == CANCELLED and state.error == "deployed before the cancel: nothing"
    # No attempt was scheduled after the cancel: at most the ones in flight finished.
    assert seen <= 9 + 3
    starts = await activity_starts(dev_server.client, handle.id)
    assert max(a.attempt for a in starts) <= 5


async def test_cancel_while_gathering_ends_cancelled(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path)
    tries: list[int] = []

    @activity.defn
    def gather_deployments(key: str) -> ReleaseInfo:
        tries.append(activity.info().attempt)
        raise SimulatedFailure("the catalog service is down")

    async with in_process_worker(ts_env, rm, replace=gather_deployments) as tq:
        handle = await start(ts_env, tq)
        async with asyncio.timeout(30):
            while len(tries) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await asyncio.wait_for(handle.result(), 20)
        state = await handle.query(ReleaseWorkflow.progress)
    assert isinstance(err.value.cause, CancelledError)
    assert state.status == CANCELLED


@pytest.mark.parametrize(
    ("approver", "message"),
    [
        ("x" * 101, "the approver's name is 101 characters long; the limit is 100"),
        ("ok\n12:00:00 approved by the CTO", "control characters"),
        ("\x1b[2K", "control characters"),
        ("   ", "the approver is empty"),
    ],
)
async def test_bad_approver_names_are_refused(
    ts_env: WorkflowEnvironment, tmp_path: Path, approver: str, message: str
) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(ReleaseWorkflow.approve, Approval(approver=approver, deploy="sbstore"))
        assert str(err.value.cause) == message or message in str(err.value.cause)
        await handle.signal("approve", Approval(approver=approver, deploy="sbstore"))
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="alice", deploy="sbstore"))
        state = await handle.query(ReleaseWorkflow.progress)
        await handle.result()
    assert isinstance(reply, ApprovalReply)
    assert reply.approved == ["sbstore-1.0"] and reply.still_waiting == []
    ignored = [e for e in state.events if "ignored an approval signal" in e]
    assert len(ignored) == 1 and message in ignored[0]
    assert approver.strip() == "" or approver not in str(state.model_dump())


async def test_a_flood_of_bad_signals_keeps_the_release_small(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    big = "A" * 200_000
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        for _ in range(EVENTS_KEPT + 20):
            await handle.signal("approve", Approval(approver=big, deploy=big))
        state = await handle.query(ReleaseWorkflow.progress)
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="alice"))
        await handle.result()
    assert len(state.events) == EVENTS_KEPT and state.event_count >= EVENTS_KEPT + 20
    assert len(state.model_dump_json()) < 100_000
    assert len(reply.model_dump_json()) < 1_000


async def test_a_terminated_release_does_not_keep_its_lock(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path)
    in_flight, go_on = asyncio.Event(), asyncio.Event()

    @activity.defn
    async def deploy(step: StepInput) -> StepResult:
        if step.release_key == "RELEASE-JAN-24-ALPHA-DEV" and step.deploy.container_id == "frontend":
            in_flight.set()
            await go_on.wait()
        artifact, _ = await asyncio.to_thread(rm.deploy, step)
        return StepResult(artifact=artifact, attempt=1)

    async with in_process_worker(ts_env, rm, replace=deploy) as tq:
        first = await start(ts_env, tq, "RELEASE-JAN-24-ALPHA-DEV")
        await in_flight.wait()  # it holds artifactory/frontend and DEV/frontend now
        await first.terminate("an operator pulled the plug")
        go_on.set()
        second = await start(ts_env, tq, "RELEASE-NOV-23-INITIAL")
        result = await asyncio.wait_for(second.result(), 60)
    assert result.status == "SUCCESS"
    assert "frontend-1.0" in rm.contents("PROD")


async def test_a_release_whose_lock_was_terminated_goes_on(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path)
    in_flight, go_on = asyncio.Event(), asyncio.Event()

    @activity.defn
    async def deploy(step: StepInput) -> StepResult:
        if step.deploy.container_id == "frontend" and step.env == "DEV":
            in_flight.set()
            await go_on.wait()
        artifact, _ = await asyncio.to_thread(rm.deploy, step)
        return StepResult(artifact=artifact, attempt=1)

    async with in_process_worker(ts_env, rm, replace=deploy) as tq:
        release = await start(ts_env, tq, "RELEASE-JAN-24-ALPHA-DEV")
        await in_flight.wait()  # it holds artifactory/frontend and DEV/frontend
        lock = ts_env.client.get_workflow_handle(f"lock/{tq}/artifactory/frontend")
        await lock.terminate("an operator cleared the lock")
        go_on.set()
        # Releasing a lock that is gone is not an error: the release ends as it would have.
        assert (await asyncio.wait_for(release.result(), 60)).status == "SUCCESS"
    assert rm.contents("DEV") == ["backendforfrontend-1.8", "frontend-1.2", "sbstore-1.8"]
