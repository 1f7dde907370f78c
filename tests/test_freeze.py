"""Freeze windows: a durable wait with status FROZEN, the unfreeze override, and the windows' arithmetic."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import CatalogError
from orchestrator.freeze import frozen_until
from orchestrator.render import render_details, render_progress
from release_management import ReleaseManagement
from shared import FROZEN, HELD, SUCCESS, Decision, FreezeWindow, ReleaseState, Unfreeze
from tests.conftest import CATALOG, REPO, target_of
from tests.support import (
    WorkerProcess,
    eventually,
    in_process_worker,
    run_script,
    script_env,
    stopped_at_the_end,
    task_queue,
)
from tests.test_approvals import cause_of, start, until_status
from tests.test_first_minutes import Script
from utils import python_command
from workflows import ReleaseWorkflow

KEY = "RELEASE-NOV-23-INITIAL"


def frozen_catalog(tmp_path: Path, env: str, *windows: dict[str, str]) -> ReleaseManagement:
    catalog = json.loads(CATALOG.read_text())
    catalog["environments"][env]["freeze"] = list(windows)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return ReleaseManagement(tmp_path / "ws", path)


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def unfreeze_lines(rm: ReleaseManagement) -> list[dict[str, Any]]:
    return [e for e in rm.ledger.entries() if e.get("step") == "unfreeze"]


def deployed_to(rm: ReleaseManagement, env: str) -> list[str]:
    return sorted(
        f"{e['container']}-{e['version']}" for e in rm.ledger.entries() if e.get("step") == "deploy" and e["env"] == env
    )


async def test_a_release_waits_out_a_freeze_on_a_durable_timer(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    now = await ts_env.get_current_time()
    end = (now + timedelta(hours=50)).replace(microsecond=0)
    rm = frozen_catalog(
        tmp_path, "PROD", {"start": iso(now - timedelta(hours=1)), "end": iso(end), "reason": "year-end freeze"}
    )
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq, now=True)
        state = await until_status(handle, FROZEN)
        assert {d.cells["QC"].status for d in state.deploys} <= {"done", "running"}
        waits = [d.waiting_for for d in state.deploys if d.waiting_for]
        assert waits and all(
            w == f"the PROD freeze to end at {end:%Y-%m-%d %H:%M} UTC: year-end freeze" for w in waits
        ), waits
        assert "is waiting for the PROD freeze to end" in render_progress(state)
        # The Web UI's details say it too.
        assert "waits for the PROD freeze to end at" in render_details(state)
        assert render_details(state).startswith("**FROZEN**")
        assert deployed_to(rm, "PROD") == []
        result = await handle.result()  # the time-skipping server jumps to the window's end
        assert result.status == SUCCESS
        assert await ts_env.get_current_time() >= end
        assert deployed_to(rm, "PROD") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
        assert unfreeze_lines(rm) == []
        history = await handle.fetch_history()
        timers = [e for e in history.events if e.HasField("timer_started_event_attributes")]
        assert timers, "the freeze is waited out on a timer"


async def test_an_approver_unfreezes_one_release(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    now = await ts_env.get_current_time()
    rm = frozen_catalog(tmp_path, "QC", {"start": iso(now - timedelta(days=1)), "end": "2100-01-01T00:00:00Z"})
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq, now=True)
        await until_status(handle, FROZEN)
        with pytest.raises(WorkflowUpdateFailedError) as bad:
            await handle.execute_update(ReleaseWorkflow.unfreeze, Unfreeze(approver="  "))
        assert cause_of(bad.value) == "the approver is empty: say who unfreezes"
        assert unfreeze_lines(rm) == []
        reply = await handle.execute_update(ReleaseWorkflow.unfreeze, Unfreeze(approver="Ana"))
        assert (reply.environments, reply.status) == (["QC"], "RUNNING")
        result = await handle.result()
        assert result.status == SUCCESS
        # Well before the window's end: the override, not the timer, let it through.
        assert await ts_env.get_current_time() < datetime(2099, 1, 1, tzinfo=UTC)
        state = await handle.query(ReleaseWorkflow.progress)
        assert state.unfrozen_by == "Ana"
        assert "freeze overridden by Ana" in render_progress(state)
        [line] = unfreeze_lines(rm)
        assert (line["approver"], line["environments"], line["deploy_key"]) == ("Ana", ["QC"], KEY)
        assert deployed_to(rm, "PROD") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]


async def test_unfreeze_is_refused_when_nothing_is_frozen(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = ReleaseManagement(tmp_path / "ws", CATALOG)
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq, key="RELEASE-FEB-24-BETA-HOLD", now=True)
        await until_status(handle, "AWAITING_APPROVAL")
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(ReleaseWorkflow.unfreeze, Unfreeze(approver="Ana"))
        assert cause_of(err.value) == (
            "release RELEASE-FEB-24-BETA-HOLD is not frozen (AWAITING_APPROVAL): nothing waits for a freeze to end"
        )
        # A signal of the same name from the Web UI is checked alike, and ignored with a word in the events.
        await handle.signal("unfreeze", Unfreeze(approver=""))
        async with asyncio.timeout(10):
            while True:
                events = (await handle.query(ReleaseWorkflow.progress)).events
                if any("ignored an unfreeze signal: the approver is empty: say who unfreezes" in e for e in events):
                    break
                await asyncio.sleep(0.05)
        await handle.cancel()
    assert unfreeze_lines(rm) == []


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("now", "until"),
    [
        ("2026-12-04T15:59:59Z", None),  # Friday, a second before
        ("2026-12-04T16:00:00Z", "2026-12-07T08:00:00Z"),
        ("2026-12-06T23:00:00Z", "2026-12-07T08:00:00Z"),  # Sunday
        ("2026-12-07T07:59:59Z", "2026-12-07T08:00:00Z"),
        ("2026-12-07T08:00:00Z", None),  # Monday, the end itself is open again
        ("2026-12-09T12:00:00Z", None),
    ],
)
def test_a_weekly_window_runs_over_the_weekend(now: str, until: str | None) -> None:
    weekend = FreezeWindow(start="Fri 16:00", end="Monday 08:00", reason="weekend")
    found = frozen_until([weekend], at(now))
    assert (found[0] if found else None) == (at(until) if until else None)


def test_windows_that_meet_chain_and_the_first_gives_the_reason() -> None:
    weekend = FreezeWindow(start="Fri 16:00", end="Mon 08:00", reason="weekend")
    after = FreezeWindow(start="2026-12-07T08:00Z", end="2026-12-08T00:00Z", reason="migration")
    until, window = frozen_until([after, weekend], at("2026-12-05T10:00:00Z"))  # type: ignore[misc]
    assert (until, window.reason) == (at("2026-12-08T00:00:00Z"), "weekend")
    assert frozen_until([after, weekend], at("2026-12-08T00:00:00Z")) is None


@pytest.mark.parametrize(
    ("window", "message"),
    [
        (
            {"start": "2024-02-01T00:00Z", "end": "2024-01-01T00:00Z"},
            "environments.PROD.freeze[0]: the window ends (2024-01-01T00:00Z) before it starts (2024-02-01T00:00Z)",
        ),
        (
            {"start": "Fry 16:00", "end": "Mon 08:00"},
            "environments.PROD.freeze[0]: start 'Fry 16:00' is neither a date and time (2024-12-20T16:00Z) "
            "nor a weekly time (Fri 16:00)",
        ),
        (
            {"start": "Fri 16:00", "end": "2024-01-01T00:00Z"},
            "environments.PROD.freeze[0]: start and end must both be weekly times (Fri 16:00) or both dates and times",
        ),
    ],
)
def test_a_bad_window_fails_naming_file_and_field(tmp_path: Path, window: dict[str, str], message: str) -> None:
    rm = frozen_catalog(tmp_path, "PROD", window)
    with pytest.raises(CatalogError) as err:
        rm.gather_deployments(KEY)
    assert str(err.value) == f"release catalog {rm.catalog_path} is invalid: {message}"


FREEZE_KEY = "RELEASE-DEMO-FREEZE"


@pytest.mark.slow(15)
async def test_unfreeze_from_the_command_line(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    """examples/freeze.json as demos.md runs it: the starter's hint, status, unfreeze, and its exit codes."""
    env = script_env(
        target_of(dev_server), tmp_path, task_queue(), RELEASE_CATALOG=str(REPO / "examples" / "freeze.json")
    )
    with stopped_at_the_end([await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)]):
        starter = await Script(["--release-key", FREEZE_KEY], env).start()
        async with asyncio.timeout(60):
            while True:
                code, out = await run_script(["status", FREEZE_KEY], env)
                if out.startswith(f"Release {FREEZE_KEY}: FROZEN\n"):
                    break
                await asyncio.sleep(0.2)
        hint = f"{python_command()} run_workflow.py unfreeze {FREEZE_KEY} --by NAME"
        assert f"  override the freeze for this release with: {hint}\n" in out, out
        assert "frontend-2.0 is waiting for the PROD freeze to end at 2100-01-01 00:00 UTC" in out, out
        # The person following the release is told how to act before anyone acts.
        await starter.line(r"^  it waits for the freeze to end; ")
        code, out = await run_script(["unfreeze", FREEZE_KEY, "--by", " "], env)
        assert (code, out) == (2, "error: the approver is empty: say who unfreezes\n")
        code, out = await run_script(["unfreeze", FREEZE_KEY, "--by", "Ana"], env)
        assert (code, out) == (0, f"Unfrozen by Ana: release {FREEZE_KEY} promotes into PROD now (RUNNING)\n")
        code, out = await starter.result()
        assert code == 0 and out.splitlines()[-1] == f"Result: Release {FREEZE_KEY}: SUCCESS", out
        assert f"  it waits for the freeze to end; override it for this release with: {hint}\n" in out, out
        assert re.search(r"^  \d\d:\d\d:\d\d freeze of PROD overridden by Ana for this release$", out, re.M), out
        code, out = await run_script(["unfreeze", FREEZE_KEY, "--by", "Ana"], env)
        assert code == 2 and out.startswith(f"error: release {FREEZE_KEY} is not running"), out
    assert (tmp_path / "environments" / "PROD" / "frontend-2.0").is_file()


