"""Builds and runs a worker: it executes release workflows and their steps until Ctrl+C or SIGTERM.

Start as many as you like on one task queue; they share the work. Each is a version of the worker deployment
(Worker Versioning, where the server has it: docs/design.md). `make worker` starts one in the background;
`--settings` prints the settings a worker would run with, in one line, and `--check-running STATE` compares
them with those of the worker make started (see the Makefile).
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    # Ctrl+C while the imports below run (and until main() takes it over) ends the script at once, before it has
    # started anything. Raised during imports, Python may deliver the KeyboardInterrupt inside a callback that
    # only prints it, and the script goes on.
    # (Started with Ctrl+C ignored, as a shell starts a background job, it stays ignored.)
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import argparse
import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

try:
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from activities import ReleaseActivities
    from orchestrator.catalog import check_failing_checks, load_catalog
    from orchestrator.errors import CatalogError, ReleaseError
    from orchestrator.ledger import open_ledger
    from orchestrator.locks import LockActivities, lock_workflows
    from orchestrator.settings import Settings, redacted
    from orchestrator.versioning import default_build_id, deployment_config, make_current, supported
    from orchestrator.worker_settings import check_running, settings_line, settings_of
    from release_management import ReleaseManagement
    from utils import FailureInjector, SimulatedFailure, connect, connect_config, exit_now, load_env_file
    from workflows import ReleaseWorkflow
except ModuleNotFoundError as missing:
    from orchestrator.dependencies import explain_missing

    explain_missing(missing, "run_worker.py")

MAX_CONCURRENT_STEPS = 16


def workflow_runner() -> SandboxedWorkflowRunner:
    """The workflow sandbox, with every module passed through instead of imported again for each run.

    It still refuses what breaks determinism in workflow code (the clock, random, I/O); what it
    no longer does is re-import modules per workflow run, and none of ours keeps state at module
    level. Measured with make bench's INITIAL release, in process: 1.45 s with the default
    sandbox, 1.1 s with this (1.0 s with no sandbox at all).
    """
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_all_modules())


# Where the SDK's metrics are served when WORKER_METRICS_PORT is set: this machine only.
METRICS_HOST = "127.0.0.1"
# Failures the demo expects: logged as one line each, not as a traceback.
EXPECTED_FAILURES = (SimulatedFailure, ReleaseError)


class OneLineExpectedFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        # A workspace fault (permissions, a full disk) is retried until a person fixes it.
        workspace = isinstance(err, ApplicationError) and err.type == "WorkspaceError"
        if isinstance(err, EXPECTED_FAILURES) or workspace:
            where = getattr(record, "temporal_activity", {}).get("workflow_id", "")
            then = "Temporal retries it" if isinstance(err, SimulatedFailure) or workspace else "not retried"
            record.msg, record.args = "%s: %s (%s)", (where, err, then)
            record.exc_info = record.exc_text = None
        return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_worker.py", description="Run a worker until Ctrl+C or SIGTERM.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--settings", action="store_true", help="print the settings a worker would run with; exit")
    which.add_argument(
        "--check-running",
        metavar="STATE",
        help="compare the settings of the worker that make started (pid and settings in folder STATE) with these",
    )
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        load_env_file()
        settings = Settings.from_env()
        target = connect_config()
        if settings.failing_checks:
            catalog = load_catalog(settings.catalog, settings.catalog_max_bytes)
            check_failing_checks(catalog, settings.failing_checks)
    except (ValueError, CatalogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    build_id = settings.build_id or default_build_id()
    if not (args.settings or args.check_running) and (problem := _ledger_problem(settings)) is not None:
        print(f"error: {problem[1]}", file=sys.stderr)
        return problem[0]
    if args.settings:
        print(settings_line(settings_of(settings, target, build_id)))
        return 0
    if args.check_running:
        return check_running(args.check_running, settings_of(settings, target, build_id))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio.activity").addFilter(OneLineExpectedFailures())
    try:
        client = await connect(
            target, runtime=metrics_runtime(settings.metrics_port) if settings.metrics_port else None
        )
    except ValueError as e:  # the metrics port is taken, or not ours to listen on
        reason = str(e).removeprefix("Failed starting Prometheus exporter: ")
        print(
            f"error: WORKER_METRICS_PORT={settings.metrics_port}: cannot serve metrics on "
            f"{METRICS_HOST}:{settings.metrics_port}: {reason}; choose another port, or unset it for no metrics",
            file=sys.stderr,
        )
        return 2
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}); "
            "start a local server with `make server`, or set TEMPORAL_ADDRESS (see .env.example)",
            file=sys.stderr,
        )
        return 3
    versioned = await _versioned(client, settings)
    if versioned is None:
        return 2
    return await serve(client, settings, target, build_id if versioned else None)


def _ledger(settings: Settings) -> str:
    return f", ledger {redacted(settings.ledger_url)}" if settings.ledger_url else ""


def _ledger_problem(settings: Settings) -> tuple[int, str] | None:
    """With LEDGER_URL: the database reached and its schema migrated to this code's; else (exit code, line)."""
    if settings.ledger_url is None:
        return None
    ledger = open_ledger(settings.workspace, settings.ledger_url)
    try:
        ledger.migrate()
    except OSError as e:  # LedgerUnavailable: the server is away, or refused the connection
        return 3, f"{e}; start it, or unset LEDGER_URL for ledger.jsonl"
    except ValueError as e:  # SchemaMismatch: a newer worker migrated it
        return 2, str(e)
    return None


