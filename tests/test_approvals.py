"""People in the loop, on the time-skipping server: approvals, policies, release dates, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import root_cause
from orchestrator.render import render_progress
from release_management import ReleaseManagement
from shared import (
    AWAITING_APPROVAL,
    CANCELLED,
    FAILED,
    SCHEDULED,
    Approval,
    ApprovalReport,
    ReleaseInfo,
    ReleaseRequest,
    ReleaseState,
    StepInput,
    StepResult,
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
        ReleaseWorkflow.run, ReleaseRequest(release_key=key, now=now), id=f"release-{key}-{uuid.uuid4()}", task_queue=tq
    )


async def until_status(handle: WorkflowHandle, status: str) -> ReleaseState:
    async with asyncio.timeout(30):
        while (state := await handle.query(ReleaseWorkflow.progress)).status != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return state


def cause_of(err: WorkflowUpdateFailedError) -> str:
    """The validator's words, without the error type in front."""
    return getattr(err.cause, "message", None) or str(err.cause)


async def has_event(handle: WorkflowHandle, field: str) -> bool:
    history = await handle.fetch_history()
    return any(e.HasField(field) for e in history.events)


def deploy_work(events: list[HistoryEvent]) -> list[HistoryEvent]:
    """The events that begin a deploy's work: a lock asked for (a local activity's marker), a step scheduled."""
    return [
        e
        for e in events
        if e.HasField("marker_recorded_event_attributes")
        or e.activity_task_scheduled_event_attributes.activity_type.name in ("build", "deploy", "test")
    ]


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


# --- a release that is itself unapproved is never skipped ---


@pytest.mark.parametrize("policy", ["skip", "stop"])
async def test_an_unapproved_release_fails_at_once_whatever_the_policy(
    ts_env: WorkflowEnvironment, tmp_path: Path, policy: str
) -> None:
    # Every deploy approved: only the release itself waits, and skip must not ship it anyway.
    rm = catalog_with(tmp_path, approved=False, approval_policy={"unapproved": policy})
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    cause = root_cause(err.value)
    assert isinstance(cause, ApplicationError) and cause.type == "NotApproved", cause
    assert cause.message == f"release {KEY} is not approved"
    assert state.status == FAILED and state.error == f"release {KEY} is not approved"
    assert not await has_event(handle, "timer_started_event_attributes")
    assert deploy_work((await handle.fetch_history()).events) == []
    assert rm.ledger.entries() == [] and rm.contents("DEV") == []


