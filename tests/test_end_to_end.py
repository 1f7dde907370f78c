"""End to end: a real dev server, the real worker and starter scripts as a person runs them."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger import Ledger
from tests.conftest import target_of
from tests.support import WorkerProcess, run_script, script_env, task_queue
from tests.test_first_minutes import Script

# What each environment holds after each release, released in this order (the catalog's table).
V10 = ("1.0", "1.0", "1.0")
V11 = ("1.1", "1.7", "1.7")
V12 = ("1.2", "1.8", "1.8")
EXPECTED = [
    ("RELEASE-NOV-23-INITIAL", {"DEV": V10, "TEST": V10, "QC": V10, "PROD": V10}),
    ("RELEASE-NOV-23-HOTFIX-STAGE", {"DEV": V11, "TEST": V11, "QC": V11, "PROD": V10}),
    ("RELEASE-DEC-2023-BUGFIXES-PROD", {"DEV": V11, "TEST": V11, "QC": V11, "PROD": V11}),
    ("RELEASE-JAN-24-ALPHA-DEV", {"DEV": V12, "TEST": V11, "QC": V11, "PROD": V11}),
    ("RELEASE-JAN-24-ALPHA-QC", {"DEV": V12, "TEST": V12, "QC": V12, "PROD": V11}),
    ("RELEASE-JAN-24-ALPHA-PROD", {"DEV": V12, "TEST": V12, "QC": V12, "PROD": V12}),
    ("RELEASE-NOV-23-INITIAL", {"DEV": V10, "TEST": V10, "QC": V10, "PROD": V10}),
]


def files(versions: tuple[str, str, str]) -> list[str]:
    frontend, sbstore, bff = versions
    return sorted([f"frontend-{frontend}", f"sbstore-{sbstore}", f"backendforfrontend-{bff}"])


def contents(workspace: Path, env: str) -> list[str]:
    """The artifacts env holds; its config folder must name exactly these, one file per container."""
    folder = workspace / "environments" / env
    if not folder.exists():
        return []
    # Hidden: .rollback, where each deploy keeps what it replaces.
    held = sorted(p.name for p in folder.iterdir() if p.name != "config" and not p.name.startswith("."))
    configs = {p.name: json.loads(p.read_bytes()) for p in (folder / "config").iterdir()}
    assert {name: (c["artifact"], c["environment"]) for name, c in configs.items()} == {
        f"{artifact.rsplit('-', 1)[0]}.json": (artifact, env) for artifact in held
    }, f"{env}: the configuration does not go with the artifacts"
    return held


@pytest.fixture
def server(dev_server: WorkflowEnvironment) -> str:
    return target_of(dev_server)


@pytest.mark.slow(30)
async def test_six_releases_in_order_leave_the_environments_as_the_table_says(server: str, tmp_path: Path) -> None:
    # Seed 70 fails 5 of the 122 steps (gathers and approval checks included), one of them twice:
    # retries without minutes of backoff.
    env = script_env(server, tmp_path, task_queue(), FAILURE_RATE="rarely", FAILURE_SEED="70")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        for key, expected in EXPECTED:
            code, out = await run_script(["--release-key", key], env)
            assert code == 0, out
            assert f"Result: Release {key}: SUCCESS" in out
            for name, versions in expected.items():
                assert contents(tmp_path, name) == files(versions), f"{name} after {key}"
    finally:
        stopped = worker.stop_quietly()  # an assert here would hide the failure that brought us here
    assert stopped == 0, (tmp_path / "worker.log").read_text()
    entries = Ledger(tmp_path / "ledger.jsonl").entries()
    assert max(int(str(e["attempt"])) for e in entries) > 1  # steps were retried
    # Every run that deployed into an environment kept there what it replaced, per container: the last
    # (INITIAL again) the ALPHA versions, with the configuration that went with them.
    for name, before in EXPECTED[-2][1].items():
        kept = tmp_path / "environments" / name / ".rollback"
        runs = [e["run_id"] for e in entries if e["step"] == "deploy" and e["env"] == name]
        assert sorted(p.name for p in kept.iterdir()) == sorted(set(runs)), name
        last = kept / str(runs[-1])
        held = sorted(a.name for c in last.iterdir() for a in c.iterdir() if a.name != "config.json")
        assert held == files(before), name
        for container in last.iterdir():
            config = json.loads((container / "config.json").read_bytes())
            assert (config["container"], config["environment"]) == (container.name, name)
    assert "Worker stopped." in (tmp_path / "worker.log").read_text()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()


async def test_starting_a_running_release_attaches_to_it(
    server: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    dev_server_client = dev_server.client
    env = script_env(server, tmp_path, task_queue())
    key = "RELEASE-JAN-24-ALPHA-DEV"
    args = ["--release-key", key]
    first = asyncio.create_task(run_script(args, env))
    # No worker yet, so the release is certainly still running when the second start comes.
    await wait_for_workflow(dev_server_client, f"release-{key}", env["RELEASE_TASK_QUEUE"])
    second = await Script(args, env).start()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        # The worker comes only once the second start has found the first run and follows it.
        await second.line(rf"^Release {key} is already running; following it")
        await asyncio.to_thread(worker.start)
        (code1, out1), (code2, out2) = await asyncio.gather(first, second.result())
    finally:
        second.kill()
        if worker.proc is not None:
            worker.stop_quietly()
    assert code1 == code2 == 0, out1 + out2
    assert f"Result: Release {key}: SUCCESS" in out1 and f"Result: Release {key}: SUCCESS" in out2
    assert "already running" not in out1 and f"Release {key} started (workflow release-{key})." in out1
    assert f"Release {key} is already running; following it (workflow release-{key})." in out2, out2
    runs = {e["run_id"] for e in Ledger(tmp_path / "ledger.jsonl").entries()}
    assert len(runs) == 1


async def wait_for_workflow(client: Client, workflow_id: str, tq: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                desc = await client.get_workflow_handle(workflow_id).describe()
                if desc.task_queue == tq:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under root: its mode, modification time and content."""
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


