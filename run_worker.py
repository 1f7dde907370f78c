"""Runs a worker: it executes release workflows and their steps until Ctrl+C or SIGTERM.

Start as many as you like on one task queue; they share the work.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.worker import Worker

from activities import ReleaseActivities
from release_management import ReleaseError, ReleaseManagement
from shared import Settings
from utils import FailureInjector, SimulatedFailure, connect, connect_config, exit_now, load_env_file
from workflows import DeployWorkflow, ReleaseWorkflow

MAX_CONCURRENT_STEPS = 16
# Failures the demo expects: logged as one line each, not as a traceback.
EXPECTED_FAILURES = (SimulatedFailure, ReleaseError)


class OneLineExpectedFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, EXPECTED_FAILURES):
            where = getattr(record, "temporal_activity", {}).get("workflow_id", "")
            then = "Temporal retries it" if isinstance(err, SimulatedFailure) else "not retried"
            record.msg, record.args = "%s: %s (%s)", (where, err, then)
            record.exc_info = record.exc_text = None
        return True


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio.activity").addFilter(OneLineExpectedFailures())
    try:
        load_env_file()
        settings = Settings.from_env()
        target = connect_config()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        client = await connect(target)
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}); "
            "start a local server with `make server`, or set TEMPORAL_ADDRESS (see .env.example)",
            file=sys.stderr,
        )
        return 3
    rm = ReleaseManagement(settings.workspace, settings.catalog, settings.step_seconds)
    acts = ReleaseActivities(rm, FailureInjector(settings.failure_rate, settings.failure_seed))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_STEPS) as executor:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[ReleaseWorkflow, DeployWorkflow],
            activities=acts.all(),
            activity_executor=executor,
            max_concurrent_activities=MAX_CONCURRENT_STEPS,
            # Steps in flight get a moment to finish; any cut off are retried elsewhere.
            graceful_shutdown_timeout=timedelta(seconds=5),
        )
        async with worker:
            print(
                f"Worker ready: {target['target_host']} namespace {target['namespace']}, "
                f"task queue {settings.task_queue}, workspace {settings.workspace}, "
                f"failures {settings.failure_rate}, step {settings.step_seconds:g}s. Ctrl+C stops it.",
                flush=True,
            )
            await stop.wait()
            print("Worker stopping: letting steps in flight finish...", flush=True)
    print("Worker stopped.", flush=True)
    return 0


if __name__ == "__main__":
    exit_now(asyncio.run(main()))