async def test_hold_then_skip_still_fails_an_unapproved_release_at_the_deadline(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = catalog_with(
        tmp_path,
        approved=False,
        unapproved=["sbstore"],
        approval_policy={"unapproved": "hold", "hold_hours": 2, "after_hold": "skip"},
    )
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        began = await ts_env.get_current_time()
        waiting = await until_status(handle, AWAITING_APPROVAL)
        assert waiting.events[-1].endswith("waiting up to 2 h for approval of the release, sbstore"), waiting.events
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    cause = root_cause(err.value)
    assert isinstance(cause, ApplicationError) and cause.type == "NotApproved", cause
    assert cause.message == f"release {KEY}: no approval of the release, sbstore within 2 h"
    assert await ts_env.get_current_time() - began >= timedelta(hours=2)
    assert state.status == FAILED
    assert rm.ledger.entries() == [] and rm.contents("DEV") == []


@pytest.mark.parametrize("after_hold", ["skip", "stop"])
async def test_hold_deadline_with_only_a_deploy_unapproved(
    ts_env: WorkflowEnvironment, tmp_path: Path, after_hold: str
) -> None:
    """skip: the release goes on at the deadline without sbstore, and not before; stop: it fails, nothing built."""
    rm = unapproved_sbstore(tmp_path, "hold", hold_hours=3, after_hold=after_hold)
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        began = await ts_env.get_current_time()
        await until_status(handle, AWAITING_APPROVAL)
        assert rm.ledger.entries() == []  # nothing is built while it holds, not even the approved deploys
        try:
            result = await handle.result()
        except WorkflowFailureError as err:
            result, cause = None, root_cause(err)
        state = await handle.query(ReleaseWorkflow.progress)
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    if after_hold == "skip":
        assert result is not None and result.status == "SUCCESS" and result.skipped == [f"{KEY}:sbstore"]
        assert {c.status for c in sbstore.cells.values()} == {"skipped"} and not sbstore.approved
        assert any(e.endswith("skipped sbstore-1.0: not approved") for e in state.events), state.events
        for name in ("DEV", "PROD"):
            assert rm.contents(name) == ["backendforfrontend-1.0", "frontend-1.0"]
        # The approved deploys went on only once the deadline had passed (on the server's clock).
        events = (await handle.fetch_history()).events
        first = deploy_work(events)[0]
        assert first.event_time.ToDatetime() - events[0].event_time.ToDatetime() >= timedelta(hours=3)
    else:
        assert result is None and isinstance(cause, ApplicationError) and cause.type == "NotApproved"
        assert cause.message == f"release {KEY}: no approval of sbstore within 3 h"
        assert state.status == FAILED and {c.status for c in sbstore.cells.values()} == {"cancelled"}
        assert rm.ledger.entries() == [] and rm.contents("DEV") == []
        assert await ts_env.get_current_time() - began >= timedelta(hours=3)


# --- approvals sent while the release waits for its date ---


async def test_approvals_given_while_waiting_for_the_date_survive_the_scan(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """The approval system's scan still reports the release and sbstore unapproved (the catalog says so):
    it may add approvals, never take back one a person gave. With `stop`, a lost approval fails at once."""
    day = (await ts_env.get_current_time()).date() + timedelta(days=2)
    rm = catalog_with(
        tmp_path,
        release_date=day.isoformat(),
        approved=False,
        unapproved=["sbstore", "frontend"],
        approval_policy={"unapproved": "stop"},
    )
    scans: list[ApprovalReport] = []

    @activity.defn
    async def gather_release_approval(release: ReleaseInfo) -> ApprovalReport:
        report = rm.gather_release_approval(release)
        scans.append(report)
        return report

    async with in_process_worker(ts_env, rm, replace=gather_release_approval) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, SCHEDULED)
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="alice", deploy="sbstore"))
        assert reply.approved == ["sbstore-1.0"] and reply.still_waiting == ["frontend-1.0"]
        # And the rest by signal: the release itself and frontend.
        await handle.signal("approve", Approval(approver="bob"))
        result = await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert scans == [ApprovalReport(release_approved=False, unapproved_deploys=[f"{KEY}:frontend", f"{KEY}:sbstore"])]
    assert result.status == "SUCCESS" and result.skipped == []
    assert state.approved_by == "bob"
    assert {d.container_id: d.approved_by for d in state.deploys} == {
        "frontend": "bob",
        "sbstore": "alice",
        "backendforfrontend": None,
    }
    assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
    approvals = sorted(
        (str(e["deploy_key"]), str(e["approver"])) for e in rm.ledger.entries() if e["step"] == "approve"
    )
    assert approvals == [(KEY, "bob"), (f"{KEY}:frontend", "bob"), (f"{KEY}:sbstore", "alice")]


# --- the update's validator, and the signal that cannot be refused ---


