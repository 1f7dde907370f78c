"""Every run_workflow.py command's exit codes and one-line messages, against a real dev server.

0: the command did what it says; 1: the release failed or was cancelled (for `cancel`: it ended
before the cancel took effect); 2: bad input, nothing changed; 3: Temporal cannot be reached,
or no worker polls the release's task queue. Bad worker settings: one line, exit 2, nothing started.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestrator.cli.diagnostics import worker_polls
from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE
from orchestrator.render import render_progress
from shared import Cell, DeployState, ReleaseState
from tests.conftest import REPO, installed_binary, target_of
from tests.support import WorkerProcess, run_patched, run_python, run_script, script_env, task_queue
from tests.test_first_minutes import Script, failures
from utils import python_command

ALPHA_DEV = "RELEASE-JAN-24-ALPHA-DEV"  # DEV only: nine quick steps
DEC_PROD = "RELEASE-DEC-2023-BUGFIXES-PROD"  # PROD only: fails at once in an empty workspace
HOLD = "RELEASE-FEB-24-BETA-HOLD"  # waits for an approval of sbstore
# With FAILURE_RATE=rarely, seed 3 fails "deploy sbstore-1.8 → DEV" once and no other step of ALPHA_DEV.
RETRY_SEED = 3


async def run_worker_script(env: dict[str, str]) -> tuple[int, str, str]:
    return await run_python([str(REPO / "run_worker.py")], env, 60, merge=False)


async def history_has(client: Client, workflow_id: str, field: str) -> bool:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return any(e.HasField(field) for e in history.events)


def row(out: str, artifact: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(f"{artifact} "))


def no_worker(out: str, tq: str) -> bool:
    """The one line that says no worker polls, with the command that starts one for this task queue."""
    lines = out.splitlines()
    return (
        len(lines) == 1
        and lines[0].startswith(f"error: no worker polls task queue {tq}: start one with `")
        and lines[0].endswith(" make worker` and try again; nothing was sent")
        and f" RELEASE_TASK_QUEUE={tq} " in lines[0]
    )


# --- render_progress: the retry counts that status shows ---


def test_the_table_shows_retries_per_cell() -> None:
    def cell(steps: int, attempts: int) -> Cell:
        return Cell(status="done", steps_done=steps, attempts=attempts)

    state = ReleaseState(
        release_key=ALPHA_DEV,
        status="SUCCESS",
        deploys=[
            DeployState(
                deploy_key=f"{ALPHA_DEV}:{name}",
                container_id=name,
                artifact=f"{name}-1.2",
                approved=True,
                cells={"DEV": cell(3, 3 + retries), "TEST": cell(2, 2)},
            )
            for name, retries in (("frontend", 0), ("sbstore", 1), ("backendforfrontend", 2))
        ],
    )
    table = render_progress(state)
    assert row(table, "frontend-1.2").split() == ["frontend-1.2", "done", "done"]
    assert row(table, "sbstore-1.2").split() == ["sbstore-1.2", "done", "+1", "retry", "done"]
    assert row(table, "backendforfrontend-1.2").split() == ["backendforfrontend-1.2", "done", "+2", "retries", "done"]


# --- start: finished, failed, cancelled; status with retries ---


async def test_start_exits_0_when_the_release_succeeds_and_1_when_it_fails(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    deploy = "deploy sbstore-1.8 → DEV"
    assert failures("rarely", RETRY_SEED, deploy, ALPHA_DEV) == 1
    env = script_env(target_of(dev_server), tmp_path, task_queue(), FAILURE_RATE="rarely", FAILURE_SEED=str(RETRY_SEED))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    await asyncio.to_thread(worker.start)
    try:
        # Two releases side by side: one that succeeds after a retry, one that fails.
        (code, out), (failed_code, failed_out) = await asyncio.gather(
            run_script(["--release-key", ALPHA_DEV], env), run_script(["--release-key", DEC_PROD], env)
        )
        assert code == 0 and out.splitlines()[-1] == f"Result: Release {ALPHA_DEV}: SUCCESS", out
        assert re.search(rf"^  \d\d:\d\d:\d\d {deploy} \(attempt 2\)$", out, re.M), out
        # Exit 1, and the root cause in the result line.
        assert failed_code == 1, failed_out
        # Every deploy refused at once, before any starts: nothing of the release reaches PROD.
        refused = "; ".join(
            f"cannot deploy {artifact} to PROD: it never passed its tests in QC"
            for artifact in ("frontend 1.1", "sbstore 1.7", "backendforfrontend 1.7")
        )
        assert (
            failed_out.splitlines()[-1]
            == f"Result: Release {DEC_PROD}: FAILED: NotVerified: {refused}; deployed: nothing"
        ), failed_out

        (code, out), (failed_code, failed_out) = await asyncio.gather(
            run_script(["status", ALPHA_DEV], env), run_script(["status", DEC_PROD], env)
        )
        # status: the cell whose step needed a second attempt says so; the others do not.
        assert code == 0 and out.startswith(f"Release {ALPHA_DEV}: SUCCESS\n"), out
        assert row(out, "sbstore-1.8").split() == ["sbstore-1.8", "done", "+1", "retry"], out
        assert row(out, "frontend-1.2").split() == ["frontend-1.2", "done"], out
        assert row(out, "backendforfrontend-1.8").split() == ["backendforfrontend-1.8", "done"], out
        assert failed_code == 0 and failed_out.startswith(f"Release {DEC_PROD}: FAILED (cannot deploy "), failed_out
    finally:
        stopped = worker.stop_quietly()
    assert stopped == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.slow(20)
async def test_no_worker_exits_3_and_says_so_then_a_cancel_ends_the_release(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    tq = task_queue()
    env = script_env(target_of(dev_server), tmp_path, tq)
    starter = await Script(["--release-key", HOLD], env).start()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        await starter.line(r"no worker polls task queue")
        # Only a worker can answer an update or carry out a cancel: say so at once, send nothing.
        for args in (["approve", HOLD, "--by", "alice"], ["cancel", HOLD]):
            code, out = await run_script(args, env)
            assert code == 3 and no_worker(out, tq), out
        workflow_id = f"release-{HOLD}"
        assert not await history_has(
            dev_server.client, workflow_id, "workflow_execution_cancel_requested_event_attributes"
        )
        assert not await history_has(
            dev_server.client, workflow_id, "workflow_execution_update_admitted_event_attributes"
        )

        await asyncio.to_thread(worker.start)
        await starter.line(r"approve with: ")
        code, out = await run_script(["cancel", HOLD], env)
        assert code == 0, out
        assert out.splitlines() == [
            f"Cancel requested: release {HOLD} stops once the steps in flight finish.",
            f"Release {HOLD}: CANCELLED (deployed before the cancel: nothing)",
        ]
        code, text = await starter.result()
        assert code == 1, text
        assert text.splitlines()[-1] == f"Result: Release {HOLD}: CANCELLED (deployed before the cancel: nothing)"
        # Nothing runs any more: a second cancel is bad input.
        code, out = await run_script(["cancel", HOLD], env)
        assert (code, out.strip()) == (
            2,
            f"error: release {HOLD} is not running (its latest run is CANCELLED): nothing to cancel",
        )
    finally:
        starter.kill()
        stopped = worker.stop_quietly() if worker.proc else 0
    assert stopped == 0


async def test_an_approval_nobody_answers_exits_3(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue())
    worker = WorkerProcess(env, tmp_path / "worker.log")
    await asyncio.to_thread(worker.start)
    starter = await Script(["--release-key", HOLD], env).start()
    try:
        await starter.line(r"approve with: ")
        # Killed: its poll stays listed for a while, so the script sends the update, and nobody answers.
        worker.kill()
        code, out = await run_patched(["approve", HOLD, "--by", "alice"], env, WORKER_ANSWER=2)
    finally:
        starter.kill()
        worker.kill()
    status = f"{python_command()} run_workflow.py status {HOLD}"
    assert code == 3, out
    assert out.splitlines() == [
        "error: the release did not answer within 2 s (its worker may be busy, or have just stopped); "
        f"the approval may still apply: check with `{status}`"
    ]


async def test_a_namespace_without_the_search_attributes_gets_a_note_and_still_works(tmp_path: Path) -> None:
    # A dev server started without ReleaseKey and ReleaseStatus registered.
    server = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=installed_binary("temporal")
    )
    try:
        env = script_env(target_of(server), tmp_path, task_queue())
        worker = WorkerProcess(env, tmp_path / "worker.log")
        await asyncio.to_thread(worker.start)
        try:
            code, out = await run_script(["--release-key", ALPHA_DEV], env)
            assert code == 0, out
            lines = out.splitlines()
            assert lines[0] == (
                "note: namespace default has no ReleaseKey/ReleaseStatus search attributes, so the Web UI "
                "cannot filter releases by them (setup.md says how to add them)"
            ), out
            assert lines[1].startswith(f"Release {ALPHA_DEV} started") and out.count("note:") == 1, out
            assert lines[-1] == f"Result: Release {ALPHA_DEV}: SUCCESS", out
            code, out = await run_script(["list"], env)
            assert code == 0 and any(line.split() == [ALPHA_DEV, "COMPLETED"] for line in out.splitlines()), out
        finally:
            stopped = worker.stop_quietly()
        assert stopped == 0
        desc = await server.client.get_workflow_handle(f"release-{ALPHA_DEV}").describe()
        assert desc.typed_search_attributes.get(RELEASE_KEY_ATTRIBUTE) is None
    finally:
        await server.shutdown()


@pytest.mark.slow(20)
async def test_a_server_that_goes_away_exits_3(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    target = target_of(dev_server)
    env = script_env(target, tmp_path, task_queue())
    # No worker: the release is certain to be running when the server goes.
    follower = asyncio.create_task(
        run_patched(["--release-key", ALPHA_DEV], env, RIDE_THROUGH_SECONDS=1, WORKER_ANSWER=1)
    )
    async with asyncio.timeout(60):
        while not follower.done():
            try:
                await dev_server.client.get_workflow_handle(f"release-{ALPHA_DEV}").describe()
                break
            except RPCError:
                await asyncio.sleep(0.1)  # not started yet
    assert not follower.done(), follower.result()
    await dev_server.shutdown()
    code, out = await follower
    assert code == 3, out
    lines = out.splitlines()
    assert f"Lost contact with Temporal at {target}; waiting for it to come back." in lines, out
    start = f"{python_command()} run_workflow.py --release-key {ALPHA_DEV}"
    assert lines[-1] == (
        f"Temporal at {target} is still unreachable. The release is safe in it: run `{start}` again to re-attach."
    ), out
    assert "Traceback" not in out and "Result:" not in out, out

    # Every command, with the server gone: one line, exit 3.
    commands = [["--release-key", ALPHA_DEV], ["status", ALPHA_DEV], ["approve", HOLD, "--by", "a"], ["cancel", HOLD]]
    commands.append(["list"])
    outcomes = await asyncio.gather(*(run_script(args, env, limit=60) for args in commands))
    for args, (code, out) in zip(commands, outcomes, strict=True):
        assert code == 3, (args, out)
        assert out.splitlines() == [
            f"error: cannot reach Temporal at {target} (namespace default). Start a local server and a worker "
            "with `make worker` (`make server` alone starts no worker), or set TEMPORAL_ADDRESS (see .env.example)."
        ], (args, out)


# A stand-in for a release that ends on its own however it is asked to stop: the cancel comes too late.
@workflow.defn(name="ReleaseWorkflow", sandboxed=False)
class EndsDespiteTheCancel:
    @workflow.run
    async def run(self, release: dict[str, Any]) -> dict[str, Any]:
        try:
            await workflow.wait_condition(lambda: False)
        except asyncio.CancelledError:
            if release["release_key"] == DEC_PROD:
                raise ApplicationError("cannot deploy frontend 1.1 to PROD", type="MissingArtifact") from None
        return {"release_key": release["release_key"], "status": "SUCCESS", "deploys": []}


async def test_a_cancel_the_release_outran_exits_1(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    tq = task_queue()
    env = script_env(target_of(dev_server), tmp_path, tq)
    async with Worker(dev_server.client, task_queue=tq, workflows=[EndsDespiteTheCancel]):
        for key in (ALPHA_DEV, DEC_PROD):
            await dev_server.client.start_workflow(
                "ReleaseWorkflow", {"release_key": key, "now": False}, id=f"release-{key}", task_queue=tq
            )
        finished, failed = await asyncio.gather(
            run_script(["cancel", ALPHA_DEV], env), run_script(["cancel", DEC_PROD], env)
        )
    assert finished == (
        1,
        f"Cancel requested: release {ALPHA_DEV} stops once the steps in flight finish.\n"
        f"Release {ALPHA_DEV} finished before the cancel took effect: SUCCESS\n",
    )
    assert failed == (
        1,
        f"Cancel requested: release {DEC_PROD} stops once the steps in flight finish.\n"
        f"Release {DEC_PROD} failed before the cancel took effect: "
        "MissingArtifact: cannot deploy frontend 1.1 to PROD\n",
    )


# --- the worker's settings ---


async def test_a_worker_with_bad_settings_says_so_in_one_line_and_starts_nothing(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    tq = task_queue()
    missing = tmp_path / "no-such.env"
    cases = [
        ({"FAILURE_RATE": "bogus"}, "FAILURE_RATE='bogus' is not one of never, rarely, sometimes, alot"),
        ({"FAILURE_SEED": "x1"}, "FAILURE_SEED='x1' is not a whole number"),
        ({"DEMO_STEP_SECONDS": "soon"}, "DEMO_STEP_SECONDS='soon' is not a number of seconds"),
        ({"DEMO_STEP_SECONDS": "-1"}, "DEMO_STEP_SECONDS='-1' must be between 0 and 3600"),
        ({"RELEASE_ENV_FILE": str(missing)}, f"RELEASE_ENV_FILE={str(missing)!r}: no such file"),
    ]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    runs = [run_worker_script(script_env(target_of(dev_server), workspace, tq, **bad)) for bad, _ in cases]
    results = await asyncio.gather(*runs)
    for (bad, message), (code, out, err) in zip(cases, results, strict=True):
        assert (code, out, err) == (2, "", f"error: {message}\n"), (bad, code, out, err)
    assert not await worker_polls(dev_server.client, tq)
    assert list(workspace.iterdir()) == []
    assert [w async for w in dev_server.client.list_workflows()] == []
