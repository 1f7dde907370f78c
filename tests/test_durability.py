"""Workers come and go: a fleet shares the work, and Ctrl+C or SIGKILL loses nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from release_management import Ledger
from tests.conftest import target_of
from tests.support import WorkerProcess, activity_starts, run_script, script_env, task_queue, until

KEY = "RELEASE-NOV-23-INITIAL"
STEPS = 27  # 3 containers x (1 build + 4 deploys + 4 tests)


def unique_steps(ledger: Ledger) -> tuple[int, int]:
    """(lines that applied an effect, distinct steps): equal when no effect was applied twice."""
    keys = [(e["run_id"], e["deploy_key"], e["step"], e["env"]) for e in ledger.entries() if e["applied"]]
    return len(keys), len(set(keys))


async def test_a_fleet_shares_the_work_and_one_survivor_finishes(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="1")
    workers = [WorkerProcess(env, tmp_path / f"worker{i}.log").start() for i in range(3)]
    ledger = Ledger(tmp_path / "ledger.jsonl")
    release = asyncio.create_task(run_script(["--release-key", KEY], env))
    await until(lambda: len(ledger.entries()) >= 6)
    for worker in workers[:2]:
        worker.kill()
    code, out = await release
    assert workers[2].stop() == 0
    assert code == 0 and f"Result: Release {KEY}: SUCCESS" in out, out
    identities = {a.identity for a in await activity_starts(dev_server.client, f"release-{KEY}")}
    assert len(identities) >= 2, "the work should have been spread over the fleet"
    assert unique_steps(ledger) == (STEPS, STEPS)


async def test_ctrl_c_stops_a_worker_cleanly_and_the_next_one_finishes(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="2")
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log).start()
    ledger = Ledger(tmp_path / "ledger.jsonl")
    release = asyncio.create_task(run_script(["--release-key", "RELEASE-JAN-24-ALPHA-DEV"], env))
    await until(lambda: len(ledger.entries()) >= 1)  # steps are in flight
    began = time.monotonic()
    assert await asyncio.to_thread(worker.stop) == 0
    assert time.monotonic() - began < 10
    text = log.read_text()
    assert "Worker stopped." in text and "Traceback" not in text, text
    assert not release.done()
    replacement = WorkerProcess(env, log).start()
    code, out = await release
    assert replacement.stop() == 0
    assert code == 0, out
    # DEV only: a build, a deploy and a test per container, each once.
    assert unique_steps(ledger) == (9, 9)
