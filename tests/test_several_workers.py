"""Workers on several machines: separate processes sharing the workspace, the ledger in PostgreSQL, each killed
in turn, the Temporal server and the database each restarted once while a release runs; and releases racing
for one environment.

Effects are counted by an inotify observer in this process (tests/observer.py), outside the code under test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger_pg import PostgresLedger
from shared import ENVIRONMENTS, ReleaseRequest
from tests.conftest import CATALOG, RestartableServer, target_of
from tests.observer import LandingObserver
from tests.postgres import PostgresServer
from tests.support import WorkerProcess, run_script, script_env, stopped_at_the_end, task_queue, until
from workflows import ReleaseWorkflow

KEY = "RELEASE-NOV-23-INITIAL"
ARTIFACTS = ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
WATCHED = ["artifactory", *(f"environments/{env}" for env in ENVIRONMENTS)]


def applied_steps(ledger: PostgresLedger) -> list[tuple[object, ...]]:
    return [(e["deploy_key"], e["step"], e["env"]) for e in ledger.entries() if e.get("applied") and "container" in e]


@pytest.mark.slow(40)
async def test_workers_killed_in_turn_and_both_servers_restarted_lose_nothing(tmp_path: Path) -> None:
    temporal = RestartableServer(tmp_path / "dev.db")
    await temporal.start()
    server = PostgresServer.start()  # its own: this test restarts it
    try:
        url = server.new_database()
        ledger = PostgresLedger(url)
        workspace = tmp_path / "shared"
        for folder in WATCHED:
            (workspace / folder).mkdir(parents=True)
        env = script_env(temporal.target, workspace, task_queue(), DEMO_STEP_SECONDS="0.5", LEDGER_URL=url)
        progress = [0]

        async def moved_on() -> None:
            """Until the release has written more step lines since the last strike."""
            await until(lambda: len(applied_steps(ledger)) > progress[0], limit=120)
            progress[0] = len(applied_steps(ledger))

        with LandingObserver(workspace, WATCHED) as observer, stopped_at_the_end([]) as workers:
            workers += [WorkerProcess(env, tmp_path / f"worker{i}.log").start() for i in range(2)]
            release = asyncio.create_task(run_script(["--release-key", KEY, "--now"], env, limit=240))
            for turn in range(2):  # each worker killed once, a new one started in its place
                await moved_on()
                workers[turn].kill()
                workers.append(WorkerProcess(env, tmp_path / f"worker{turn + 2}.log").start())
            await moved_on()
            await temporal.stop()
            await asyncio.sleep(1.0)
            await temporal.start()
            await moved_on()
            server.stop()
            await asyncio.sleep(1.0)
            server.run()
            code, out = await release
        assert code == 0 and f"Result: Release {KEY}: SUCCESS" in out, out
        assert observer.problem is None, observer.problem
        landed = observer.counts()
        artifacts = [f"artifactory/{a}" for a in ARTIFACTS] + [
            f"environments/{e}/{a}" for e in ENVIRONMENTS for a in ARTIFACTS
        ]
        assert {path: landed.get(path, 0) for path in artifacts} == dict.fromkeys(artifacts, 1)
        steps = applied_steps(ledger)
        assert len(steps) == 27 == len(set(steps))  # one applied line per step, in the database
        assert ledger.verify().broken_at is None
        assert not (workspace / "ledger.jsonl").exists() and not list(workspace.glob("*.sqlite"))
    finally:
        server.remove()
        await temporal.stop()


@pytest.mark.slow(40)
async def test_eight_releases_racing_for_one_environment_leave_the_last_deploy_recorded(
    dev_server: WorkflowEnvironment, tmp_path: Path, ledger_url: str
) -> None:
    catalog = json.loads(CATALOG.read_text())
    versions = [f"2.{i}" for i in range(8)]
    catalog["releases"] = [
        {"release_key": f"RACE-{i}", "environments": ["DEV"], "versions": {"frontend": v}}
        for i, v in enumerate(versions)
    ]
    path = tmp_path / "race.json"
    path.write_text(json.dumps(catalog))
    workspace = tmp_path / "shared"
    env = script_env(
        target_of(dev_server), workspace, task_queue(), DEMO_STEP_SECONDS="0", LEDGER_URL=ledger_url,
        RELEASE_CATALOG=str(path),
    )  # fmt: skip
    with stopped_at_the_end([WorkerProcess(env, tmp_path / f"w{i}.log").start() for i in range(2)]):
        # Started at once by one client (eight starter processes would only cost CPU): the workers race.
        handles = await asyncio.gather(
            *(
                dev_server.client.start_workflow(
                    ReleaseWorkflow.run, ReleaseRequest(release_key=f"RACE-{i}", now=True), id=f"release-RACE-{i}",
                    task_queue=env["RELEASE_TASK_QUEUE"],
                )
                for i in range(8)
            )
        )  # fmt: skip
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 180)
    assert [r.status for r in results] == ["SUCCESS"] * 8
    ledger = PostgresLedger(ledger_url)
    deploys = [e for e in ledger.entries() if e.get("step") == "deploy" and e.get("applied")]
    held = sorted(p.name for p in (workspace / "environments" / "DEV").iterdir() if p.is_file())
    assert len(deploys) == 8 and held == [f"frontend-{deploys[-1]['version']}"]
    code, out = await run_script(["inventory", "--json"], env)
    assert json.loads(out)["DEV"]["frontend"]["version"] == deploys[-1]["version"], out
