"""End to end on a real dev server: approve, cancel, status and list from the command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger import Ledger
from release_management import ReleaseManagement
from shared import AWAITING_APPROVAL, RUNNING, ReleaseState
from tests.conftest import CATALOG, target_of
from tests.steps import promote
from tests.support import WorkerProcess, run_script, script_env, task_queue
from workflows import ReleaseWorkflow

HOLD = "RELEASE-FEB-24-BETA-HOLD"


async def until_state(client: Client, key: str, tq: str, check: Callable[[ReleaseState], bool]) -> ReleaseState:
    """Wait until this test's run of the release (on its task queue) is in a state that passes check."""
    handle = client.get_workflow_handle(f"release-{key}")
    async with asyncio.timeout(60):
        while True:
            try:
                # An earlier test's finished run of the same key answers to no worker: skip it.
                if (await handle.describe()).task_queue == tq:
                    state = await handle.query(ReleaseWorkflow.progress, rpc_timeout=timedelta(seconds=2))
                    if check(state):
                        return state
            except RPCError:
                pass  # not started yet
            await asyncio.sleep(0.1)


async def listed(client: Client, query: str, count: int) -> list[str]:
    """Workflow ids matching a visibility query (visibility lags a little behind)."""
    async with asyncio.timeout(30):
        while len(ids := [w.id async for w in client.list_workflows(query)]) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return ids


@pytest.mark.slow(30)
async def test_a_held_release_finishes_once_approved_from_the_command_line(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="2")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        release = asyncio.create_task(run_script(["--release-key", HOLD], env))
        await until_state(dev_server.client, HOLD, env["RELEASE_TASK_QUEUE"], lambda s: s.status == AWAITING_APPROVAL)
        assert list((tmp_path / "environments").glob("*/*")) == []

        code, out = await run_script(["approve", HOLD, "--by", "alice", "--deploy", "nope"], env)
        assert code == 2 and out.strip().startswith(f"error: release {HOLD} has no deploy 'nope'"), out
        code, out = await run_script(["approve", HOLD, "--by", "alice", "--deploy", "sbstore"], env)
        assert code == 0 and out.strip() == "Approved by alice: sbstore-1.9; still waiting: nothing", out
        code, out = await run_script(["approve", HOLD, "--by", "bob", "--deploy", "sbstore"], env)
        assert (code, out.strip()) == (2, f"error: sbstore-1.9 in release {HOLD} is already approved by alice")

        code, out = await release
        assert code == 0 and f"Result: Release {HOLD}: SUCCESS" in out, out
        assert "approved by alice: sbstore-1.9" in out
        approvals = [e for e in Ledger(tmp_path / "ledger.jsonl").entries() if e["step"] == "approve"]
        assert [(a["deploy_key"], a["approver"]) for a in approvals] == [(f"{HOLD}:sbstore", "alice")]

        # The Web UI's list filters by these search attributes; so does the CLI and the API.
        # This test's run only: other tests on the shared server release the same key.
        tq = env["RELEASE_TASK_QUEUE"]
        query = f'ReleaseKey="{HOLD}" AND ReleaseStatus="SUCCESS" AND TaskQueue="{tq}"'
        assert await listed(dev_server.client, query, 1) == [f"release-{HOLD}"]
        code, out = await run_script(["status", HOLD], env)
        assert code == 0 and f"Release {HOLD}: SUCCESS" in out and "sbstore-1.9" in out, out
        code, out = await run_script(["list"], env)
        assert code == 0 and any(line.split() == [HOLD, "SUCCESS"] for line in out.splitlines()), out

        # Bad input: one line each, exit 2, nothing changes.
        for args, message in [
            (["approve", HOLD, "--by", "carol"], f"release {HOLD} is not running (its latest run is COMPLETED)"),
            (["cancel", HOLD], f"release {HOLD} is not running (its latest run is COMPLETED): nothing to cancel"),
            (["status", "RELEASE-NEVER"], "release RELEASE-NEVER was never started"),
            (["approve", "RELEASE-NEVER", "--by", "carol"], "release RELEASE-NEVER was never started"),
            (["approve", HOLD, "--by", " "], "the approver is empty: say who approves"),
        ]:
            code, out = await run_script(args, env)
            assert code == 2 and out.strip().startswith(f"error: {message}"), out
            assert len(out.strip().splitlines()) == 1, out
        applied = [e for e in Ledger(tmp_path / "ledger.jsonl").entries() if e["applied"]]
        assert len(applied) == 2 + 3 * 5  # who started it, the approval, 3 x (build + 2 x 2)
    finally:
        stopped = worker.stop_quietly()
    assert stopped == 0, (tmp_path / "worker.log").read_text()


async def test_cancel_from_the_command_line_reports_what_was_deployed(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    key = "RELEASE-JAN-24-ALPHA-QC"
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="2")
    # ALPHA-QC promotes what passed its tests in DEV: ALPHA-DEV's steps, run here first.
    promote(ReleaseManagement(tmp_path, CATALOG), "RELEASE-JAN-24-ALPHA-DEV", run="alpha-dev")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        release = asyncio.create_task(run_script(["--release-key", key], env))
        await until_state(
            dev_server.client,
            key,
            env["RELEASE_TASK_QUEUE"],
            lambda s: s.status == RUNNING and any(c.deployed for d in s.deploys for c in d.cells.values()),
        )
        code, out = await run_script(["cancel", key], env)
        assert code == 0 and f"Release {key}: CANCELLED (deployed before the cancel: " in out, out
        code, followed = await release
        assert code == 1 and f"Result: Release {key}: CANCELLED (deployed before the cancel: " in followed
    finally:
        stopped = worker.stop_quietly()  # an assert here would hide the failure that brought us here
    assert stopped == 0, (tmp_path / "worker.log").read_text()
    # Stopped between steps: once the cancel reached the release, no further step was scheduled
    # (the ones in flight may finish, so how far each got depends on the machine's speed).
    assert await steps_after_cancel(dev_server.client, f"release-{key}") == []
    # What the result says was deployed is what the environments hold, and no file is half there.
    said = followed.split("deployed before the cancel: ", 1)[1].split(")", 1)[0]
    rm = ReleaseManagement(tmp_path, CATALOG)
    held = {f"{artifact} → {env}" for env in ("TEST", "QC") for artifact in rm.contents(env)}
    # Each configuration deployed goes with an artifact that is there: a cancel never splits the pair.
    for env in ("TEST", "QC"):
        configs = sorted((tmp_path / "environments" / env / "config").glob("*.json"))
        assert sorted(json.loads(c.read_bytes())["artifact"] for c in configs) == rm.contents(env)
    claimed = {
        f"{artifact} → {env}"
        for artifact, envs in (part.split(" → ") for part in said.split("; "))
        for env in envs.split(", ")
    }
    assert held == claimed, f"the result says {said!r}; the environments hold {sorted(held)}"


async def steps_after_cancel(client: Client, workflow_id: str) -> list[str]:
    """The steps a release scheduled after its cancel request reached it, as its history records them."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    cancelled, later = False, []
    for e in history.events:
        cancelled = cancelled or e.HasField("workflow_execution_cancel_requested_event_attributes")
        if cancelled and e.activity_task_scheduled_event_attributes.activity_type.name in ("build", "deploy", "test"):
            later.append(e.activity_task_scheduled_event_attributes.activity_id)
    assert cancelled, "the release never received the cancel"
    return later