async def test_approving_a_skipped_deploy_is_refused(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = unapproved_sbstore(tmp_path, "skip")
    running, finish = asyncio.Event(), asyncio.Event()

    @activity.defn
    async def test(step: StepInput) -> StepResult:
        running.set()
        while not finish.is_set():  # keeps the release running while the test approves
            activity.heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finish.wait(), 1)
        return StepResult(artifact=(await asyncio.to_thread(rm.test, step)).artifact, attempt=1)

    async with in_process_worker(ts_env, rm, replace=test) as tq:
        handle = await start(ts_env, tq)
        await running.wait()
        for deploy in ("sbstore", f"{KEY}:sbstore"):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="carol", deploy=deploy))
            assert cause_of(err.value) == "sbstore-1.0 was skipped: start the release again to ship it"
        # Nothing else waits: a skipped deploy does not count as waiting.
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="carol"))
        assert cause_of(err.value) == f"release {KEY} is already approved: nothing waits for approval"
        await handle.signal("approve", Approval(approver="carol", deploy="sbstore"))
        finish.set()
        result = await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    assert not await has_event(handle, "workflow_execution_update_accepted_event_attributes")
    assert result.skipped == [f"{KEY}:sbstore"]
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    assert not sbstore.approved and sbstore.approved_by is None
    assert {c.status for c in sbstore.cells.values()} == {"skipped"}
    assert any(
        e.endswith("ignored an approval signal: sbstore-1.0 was skipped: start the release again to ship it")
        for e in state.events
    ), state.events
    assert [e for e in rm.ledger.entries() if e["step"] == "approve"] == []
    assert "sbstore-1.0" not in rm.contents("PROD")


async def test_approving_while_the_release_gathers_its_deploys_is_refused(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    gathering, gathered = asyncio.Event(), asyncio.Event()

    @activity.defn
    async def gather_deployments(release_key: str) -> ReleaseInfo:
        gathering.set()
        await gathered.wait()
        return rm.gather_deployments(release_key)

    async with in_process_worker(ts_env, rm, replace=gather_deployments) as tq:
        handle = await start(ts_env, tq)
        await gathering.wait()
        for approval in (Approval(approver="alice", deploy="sbstore"), Approval(approver="alice")):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(ReleaseWorkflow.approve, approval)
            assert cause_of(err.value) == f"release {KEY} is still gathering its deploys: try again in a moment"
        await handle.signal("approve", Approval(approver="alice", deploy="sbstore"))
        gathered.set()
        waiting = await until_status(handle, AWAITING_APPROVAL)
        assert not next(d for d in waiting.deploys if d.container_id == "sbstore").approved
        assert not await has_event(handle, "workflow_execution_update_accepted_event_attributes")
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="bob", deploy="sbstore"))
        assert reply.approved == ["sbstore-1.0"]
        await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    ignored = f"ignored an approval signal: release {KEY} is still gathering its deploys: try again in a moment"
    assert any(e.endswith(ignored) for e in state.events), state.events
    approvals = [(e["deploy_key"], e["approver"]) for e in rm.ledger.entries() if e["step"] == "approve"]
    assert approvals == [(f"{KEY}:sbstore", "bob")]


async def test_an_invalid_approval_signal_is_noted_in_the_events_and_changes_nothing(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = unapproved_sbstore(tmp_path, "hold")
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq)
        await until_status(handle, AWAITING_APPROVAL)
        await handle.signal("approve", Approval(approver="mallory", deploy="sbstor"))
        await handle.signal("approve", Approval(approver="\x1b[32mmallory", deploy="sbstore"))
        # An update after the signals: its reply shows they approved nothing.
        reply = await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="alice", deploy="sbstore"))
        assert reply.approved == ["sbstore-1.0"]
        await handle.result()
        state = await handle.query(ReleaseWorkflow.progress)
    noted = [e.split(" ", 1)[1] for e in state.events if "ignored an approval signal" in e]
    assert noted == [
        f"ignored an approval signal: release {KEY} has no deploy 'sbstor'; its deploys: "
        "frontend, sbstore, backendforfrontend",
        "ignored an approval signal: the approver's name holds control characters (newlines, escapes): use plain text",
    ]
    assert "mallory" not in "".join(state.events)  # what the signal carried is not kept
    approvals = [(e["deploy_key"], e["approver"]) for e in rm.ledger.entries() if e["step"] == "approve"]
    assert approvals == [(f"{KEY}:sbstore", "alice")]
