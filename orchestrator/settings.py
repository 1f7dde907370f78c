"""The worker's and the scripts' settings, read from the environment (and .env): one line for each bad value.

Plain Python, no temporalio.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.names import check_check_name, check_container_id, check_version, clip
from shared import ENVIRONMENTS, FAILING_CHECKS_MAX, REPO_ROOT, TASK_QUEUE

FAILURE_RATES: dict[str, float] = {"never": 0.0, "rarely": 0.1, "sometimes": 0.3, "alot": 0.6}
# Where in a step FAILURE_RATE strikes: before its work (start), once its effect is in place but
# not its ledger line (effect), or once the ledger line is written but the step has not returned
# (end). The last two make a retry run again a step whose effect is already applied.
# midway: between a deploy's two writes, its artifact in place and its configuration not yet.
FAILURE_POINTS = ("start", "midway", "effect", "end")
# What a strike does: raise a SimulatedFailure (retried), or end the worker process at once, as a kill would.
FAILURE_ACTIONS = ("raise", "exit")


# WORKER_VERSIONING: auto (Worker Versioning where the server has it; the worker makes its version current),
# manual (versioned; an operator makes a version current), off (unversioned). docs/design.md, Versioning.
VERSIONING_MODES = ("auto", "manual", "off")
DEFAULT_DEPLOYMENT = "release-orchestrator"
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")


@dataclass(frozen=True)
class Settings:
    task_queue: str
    workspace: Path
    catalog: Path
    failure_rate: str
    failure_seed: int | None
    step_seconds: float
    failure_at: tuple[str, ...] = ("start",)
    failure_action: str = "raise"
    # The port of the worker's Prometheus endpoint (WORKER_METRICS_PORT), on 127.0.0.1; None: no metrics.
    metrics_port: int | None = None
    # Quality-gate checks that fail (FAILING_CHECKS): (artifact, environment, check).
    failing_checks: frozenset[tuple[str, str, str]] = frozenset()
    # Worker Versioning (WORKER_VERSIONING, WORKER_DEPLOYMENT, WORKER_BUILD_ID); build_id None: from the code.
    versioning: str = "auto"
    deployment: str = DEFAULT_DEPLOYMENT
    build_id: str | None = None
    # The largest catalog a gather reads (RELEASE_CATALOG_MAX_BYTES).
    catalog_max_bytes: int = 1_000_000
    # The ledger's database (LEDGER_URL, postgresql://...); None: ledger.jsonl in the workspace.
    ledger_url: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        """Read settings from the process environment (scripts load .env first); ValueError names a bad one."""
        env = os.environ
        seed = env.get("FAILURE_SEED", "").strip()
        if seed and not seed.lstrip("-").isdigit():
            raise ValueError(f"FAILURE_SEED={seed!r} is not a whole number")
        port = env.get("WORKER_METRICS_PORT", "").strip()
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"WORKER_METRICS_PORT={clip(port)!r} is not a port number from 1 to 65535")
        return cls(
            task_queue=env.get("RELEASE_TASK_QUEUE") or TASK_QUEUE,
            workspace=Path(env.get("RELEASE_WORKSPACE") or REPO_ROOT).expanduser().resolve(),
            catalog=Path(env.get("RELEASE_CATALOG") or REPO_ROOT / "releases.json").expanduser().resolve(),
            failure_rate=_one_of("FAILURE_RATE", env.get("FAILURE_RATE", "rarely"), FAILURE_RATES),
            failure_seed=int(seed) if seed else None,
            step_seconds=_step_seconds(env.get("DEMO_STEP_SECONDS", "3").strip()),
            failure_at=parse_failure_at(env.get("FAILURE_AT", "")),
            failure_action=_one_of("FAILURE_ACTION", env.get("FAILURE_ACTION", "") or "raise", FAILURE_ACTIONS),
            metrics_port=int(port) if port else None,
            failing_checks=parse_failing_checks(env.get("FAILING_CHECKS", "")),
            versioning=_one_of("WORKER_VERSIONING", env.get("WORKER_VERSIONING", "") or "auto", VERSIONING_MODES),
            deployment=_named("WORKER_DEPLOYMENT", env.get("WORKER_DEPLOYMENT", ""), DEPLOYMENT_NAME)
            or default_deployment(env.get("RELEASE_TASK_QUEUE") or TASK_QUEUE),
            build_id=_named("WORKER_BUILD_ID", env.get("WORKER_BUILD_ID", ""), BUILD_ID) or None,
            catalog_max_bytes=_bytes("RELEASE_CATALOG_MAX_BYTES", env.get("RELEASE_CATALOG_MAX_BYTES", "1000000")),
            ledger_url=_ledger_url(env.get("LEDGER_URL", "").strip()),
        )


def _ledger_url(url: str) -> str | None:
    if not url:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"LEDGER_URL={clip(redacted(url))!r} is not a postgresql:// URL (unset it for ledger.jsonl)")
    return url


def redacted(url: str) -> str:
    """url with its password, if any, as ***: what logs and the settings line may show."""
    scheme, sep, rest = url.partition("://")
    credentials, at, place = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{place}"


def default_deployment(task_queue: str) -> str:
    """The worker deployment of a task queue: one per task queue, since a version becomes current for every
    queue its deployment serves. release-orchestrator for the default queue."""
    if task_queue == TASK_QUEUE:
        return DEFAULT_DEPLOYMENT
    name = re.sub(r"[^A-Za-z0-9_-]", "-", task_queue)[:60]
    if name != task_queue:
        name += "-" + hashlib.sha256(task_queue.encode()).hexdigest()[:8]  # two queues never share one by accident
    return f"{DEFAULT_DEPLOYMENT}-{name}"


def _one_of(name: str, value: str, allowed: Iterable[str]) -> str:
    value = value.strip().lower()
    if value not in allowed:
        raise ValueError(f"{name}={clip(value)!r} is not one of {', '.join(allowed)}")
    return value


def _named(name: str, value: str, pattern: re.Pattern[str]) -> str:
    value = value.strip()
    if value and not pattern.fullmatch(value):
        raise ValueError(
            f"{name}={clip(value)!r} is invalid: letters, digits, '_' and '-' (a build id: '.' and '+' too)"
        )
    return value


def _bytes(name: str, value: str) -> int:
    value = value.strip().replace("_", "")
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 100_000_000):
        raise ValueError(f"{name}={clip(value)!r} is not a number of bytes from 1 to 100000000")
    return int(value)


def _step_seconds(step: str) -> float:
    try:
        step_seconds = float(step)
    except ValueError:
        raise ValueError(f"DEMO_STEP_SECONDS={step!r} is not a number of seconds") from None
    if not 0 <= step_seconds <= 3600:
        raise ValueError(f"DEMO_STEP_SECONDS={step!r} must be between 0 and 3600")
    return step_seconds


def parse_failing_checks(value: str) -> frozenset[tuple[str, str, str]]:
    """FAILING_CHECKS: a comma list of <container>-<version>:<ENV>:<check>, as (artifact, ENV, check)."""
    items = [i.strip() for i in value.split(",") if i.strip()]
    if len(items) > FAILING_CHECKS_MAX:
        raise ValueError(f"FAILING_CHECKS names {len(items)} checks; the limit is {FAILING_CHECKS_MAX}")
    found = set()
    for item in items:
        form = (
            f"FAILING_CHECKS: {clip(item)!r} is not <container>-<version>:<ENV>:<check> (say sbstore-1.8:QC:security)"
        )
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 3 or "-" not in parts[0]:
            raise ValueError(form)
        artifact, env, check = parts[0], parts[1].upper(), parts[2]
        container, _, version = artifact.rpartition("-")
        try:
            check_container_id(container)
            check_version(version)
            check_check_name(check)
        except ValueError as e:
            raise ValueError(f"FAILING_CHECKS: {clip(item)!r}: {e}") from None
        if env not in ENVIRONMENTS:
            raise ValueError(
                f"FAILING_CHECKS: {clip(item)!r}: no environment {clip(parts[1])!r}; use {', '.join(ENVIRONMENTS)}"
            )
        found.add((artifact, env, check))
    return frozenset(found)


def parse_failure_at(value: str) -> tuple[str, ...]:
    """FAILURE_AT's points, in FAILURE_POINTS order without repeats; empty means start (the default)."""
    asked = [p.strip().lower() for p in value.split(",") if p.strip()] or ["start"]
    unknown = [p for p in asked if p not in FAILURE_POINTS]
    if unknown:
        raise ValueError(
            f"FAILURE_AT={clip(value)!r}: {clip(unknown[0])!r} is not one of {', '.join(FAILURE_POINTS)} "
            "(a comma list, say effect,end)"
        )
    return tuple(p for p in FAILURE_POINTS if p in asked)
