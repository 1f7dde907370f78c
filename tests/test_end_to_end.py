"""End to end: a real dev server, the real worker and starter scripts as a person runs them."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from release_management import Ledger
from tests.conftest import target_of
from tests.support import WorkerProcess, run_script, script_env, task_queue

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
    folder = workspace / "environments" / env
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def server(dev_server: WorkflowEnvironment) -> str:
    return target_of(dev_server)


async def test_six_releases_in_order_leave_the_environments_as_the_table_says(server: str, tmp_path: Path) -> None:
    env = script_env(server, tmp_path, task_queue(), FAILURE_RATE="sometimes", FAILURE_SEED="3")
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        for key, expected in EXPECTED:
            code, out = await run_script(["--release-key", key], env)
            assert code == 0, out
            assert f"Result: Release {key}: SUCCESS" in out
            for name, versions in expected.items():
                assert contents(tmp_path, name) == files(versions), f"{name} after {key}"
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()
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
    second = asyncio.create_task(run_script(args, env))
    await asyncio.sleep(0)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        outputs = await asyncio.gather(first, second, asyncio.to_thread(worker.start))
    finally:
        worker.stop()
    (code1, out1), (code2, out2), _ = outputs
    assert code1 == code2 == 0, out1 + out2
    assert f"Result: Release {key}: SUCCESS" in out1 and f"Result: Release {key}: SUCCESS" in out2
    assert "already running" in out1 + out2
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


async def test_unknown_key_fails_in_seconds_and_changes_nothing(server: str, tmp_path: Path) -> None:
    env = script_env(server, tmp_path, task_queue())
    code, out = await asyncio.wait_for(run_script(["--release-key", "RELEASE-NOPE"], env), 10)
    assert code == 2
    assert out.strip().splitlines() == [
        "error: unknown release key 'RELEASE-NOPE'; known keys: RELEASE-NOV-23-INITIAL, "
        "RELEASE-NOV-23-HOTFIX-STAGE, RELEASE-DEC-2023-BUGFIXES-PROD, RELEASE-JAN-24-ALPHA-DEV, "
        "RELEASE-JAN-24-ALPHA-QC, RELEASE-JAN-24-ALPHA-PROD, RELEASE-FEB-24-BETA-HOLD"
    ]
    assert list(tmp_path.iterdir()) == []


async def test_no_server_says_how_to_start_one(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    env = script_env(f"127.0.0.1:{port}", tmp_path, task_queue())
    code, out = await run_script([], env)
    assert code == 3
    assert f"cannot reach Temporal at 127.0.0.1:{port}" in out and "make server" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