@pytest.mark.parametrize("while_it", ["tests in QC", "waits for the PROD lock"])
async def test_a_freeze_that_begins_while_a_deploy_waits_to_enter_is_honoured(
    tmp_path: Path, ts_env: WorkflowEnvironment, while_it: str
) -> None:
    """The window begins after the deploy last looked (its QC deploy), before it enters PROD: it waits it out.

    What keeps the deploy from PROD meanwhile is a failed check held for a person (on_failure hold): while it
    waits, no step runs, so the time-skipping server's clock can be moved past the window's beginning.
    """
    now = await ts_env.get_current_time()
    begins, ends = now + timedelta(minutes=2), now + timedelta(hours=3)
    rm = frozen_catalog(tmp_path, "PROD", {"start": iso(begins), "end": iso(ends), "reason": "it began meanwhile"})
    catalog = json.loads(rm.catalog_path.read_text())
    rm.catalog_path.write_text(json.dumps({**catalog, "default_on_failure": "hold"}))
    # tests in QC: the release's own QC checks fail and are held. waits for the PROD lock: a first release's PROD
    # checks fail and are held, with the PROD locks, while the watched one tests in QC and waits for them.
    held_in = "QC" if while_it == "tests in QC" else "PROD"
    check = "smoke" if held_in == "PROD" else "security"
    rm.failing_checks = frozenset((f"{c}-1.0", held_in, check) for c in ("frontend", "sbstore", "backendforfrontend"))
    async with in_process_worker(ts_env, rm) as tq:
        holder = await start(ts_env, tq, now=True)
        await eventually(lambda: all_held(holder))
        rm.failing_checks = frozenset()  # the fix, made outside; the retry below runs the checks again
        watched = await start(ts_env, tq, now=True) if held_in == "PROD" else holder
        if watched is not holder:
            await eventually(lambda: waits_for_prod(watched))
        assert await ts_env.get_current_time() < begins
        await ts_env.sleep(begins - await ts_env.get_current_time() + timedelta(seconds=30))
        for container in ("frontend", "sbstore", "backendforfrontend"):
            await holder.execute_update(ReleaseWorkflow.retry, Decision(approver="ana", deploy=container))
        assert (await watched.result()).status == SUCCESS
        history = await watched.fetch_history()
        await holder.result()
    qc = scheduled(history, "deploy", "QC")
    assert len(qc) == 3 and max(qc) < begins, f"QC deploys at {qc}, after the window began: the test proves nothing"
    prod = scheduled(history, "deploy", "PROD")
    assert len(prod) == 3 and min(prod) >= ends.replace(microsecond=0), f"PROD deploys at {prod}, in the window"


async def all_held(handle: WorkflowHandle) -> bool:
    state: ReleaseState = await handle.query(ReleaseWorkflow.progress)
    return state.status == HELD and sum(c.status == "held" for d in state.deploys for c in d.cells.values()) == 3


async def waits_for_prod(handle: WorkflowHandle) -> bool:
    """Every deploy tested in QC and waiting for PROD (the lock the first release owns)."""
    state: ReleaseState = await handle.query(ReleaseWorkflow.progress)
    return bool(state.deploys) and all(
        d.cells["QC"].status == "done" and d.cells["PROD"].status in ("pending", "waiting") for d in state.deploys
    )


def scheduled(history: Any, verb: str, env: str) -> list[datetime]:
    """When each step verb into env was scheduled, by the server's clock (the time-skipping one's)."""
    return [
        e.event_time.ToDatetime(tzinfo=UTC)
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_id.startswith(f"{verb} ")
        and e.activity_task_scheduled_event_attributes.activity_id.endswith(f" {env}")
    ]
