"""Failure injection for the demo, and the Temporal client helpers the scripts share."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dotenv import load_dotenv

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.runtime import Runtime

from orchestrator.settings import FAILURE_ACTIONS, FAILURE_POINTS, FAILURE_RATES
from shared import REPO_ROOT


class SimulatedFailure(RuntimeError):
    """A transient fault, as a flaky network or a busy build farm would cause: worth retrying."""


class FailureInjector:
    """Fails a step with the probability of FAILURE_RATE: never, rarely, sometimes, alot.

    `at` names the points of a step where the rate applies (FAILURE_AT: start, midway, effect, end;
    see orchestrator/settings.py), each drawn on its own. `action` says what a strike does
    (FAILURE_ACTION): raise a SimulatedFailure, or exit, ending the worker process at once
    as if it were killed, wherever the step stands.

    With a seed the same step at the same attempt and point always fails or succeeds the
    same way, whatever order workers run steps in, so a failing run can be replayed.
    """

    def __init__(
        self, rate: str = "never", seed: int | None = None, at: Iterable[str] = ("start",), action: str = "raise"
    ) -> None:
        if rate not in FAILURE_RATES:
            raise ValueError(f"failure rate {rate!r} is not one of {', '.join(FAILURE_RATES)}")
        at = tuple(at)
        if unknown := [p for p in at if p not in FAILURE_POINTS]:
            raise ValueError(f"failure point {unknown[0]!r} is not one of {', '.join(FAILURE_POINTS)}")
        if action not in FAILURE_ACTIONS:
            raise ValueError(f"failure action {action!r} is not one of {', '.join(FAILURE_ACTIONS)}")
        self.rate = rate
        self.probability = FAILURE_RATES[rate]
        self.seed = seed
        self.at = frozenset(at)
        self.action = action

    def maybe_fail(self, what: str, attempt: int, key: str = "", point: str = "start") -> None:
        """Strike step `what` at `point` with the rate's probability; `key` further identifies it for the seed."""
        if self.probability <= 0 or point not in self.at:
            return
        seeded = self.seed is not None
        # The start point keeps the draw it always had, so a seed chosen before FAILURE_AT
        # existed still fails the same attempts.
        where = "" if point == "start" else f"|{point}"
        rng = random.Random(f"{self.seed}|{key}|{what}|{attempt}{where}") if seeded else random
        if rng.random() < self.probability:
            self.strike(f"simulated failure ({self.rate}){_AFTER[point]}: {what}, attempt {attempt}")

    def strike(self, message: str) -> None:
        if self.action == "exit":
            # As a kill would: no cleanup, no activity completion, no graceful shutdown. One
            # line first, so the worker's log says why it died.
            print(f"{message}: the worker exits ({EXIT_CODE}), as if killed", file=sys.stderr, flush=True)
            os._exit(EXIT_CODE)
        raise SimulatedFailure(message)


# How a failure's message says where it struck (a failure at start reads as it always did).
_AFTER = {
    "start": "",
    "midway": " between the artifact and its configuration",
    "effect": " after the effect, before the ledger line",
    "end": " after the ledger line",
}

# The exit code of a worker ended by FAILURE_ACTION=exit, so a test tells it from a crash.
EXIT_CODE = 86


# Variables that load_env_file took from the .env file. A hint that starts a worker repeats
# the other settings (the process's own), since a worker started by make reads .env itself.
_FROM_ENV_FILE: set[str] = set()


def load_env_file() -> None:
    """Load .env from the repo root, or the file RELEASE_ENV_FILE names ("" for none); set variables win."""
    named = os.environ.get("RELEASE_ENV_FILE")
    if named and not os.path.isfile(named):
        raise ValueError(f"RELEASE_ENV_FILE={named!r}: no such file")
    path = REPO_ROOT / ".env" if named is None else named
    if path:
        before = set(os.environ)
        load_dotenv(path)
        _FROM_ENV_FILE.update(set(os.environ) - before)


def python_command() -> str:
    """How to run this interpreter from the repo root, so a printed hint works as printed.

    `.venv/bin/python` when it is the repo's venv (a bare `python` would miss the project's
    dependencies unless the venv is active), `python` when that is this interpreter, else its path.
    """
    exe = Path(sys.executable)
    try:
        return str(exe.parent.resolve().relative_to(REPO_ROOT) / exe.name)
    except ValueError:
        pass
    on_path = shutil.which("python")
    if on_path and Path(on_path).resolve() == exe.resolve():
        return "python"
    return shlex.quote(str(exe))


def script_command(script: str, *args: str) -> str:
    """A command line that runs one of the project's scripts from the repo root."""
    return f"{python_command()} {shlex.join([script, *args])}"


# What decides where a worker polls and what it works on; secrets (an API key) are never repeated.
WORKER_VARIABLES = (
    "RELEASE_ENV_FILE",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "RELEASE_TASK_QUEUE",
    "RELEASE_WORKSPACE",
    "RELEASE_CATALOG",
)


def worker_command(task_queue: str | None = None) -> str:
    """The command that starts a worker for this process's settings: `make worker`, after the
    settings that came from the process environment rather than from .env (which make reads).

    task_queue: another task queue than this process's (a release that runs on another one).
    """
    values = {name: os.environ[name] for name in WORKER_VARIABLES if name in os.environ and name not in _FROM_ENV_FILE}
    if task_queue is not None:
        values["RELEASE_TASK_QUEUE"] = task_queue
    return " ".join([*(f"{name}={shlex.quote(value)}" for name, value in values.items()), "make worker"])


def connect_config() -> dict:
    """Connection settings from TEMPORAL_* variables and TOML profiles, as the temporal CLI reads them."""
    # Imported here, as in connect: the commands that read only the workspace start without temporalio.
    from temporalio.envconfig import ClientConfigProfile

    try:
        config = dict(ClientConfigProfile.load().to_client_connect_config())
    except Exception as e:  # the bridge raises its own ConfigError type
        raise ValueError(f"Temporal connection settings: {e}") from None
    config.setdefault("target_host", "localhost:7233")
    config.setdefault("namespace", "default")
    return config


async def connect(config: dict | None = None, quiet: bool = False, runtime: Runtime | None = None) -> Client:
    """A client with the pydantic data converter; quiet hides the SDK core's retry warnings.

    runtime: the SDK runtime to use (the worker's, when it serves metrics); quiet then has no effect.
    """
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter

    if quiet and runtime is None:
        errors_only = TelemetryFilter(core_level="ERROR", other_level="ERROR")
        runtime = Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=errors_only)))
    return await Client.connect(**(config or connect_config()), data_converter=pydantic_data_converter, runtime=runtime)


def exit_now(code: int) -> NoReturn:
    """Exit without interpreter teardown.

    temporalio issue #300: a process that used a client can abort during teardown
    (Fatal Python error: PyGILState_Release, exit 134) after its work succeeded.
    Skipping teardown once output is flushed makes the exit code the real outcome.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the reader has gone (`... | head -1`): what it did not take is not wanted
    os._exit(code)
