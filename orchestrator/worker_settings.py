"""The settings line of a worker: what `run_worker.py --settings` prints and `make worker` compares with the
worker it started, so a worker asked for other settings says so instead of silently going on with the old.

Credentials are never in it: they are not settings a person compares, and not for a log.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from orchestrator.settings import Settings, default_deployment, redacted

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
    "WORKER_BUILD_ID",
)
# Fault hooks for tests and demos, and the metrics port, listed after the others only when set
# to other than their default, so the settings line of an ordinary worker reads as it always did.
OPTIONAL_DEFAULTS = {
    "FAILURE_AT": "start",
    "FAILURE_ACTION": "raise",
    "WORKER_METRICS_PORT": "",
    "FAILING_CHECKS": "",
    "WORKER_VERSIONING": "auto",
    "WORKER_DEPLOYMENT": "",
    "LEDGER_URL": "",
}
# Derived from the code unless set: a restart picks the new value up by itself, so a hint never repeats it.
DERIVED = ("WORKER_BUILD_ID",)
DEFAULT_STATE = ".temporal"


def settings_of(settings: Settings, target: dict, build_id: str) -> dict[str, str]:
    """The settings line's values; build_id: the worker's (WORKER_BUILD_ID, or the one its code gives)."""
    values = {
        "TEMPORAL_ADDRESS": target["target_host"],
        "TEMPORAL_NAMESPACE": target["namespace"],
        "RELEASE_TASK_QUEUE": settings.task_queue,
        "RELEASE_WORKSPACE": str(settings.workspace),
        "RELEASE_CATALOG": str(settings.catalog),
        "FAILURE_RATE": settings.failure_rate,
        "FAILURE_SEED": "" if settings.failure_seed is None else str(settings.failure_seed),
        "DEMO_STEP_SECONDS": f"{settings.step_seconds:g}",
        "WORKER_BUILD_ID": build_id,
    }
    optional = {
        "FAILURE_AT": ",".join(settings.failure_at),
        "FAILURE_ACTION": settings.failure_action,
        "WORKER_METRICS_PORT": "" if settings.metrics_port is None else str(settings.metrics_port),
        "FAILING_CHECKS": ",".join(sorted(":".join(c) for c in settings.failing_checks)),
        "WORKER_VERSIONING": settings.versioning,
        # Shown only when set: by default it follows the task queue (settings.default_deployment).
        "WORKER_DEPLOYMENT": ""
        if settings.deployment == default_deployment(settings.task_queue)
        else settings.deployment,
        # Its password never shown: libpq reads PGPASSWORD or ~/.pgpass, which the settings line leaves out.
        "LEDGER_URL": redacted(settings.ledger_url or ""),
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
    # An optional setting back to its default needs no word in the command (not FAILING_CHECKS=''), nor a derived one.
    restart = settings_line(
        {n: wanted[n] for n in differ if n not in DERIVED and OPTIONAL_DEFAULTS.get(n, wanted[n] + "x") != wanted[n]}
    )
    print(
        f"Worker already running (pid {pid}) with {had}, not {asked} as asked: "
        f"restart it with `{make} stop-worker && {(restart + ' ') if restart else ''}{make} worker`"
    )
    return 1
