"""People in the loop, on the time-skipping server: approvals, policies, release dates, cancel."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from release_management import ReleaseManagement
from shared import (
    AWAITING_APPROVAL,
    CANCELLED,
    SCHEDULED,
    Approval,
    ReleaseInfo,
    ReleaseState,
    StepInput,
    StepResult,
    render_progress,
    root_cause,
)
from tests.conftest import CATALOG
from tests.support import in_process_worker
from workflows import ReleaseWorkflow

KEY = "RELEASE-NOV-23-INITIAL"


def catalog_with(tmp_path: Path, key: str = KEY, **changes: Any) -> ReleaseManagement:
    """The real catalog with one release changed, and a workspace beside it."""
    catalog = json.loads(CATALOG.read_text())
    next(r for r in catalog["releases"] if r["release_key"] == key).update(changes)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return ReleaseManagement(tmp_path / "ws", path)


def unapproved_sbstore(tmp_path: Path, policy: str, **policy_fields: Any) -> ReleaseManagement:
    return catalog_with(tmp_path, unapproved=["sbstore"], approval_policy={"unapproved": policy, **policy_fields})


async def start(env: WorkflowEnvironment, tq: str, key: str = KEY, now: bool = False) -> WorkflowHandle:
    return await env.client.start_workflow(
        ReleaseWorkflow.run, ReleaseInfo(release_key=key, now=now), id=f"release-{key}-{uuid.uuid4()}", task_queue=tq
    )


async def until_status(handle: WorkflowHandle, status: str) -> ReleaseState:
    async with asyncio.timeout(30):
        while (state := await handle.query(ReleaseWorkflow.progress)).status != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return state


async def has_event(handle: WorkflowHandle, field: str) -> bool:
    history = await handle.fetch_history()
    return any(e.HasField(field) for e in history.events)


async def test_skip_releases_what_is_approved(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "skip")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        result = await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert result.status == "SUCCESS" and result.skipped == [f"{KEY}:sbstore"]
    assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0"]
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    assert {c.status for c in sbstore.cells.values()} == {"skipped"}


async def test_stop_fails_at_once(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "stop")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    cause = root_cause(err.value)
    assert isinstance(cause, ApplicationError) and cause.type == "NotApproved"
    assert f"release {KEY} has unapproved deploys: sbstore" in str(cause)
    assert not await has_event(handle, "timer_started_event_attributes")
    assert rm.contents("DEV") == []


async def test_hold_waits_for_an_approval_by_update(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        waiting = await until_status(handle, AWAITING_APPROVAL)
        assert rm.contents("DEV") == [] and waiting.events[-1].endswith("for approval of sbstore")
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="alice", deploy="sbstore"))
        assert reply.approved == ["sbstore-1.0"] and reply.still_waiting == []
        result = await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    assert sbstore.approved and sbstore.approved_by == "alice" and sbstore.approved_at is not None
    assert result.status == "SUCCESS" and result.skipped == []
    assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
    approvals = [e for e in rm.ledger.entries() if e["step"] == "approve"]
    assert [(a["deploy_key"], a["approver"]) for a in approvals] == [(f"{KEY}:sbstore", "alice")]


async def test_hold_accepts_an_approval_by_signal(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_with(tmp_path, approved=False, unapproved=["sbstore"])
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        # No deploy named: approves the release and every deploy that waits.
        await handle.signal("approve", Approval(approver="bob"))
        result = await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert result.status == "SUCCESS"
    assert state.approved_by == "bob" and state.approved_at is not None
    assert "release approved by bob at " in render_progress(state)
    assert {d.container_id: d.approved_by for d in state.deploys} == {
        "frontend": None,
        "sbstore": "bob",
        "backendforfrontend": None,
    }
    approvals = sorted(e["deploy_key"] for e in rm.ledger.entries() if e["step"] == "approve")
    assert approvals == [KEY, f"{KEY}:sbstore"]


@pytest.mark.parametrize("after_hold", ["skip", "stop"])
async def test_hold_gives_up_after_its_timeout(ts_env: WorkflowEnvironment, tmp_path: Path, after_hold: str) -> None:
    rm = unapproved_sbstore(tmp_path, "hold", hold_hours=2, after_hold=after_hold)
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        began = await ts_env.get_current_time()
        if after_hold == "skip":
            result = await handle.result()
            assert result.skipped == [f"{KEY}:sbstore"]
            assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0"]
        else:
            with pytest.raises(WorkflowFailureError) as err:
                await handle.result()
            assert "no approval of sbstore within 2 h" in str(root_cause(err.value))
            assert rm.contents("DEV") == []
    assert await ts_env.get_current_time() - began >= timedelta(hours=2)


async def test_bad_approvals_are_rejected_before_they_touch_history(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        bad = [
            (Approval(approver="  ", deploy="sbstore"), "the approver is empty"),
            (Approval(approver="carol", deploy="nope"), "has no deploy 'nope'; its deploys: frontend, sbstore"),
            (
                Approval(approver="carol", deploy="frontend"),
                "frontend-1.0 in release RELEASE-NOV-23-INITIAL is already",
            ),
        ]
        for approval, message in bad:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(ReleaseWorkflow.approve, approval)
            assert message in str(err.value.cause)
        assert not await has_event(handle, "workflow_execution_update_accepted_event_attributes")
        await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="carol", deploy="sbstore"))
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="dave", deploy="sbstore"))
        assert "sbstore-1.0 in release RELEASE-NOV-23-INITIAL is already approved by carol" in str(err.value.cause)
        await handle.result()
    assert len([e for e in rm.ledger.entries() if e["step"] == "approve"]) == 1


async def test_a_release_waits_for_its_date_on_a_durable_timer(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    day = (await ts_env.get_current_time()).date() + timedelta(days=3)
    rm = catalog_with(tmp_path, release_date=day.isoformat())
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, SCHEDULED)
        assert rm.contents("DEV") == []
        assert (await handle.result()).status == "SUCCESS"
        assert await ts_env.get_current_time() >= datetime.combine(day, time.min, tzinfo=UTC)
        assert await has_event(handle, "timer_started_event_attributes")

        # --now ships at once, date or not.
        hurry = await start(ts_env, tq, now=True)
        assert (await hurry.result()).status == "SUCCESS"
        assert not await has_event(hurry, "timer_started_event_attributes")


async def test_cancel_stops_between_steps_and_reports_what_was_deployed(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = catalog_with(tmp_path, key="RELEASE-JAN-24-ALPHA-DEV", versions={"frontend": "1.2"})
    in_flight = asyncio.Event()

    @activity.defn
    async def deploy(step: StepInput) -> StepResult:
        in_flight.set()
        try:
            async with asyncio.timeout(30):
                while True:  # the cancel arrives while this step is running
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass  # and the step finishes whole all the same
        return StepResult(artifact=(await asyncio.to_thread(rm.deploy, step)).artifact, attempt=1)

    async with in_process_worker(ts_env, rm, replace=deploy) as tq:
        handle = await start(ts_env, tq, key="RELEASE-JAN-24-ALPHA-DEV")
        await in_flight.wait()
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert isinstance(err.value.cause, CancelledError)
    assert rm.contents("DEV") == ["frontend-1.2"]  # the step in flight finished whole
    assert [e["step"] for e in rm.ledger.entries()] == ["build", "deploy"]  # and nothing ran after it
    assert state.status == CANCELLED
    assert state.error == "deployed before the cancel: frontend-1.2 → DEV"


async def test_cancel_while_awaiting_approval_deploys_nothing(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert state.status == CANCELLED and state.error == "deployed before the cancel: nothing"
    assert rm.ledger.entries() == []