async def _versioned(client: Client, settings: Settings) -> bool | None:
    """Whether this worker runs as a worker version; None (said in one line) if it must and cannot."""
    if settings.versioning == "off":
        return False
    if await supported(client, settings.deployment):
        return True
    if settings.versioning == "manual":
        print(
            f"error: WORKER_VERSIONING=manual: namespace {client.namespace} has no Worker Versioning; "
            "enable it on the server, or set WORKER_VERSIONING=auto (or off)",
            file=sys.stderr,
        )
        return None
    print(f"note: namespace {client.namespace} has no Worker Versioning: this worker runs unversioned", flush=True)
    return False


async def serve(client: Client, settings: Settings, target: dict, build_id: str | None) -> int:
    """Run the worker until Ctrl+C or SIGTERM; build_id None: unversioned."""
    rm = ReleaseManagement(
        settings.workspace,
        settings.catalog,
        settings.step_seconds,
        failing_checks=settings.failing_checks,
        catalog_max_bytes=settings.catalog_max_bytes,
        ledger_url=settings.ledger_url,
    )
    failures = FailureInjector(
        settings.failure_rate, settings.failure_seed, at=settings.failure_at, action=settings.failure_action
    )
    # The activities hook the injector into the steps too, for FAILURE_AT=midway and effect.
    acts = ReleaseActivities(rm, failures)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    versioning: dict[str, Any] = (
        {} if build_id is None else {"deployment_config": deployment_config(settings.deployment, build_id)}
    )
    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_STEPS) as executor:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[ReleaseWorkflow, *lock_workflows(versioned=build_id is not None)],
            activities=[*acts.all(), *LockActivities(client).all()],
            activity_executor=executor,
            max_concurrent_activities=MAX_CONCURRENT_STEPS,
            workflow_runner=workflow_runner(),
            # Steps in flight get a moment to finish; any cut off are retried elsewhere.
            graceful_shutdown_timeout=timedelta(seconds=5),
            **versioning,
        )
        async with worker:
            if build_id is not None:
                print(await _take_over(client, settings, build_id), flush=True)
            print(
                # The pid tells `make worker` this line is its worker's, not an earlier one's.
                f"Worker ready (pid {os.getpid()}): {target['target_host']} namespace {target['namespace']}, "
                f"task queue {settings.task_queue}, workspace {settings.workspace}{_ledger(settings)}, "
                f"failures {settings.failure_rate}{_hooks(settings)}, step {settings.step_seconds:g}s"
                f"{_metrics(settings)}. "
                "Ctrl+C stops it.",
                flush=True,
            )
            await stop.wait()
            print("Worker stopping: letting steps in flight finish...", flush=True)
    print("Worker stopped.", flush=True)
    return 0


async def _take_over(client: Client, settings: Settings, build_id: str) -> str:
    """This worker's version made current when WORKER_VERSIONING=auto (unless a newer one is); a line about it."""
    name = f"Worker version {settings.deployment} {build_id}"
    if settings.versioning == "manual":
        return f"{name}: new releases go to the deployment's current version (WORKER_VERSIONING=manual)"
    if await make_current(client, settings.deployment, build_id) == "superseded":
        return f"{name}: older than the current one; it runs the releases pinned to it, new ones go to the current"
    return f"{name}: current, new releases start on it"


def metrics_runtime(port: int) -> Runtime:
    """A runtime whose clients and workers report the SDK's metrics, served for Prometheus on port.

    Durations are in milliseconds, the SDK's default, as Temporal's Grafana dashboard for the
    Core-based SDKs expects. ValueError when the port cannot be listened on (taken, privileged).
    """
    prometheus = PrometheusConfig(bind_address=f"{METRICS_HOST}:{port}")
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


def metrics_url(port: int) -> str:
    return f"http://{METRICS_HOST}:{port}/metrics"


def _metrics(settings: Settings) -> str:
    """Where the metrics are served, for the ready line; nothing when they are not."""
    return "" if settings.metrics_port is None else f", metrics {metrics_url(settings.metrics_port)}"


def _hooks(settings: Settings) -> str:
    """Where failures strike and what they do, for the ready line; nothing when it is the default."""
    at = "" if settings.failure_at == ("start",) else f" at {','.join(settings.failure_at)}"
    action = "" if settings.failure_action == "raise" else f" ({settings.failure_action})"
    return at + action


if __name__ == "__main__":
    exit_now(asyncio.run(main(sys.argv[1:])))
