"""Runs a worker: it executes release workflows and their steps until Ctrl+C or SIGTERM.

Start as many as you like on one task queue; they share the work. `make worker` starts one
in the background; `--settings` prints the settings a worker would run with, in one line, and
`--check-running STATE` compares them with those of the worker make started (see the Makefile).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

try:
    from temporalio.exceptions import ApplicationError
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from activities import ReleaseActivities
    from locks import LockActivities, TargetLockWorkflow
    from release_management import ReleaseError, ReleaseManagement
    from shared import Settings
    from utils import FailureInjector, SimulatedFailure, connect, connect_config, exit_now, load_env_file
    from workflows import DeployWorkflow, ReleaseWorkflow
except ModuleNotFoundError as missing:
    # An interpreter without the project's dependencies (say the system python3): say how to
    # run the script instead of a traceback. A module of this project missing is a real bug.
    if (Path(__file__).resolve().parent / f"{(missing.name or '').partition('.')[0]}.py").exists():
        raise
    print(
        f"error: {sys.executable} lacks the project's dependencies (no module {missing.name!r}): "
        f"run `make install`, then `.venv/bin/python {shlex.join(['run_worker.py', *sys.argv[1:]])}` "
        "from the project root",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

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


# The settings a worker runs with, in a fixed order: `make worker` compares a running
# worker's (recorded in .temporal/worker.settings) with those an invocation asks for.
# Credentials are left out: they are not settings a person compares, and not for a log.
SETTING_NAMES = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "RELEASE_TASK_QUEUE",
    "RELEASE_WORKSPACE",
    "RELEASE_CATALOG",
    "FAILURE_RATE",
    "FAILURE_SEED",
    "DEMO_STEP_SECONDS",
)
# Fault hooks for tests and demos, and the metrics port, listed after the others only when set
# to other than their default, so the settings line of an ordinary worker reads as it always did.
OPTIONAL_DEFAULTS = {"FAILURE_AT": "start", "FAILURE_ACTION": "raise", "WORKER_METRICS_PORT": "", "FAILING_CHECKS": ""}
DEFAULT_STATE = ".temporal"


def settings_of(settings: Settings, target: dict) -> dict[str, str]:
    values = {
        "TEMPORAL_ADDRESS": target["target_host"],
        "TEMPORAL_NAMESPACE": target["namespace"],
        "RELEASE_TASK_QUEUE": settings.task_queue,
        "RELEASE_WORKSPACE": str(settings.workspace),
        "RELEASE_CATALOG": str(settings.catalog),
        "FAILURE_RATE": settings.failure_rate,
        "FAILURE_SEED": "" if settings.failure_seed is None else str(settings.failure_seed),
        "DEMO_STEP_SECONDS": f"{settings.step_seconds:g}",
    }
    optional = {
        "FAILURE_AT": ",".join(settings.failure_at),
        "FAILURE_ACTION": settings.failure_action,
        "WORKER_METRICS_PORT": "" if settings.metrics_port is None else str(settings.metrics_port),
        "FAILING_CHECKS": ",".join(sorted(":".join(c) for c in settings.failing_checks)),
    }
    return {name: values[name] for name in SETTING_NAMES} | {
        name: value for name, value in optional.items() if value != OPTIONAL_DEFAULTS[name]
    }


def settings_line(values: dict[str, str]) -> str:
    """One line, in shell syntax, so a part of it can be pasted in front of `make worker`."""
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in values.items())


def parse_settings_line(line: str) -> dict[str, str]:
    name_values = (part.partition("=") for part in shlex.split(line))
    return {name: value for name, _, value in name_values}


def check_running(state: str, wanted: dict[str, str]) -> int:
    """For `make worker` when a worker runs: one line; 1 when its settings differ from those wanted."""
    folder = Path(state)
    try:
        pid = (folder / "worker.pid").read_text().strip()
    except OSError:
        pid = "unknown"
    make = "make" if state == DEFAULT_STATE else f"make STATE={shlex.quote(state)}"
    try:
        running = parse_settings_line((folder / "worker.settings").read_text())
    except (OSError, ValueError):
        print(
            f"Worker already running (pid {pid}, log: {state}/worker.log); its settings are unknown "
            f"(it was started before make recorded them): `{make} stop-worker && {make} worker` restarts it "
            "with these"
        )
        return 0
    # A hook or metrics port left out of a settings line has its default value.
    running, wanted = OPTIONAL_DEFAULTS | running, OPTIONAL_DEFAULTS | wanted
    differ = [name for name in wanted if running.get(name) != wanted[name]]
    if not differ:
        print(f"Worker already running (pid {pid}, log: {state}/worker.log)")
        return 0
    had = settings_line({name: running.get(name, "") for name in differ})
    asked = settings_line({name: wanted[name] for name in differ})
    # An optional setting back to its default needs no word in the command (not FAILING_CHECKS='').
    restart = settings_line({n: wanted[n] for n in differ if OPTIONAL_DEFAULTS.get(n, wanted[n] + "x") != wanted[n]})
    print(
        f"Worker already running (pid {pid}) with {had}, not {asked} as asked: "
        f"restart it with `{make} stop-worker && {(restart + ' ') if restart else ''}{make} worker`"
    )
    return 1


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
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.settings:
        print(settings_line(settings_of(settings, target)))
        return 0
    if args.check_running:
        return check_running(args.check_running, settings_of(settings, target))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("temporalio.activity").addFilter(OneLineExpectedFailures())
    runtime = None
    if settings.metrics_port is not None:
        try:
            runtime = metrics_runtime(settings.metrics_port)
        except ValueError as e:  # the port is taken, or not ours to listen on
            reason = str(e).removeprefix("Failed starting Prometheus exporter: ")
            print(
                f"error: WORKER_METRICS_PORT={settings.metrics_port}: cannot serve metrics on "
                f"{METRICS_HOST}:{settings.metrics_port}: {reason}; choose another port, or unset it for no metrics",
                file=sys.stderr,
            )
            return 2
    try:
        client = await connect(target, runtime=runtime)
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}); "
            "start a local server with `make server`, or set TEMPORAL_ADDRESS (see .env.example)",
            file=sys.stderr,
        )
        return 3
    rm = ReleaseManagement(
        settings.workspace, settings.catalog, settings.step_seconds, failing_checks=settings.failing_checks
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

    with ThreadPoolExecutor(max_workers=MAX_CONCURRENT_STEPS) as executor:
        worker = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[ReleaseWorkflow, DeployWorkflow, TargetLockWorkflow],
            activities=[*acts.all(), *LockActivities(client).all()],
            activity_executor=executor,
            max_concurrent_activities=MAX_CONCURRENT_STEPS,
            workflow_runner=workflow_runner(),
            # Steps in flight get a moment to finish; any cut off are retried elsewhere.
            graceful_shutdown_timeout=timedelta(seconds=5),
        )
        async with worker:
            print(
                # The pid tells `make worker` this line is its worker's, not an earlier one's.
                f"Worker ready (pid {os.getpid()}): {target['target_host']} namespace {target['namespace']}, "
                f"task queue {settings.task_queue}, workspace {settings.workspace}, "
                f"failures {settings.failure_rate}{_hooks(settings)}, step {settings.step_seconds:g}s"
                f"{_metrics(settings)}. "
                "Ctrl+C stops it.",
                flush=True,
            )
            await stop.wait()
            print("Worker stopping: letting steps in flight finish...", flush=True)
    print("Worker stopped.", flush=True)
    return 0


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
