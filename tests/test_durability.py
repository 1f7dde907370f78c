"""Workers come and go: a fleet shares the work, and Ctrl+C or SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger import Ledger
from tests.conftest import target_of
from tests.support import (
    WorkerProcess,
    activity_starts,
    run_script,
    script_env,
    stopped_at_the_end,
    task_queue,
    until,
)

KEY = "RELEASE-NOV-23-INITIAL"
STEPS = 27  # 3 containers x (1 build + 4 deploys + 4 tests)


def unique_steps(ledger: Ledger) -> tuple[int, int]:
    """(step lines that applied an effect, distinct steps): equal when no effect was applied twice."""
    keys = [
        (e["run_id"], e["deploy_key"], e["step"], e["env"])
        for e in ledger.entries()
        if e["applied"] and "container" in e
    ]
    return len(keys), len(set(keys))


@pytest.mark.slow(20)
async def test_a_fleet_shares_the_work_and_one_survivor_finishes(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="0.5")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    with stopped_at_the_end([]) as workers:
        workers += [WorkerProcess(env, tmp_path / f"worker{i}.log").start() for i in range(3)]
        release = asyncio.create_task(run_script(["--release-key", KEY], env))
        await until(lambda: len(ledger.entries()) >= 6)
        for worker in workers[:2]:
            worker.kill()
        code, out = await release
        survivor_exit = workers[2].stop()
    assert code == 0 and f"Result: Release {KEY}: SUCCESS" in out, out
    assert survivor_exit == 0, (tmp_path / "worker2.log").read_text()
    identities = {a.identity for a in await activity_starts(dev_server.client, f"release-{KEY}")}
    assert len(identities) >= 2, "the work should have been spread over the fleet"
    assert unique_steps(ledger) == (STEPS, STEPS)


@pytest.mark.slow(15)
async def test_ctrl_c_stops_a_worker_cleanly_and_the_next_one_finishes(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="2")
    log = tmp_path / "worker.log"
    ledger = Ledger(tmp_path / "ledger.jsonl")
    # Plain workers: the Ctrl+C proven here is sent to the worker itself, not passed on by a warm launcher.
    with stopped_at_the_end([WorkerProcess(env, log, warm=False).start()]) as workers:
        release = asyncio.create_task(run_script(["--release-key", "RELEASE-JAN-24-ALPHA-DEV"], env))
        await until(lambda: any("container" in e for e in ledger.entries()))  # steps are in flight
        # Within its 5 s of grace for the steps in flight, and some for a busy machine; stop() raises after 30 s.
        assert await asyncio.to_thread(workers[0].stop) == 0
        text = log.read_text()
        assert "Worker stopped." in text and "Traceback" not in text, text
        assert not release.done()
        workers.append(WorkerProcess(env, log, warm=False).start())
        code, out = await release
        replacement_exit = workers[1].stop()
    assert code == 0, out
    assert replacement_exit == 0, log.read_text()
    # DEV only: a build, a deploy and a test per container, each once.
    assert unique_steps(ledger) == (9, 9)