async def test_unknown_key_is_refused_by_the_worker_in_seconds_and_changes_nothing(
    server: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    # A workspace with history: environments, an artifact, a ledger. The starter has no catalog: the worker's decides.
    workspace = tmp_path / "workspace"
    (workspace / "environments" / "DEV").mkdir(parents=True)
    (workspace / "environments" / "DEV" / "frontend-1.0").write_text("frontend-1.0")
    (workspace / "artifactory").mkdir()
    (workspace / "artifactory" / "frontend-1.0").write_text("frontend-1.0")
    (workspace / "ledger.jsonl").write_text('{"step": "build"}\n')
    env = script_env(server, workspace, task_queue())
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        before = snapshot(workspace)
        starter = {k: v for k, v in env.items() if k != "RELEASE_CATALOG"}
        # About 2.5 s alone, up to 7 s with 6 at once on 2 cores; past 10 s once under the full suite. A refusal
        # that were retried would take minutes (and its one try is counted below).
        code, out = await asyncio.wait_for(run_script(["--release-key", "RELEASE-NOPE"], starter), 30)
        after = snapshot(workspace)
    finally:
        stopped = worker.stop_quietly()
    assert stopped == 0, (tmp_path / "worker.log").read_text()
    assert code == 2, out
    assert out.strip().splitlines()[-1] == (
        "error: unknown release key 'RELEASE-NOPE'; known keys: RELEASE-NOV-23-INITIAL, "
        "RELEASE-NOV-23-HOTFIX-STAGE, RELEASE-DEC-2023-BUGFIXES-PROD, RELEASE-JAN-24-ALPHA-DEV, "
        "RELEASE-JAN-24-ALPHA-QC, RELEASE-JAN-24-ALPHA-PROD, RELEASE-FEB-24-BETA-HOLD"
    ), out
    assert "Traceback" not in out and "Result:" not in out, out
    assert after == before
    # The refusal is final: one failed run, its gather tried once.
    handle = dev_server.client.get_workflow_handle("release-RELEASE-NOPE")
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
    attempts = [
        e for e in (await handle.fetch_history()).events if e.HasField("activity_task_started_event_attributes")
    ]
    assert [e.activity_task_started_event_attributes.attempt for e in attempts] == [1]


async def test_no_server_says_how_to_start_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    env = script_env(f"127.0.0.1:{port}", tmp_path, task_queue())
    code, out = await run_script([], env)
    assert code == 3
    assert f"cannot reach Temporal at 127.0.0.1:{port}" in out and "make server" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
