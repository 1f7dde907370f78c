"""The chaos proof: kill workers and the server during a release; nothing is lost, nothing runs twice.

Real dev server, real worker and starter processes. `make chaos` runs this alone; the summary
line is printed at the end of the pytest run. CHAOS_SEED replays a run's kill timings.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from release_management import Ledger, build_content
from shared import ENVIRONMENTS
from tests.conftest import installed_binary
from tests.support import WorkerProcess, activity_starts, run_script, script_env, task_queue
from workflows import RELEASE_KEY, RELEASE_STATUS

KEY = "RELEASE-NOV-23-INITIAL"
ARTIFACTS = ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
WORKER_KILLS = int(os.environ.get("CHAOS_KILLS", "5"))


class RestartableServer:
    """A dev server on a fixed port that persists to a file, so it can be stopped and started again."""

    def __init__(self, db: Path) -> None:
        self.db = db
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.env: WorkflowEnvironment | None = None

    async def start(self) -> None:
        self.env = await WorkflowEnvironment.start_local(
            port=self.port,
            data_converter=pydantic_data_converter,
            dev_server_existing_path=installed_binary("temporal"),
            dev_server_database_filename=str(self.db),
            search_attributes=[RELEASE_KEY, RELEASE_STATUS],
        )

    async def stop(self) -> None:
        if self.env is not None:
            await self.env.shutdown()
            self.env = None

    @property
    def client(self) -> Client:
        assert self.env is not None
        return self.env.client


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RestartableServer]:
    srv = RestartableServer(tmp_path / "dev.db")
    await srv.start()
    yield srv
    await srv.stop()


async def test_release_survives_worker_kills_and_a_server_restart(
    server: RestartableServer, tmp_path: Path, proof_lines: list[str]
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1_000_000))
    rng = random.Random(seed)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = script_env(server.target, workspace, task_queue(), FAILURE_RATE="sometimes", DEMO_STEP_SECONDS="1.5")
    log = tmp_path / "worker.log"
    worker = await asyncio.to_thread(WorkerProcess(env, log).start)

    started = time.monotonic()
    release = asyncio.create_task(run_script(["--release-key", KEY], env, limit=900))
    kills = restarts = 0
    # Kill the worker at random moments, and restart the server once midway.
    while kills < WORKER_KILLS or restarts < 1:
        await asyncio.wait([release], timeout=rng.uniform(1.0, 3.0))
        if release.done():
            break
        if kills == WORKER_KILLS // 2 and restarts == 0:
            await server.stop()
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            await server.start()
            restarts += 1
        else:
            worker.kill()
            kills += 1
            worker = await asyncio.to_thread(WorkerProcess(env, log).start)
    code, out = await release
    wall = time.monotonic() - started
    assert worker.stop() == 0
    assert kills >= WORKER_KILLS and restarts == 1, f"the release ended before the chaos did (seed {seed})"

    assert code == 0, out
    assert f"Result: Release {KEY}: SUCCESS" in out

    release_info = {d.container_id: d for d in _catalog_deploys(workspace)}
    for name in ENVIRONMENTS:
        folder = workspace / "environments" / name
        assert sorted(p.name for p in folder.iterdir()) == ARTIFACTS, f"{name} (seed {seed})"
        for artifact in ARTIFACTS:
            expected = build_content(release_info[artifact.rsplit("-", 1)[0]], KEY)
            assert (folder / artifact).read_bytes() == expected, f"partial {name}/{artifact} (seed {seed})"

    entries = Ledger(workspace / "ledger.jsonl").entries()
    steps = [(e["run_id"], e["deploy_key"], e["step"], e["env"]) for e in entries]
    duplicates = len(steps) - len(set(steps))
    assert len({s[0] for s in steps}) == 1
    # One build per container, one deploy and one test per container and environment.
    assert len(set(steps)) == len(ARTIFACTS) * (1 + 2 * len(ENVIRONMENTS))
    assert duplicates == 0, f"duplicate side effects (seed {seed})"

    retries = sum(a.attempt - 1 for a in await activity_starts(server.client, f"release-{KEY}"))
    proof_lines.append(
        f"chaos proof: {kills} worker kills survived, {restarts} server restart survived, "
        f"{retries} retries seen, {duplicates} duplicate side effects, wall {wall:.1f}s (CHAOS_SEED={seed})"
    )


def _catalog_deploys(workspace: Path) -> list:
    from release_management import ReleaseManagement
    from tests.conftest import CATALOG

    return ReleaseManagement(workspace, CATALOG).gather_deployments(KEY).deploys
