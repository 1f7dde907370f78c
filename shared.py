"""Data types, the environment pipeline and settings shared by worker, workflows and scripts.

Plain Python: no temporalio import, so release_management.py can use it too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

# Promotion order: each environment takes its artifact from the one before it,
# DEV from the artifactory.
ENVIRONMENTS: tuple[str, ...] = ("DEV", "TEST", "QC", "PROD")
Environment = Literal["DEV", "TEST", "QC", "PROD"]

TASK_QUEUE = "release-task-queue"
DEFAULT_RELEASE_KEY = "RELEASE-NOV-23-INITIAL"
REPO_ROOT = Path(__file__).resolve().parent

# Artifacts are files named "<container_id>-<version>", so a version holds no "-"
# and starts with a digit: the name then splits back unambiguously at its last "-".
CONTAINER_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?$")
VERSION = re.compile(r"^[0-9][A-Za-z0-9._+]{0,31}$")
RELEASE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def release_workflow_id(release_key: str) -> str:
    return f"release-{release_key}"


def _check(value: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not pattern.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is invalid: {rule}")
    return value


def check_release_key(key: str) -> str:
    return _check(key, RELEASE_KEY, "release key", "use letters, digits, '.', '_' and '-'")


class DeployInfo(BaseModel):
    """One container at one version, promoted through consecutive environments."""

    deploy_key: str = Field(min_length=1)
    container_id: str
    version: str
    git_url: str = Field(min_length=1)
    environments: list[Environment] = Field(min_length=1)
    approved: bool = True

    @field_validator("container_id")
    @classmethod
    def _container_id(cls, v: str) -> str:
        return _check(v, CONTAINER_ID, "container id", "use lowercase letters, digits, '.', '_' and '-'")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return _check(v, VERSION, "version", "start with a digit; letters, digits, '.', '_', '+'")

    @model_validator(mode="after")
    def _consecutive_environments(self) -> DeployInfo:
        # A promotion copies from the previous environment, so skipping one
        # (say PROD without QC) would ship something that was never tested there.
        idx = [ENVIRONMENTS.index(e) for e in self.environments]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(
                f"deploy {self.deploy_key}: environments {', '.join(self.environments)} must be "
                f"consecutive in the order {' → '.join(ENVIRONMENTS)} (PROD needs QC before it)"
            )
        return self


class ReleaseInfo(BaseModel):
    """A release: its key and, once gathered, its deploys."""

    release_key: str
    release_date: date | None = None
    approved: bool = True
    deploys: list[DeployInfo] = Field(default_factory=list)

    @field_validator("release_key")
    @classmethod
    def _release_key(cls, v: str) -> str:
        return check_release_key(v)

    @model_validator(mode="after")
    def _one_deploy_per_container(self) -> ReleaseInfo:
        containers = [d.container_id for d in self.deploys]
        twice = sorted({c for c in containers if containers.count(c) > 1})
        if twice:
            raise ValueError(f"release {self.release_key} deploys {', '.join(twice)} more than once")
        return self


class ApprovalReport(BaseModel):
    release_approved: bool
    unapproved_deploys: list[str] = Field(default_factory=list)


class StepInput(BaseModel):
    """What one build, deploy or test step needs; run_id ties the step to one release run."""

    release_key: str
    run_id: str
    deploy: DeployInfo
    env: Environment


class DeployRequest(BaseModel):
    release_key: str
    run_id: str
    deploy: DeployInfo


class DeployResult(BaseModel):
    deploy_key: str
    artifact: str
    environments: list[Environment]


class ReleaseResult(BaseModel):
    release_key: str
    status: Literal["SUCCESS"]
    deploys: list[DeployResult]


FAILURE_RATES: dict[str, float] = {"never": 0.0, "rarely": 0.1, "sometimes": 0.3, "alot": 0.6}


@dataclass(frozen=True)
class Settings:
    task_queue: str
    workspace: Path
    catalog: Path
    failure_rate: str
    failure_seed: int | None
    step_seconds: float

    @classmethod
    def from_env(cls) -> Settings:
        """Read settings from the process environment (scripts load .env first)."""
        env = os.environ
        rate = env.get("FAILURE_RATE", "rarely").strip().lower()
        if rate not in FAILURE_RATES:
            raise ValueError(f"FAILURE_RATE={rate!r} is not one of {', '.join(FAILURE_RATES)}")
        seed = env.get("FAILURE_SEED", "").strip()
        if seed and not seed.lstrip("-").isdigit():
            raise ValueError(f"FAILURE_SEED={seed!r} is not a whole number")
        step = env.get("DEMO_STEP_SECONDS", "3").strip()
        try:
            step_seconds = float(step)
        except ValueError:
            raise ValueError(f"DEMO_STEP_SECONDS={step!r} is not a number of seconds") from None
        if not 0 <= step_seconds <= 3600:
            raise ValueError(f"DEMO_STEP_SECONDS={step!r} must be between 0 and 3600")
        workspace = Path(env.get("RELEASE_WORKSPACE") or REPO_ROOT).expanduser().resolve()
        catalog = Path(env.get("RELEASE_CATALOG") or REPO_ROOT / "releases.json").expanduser()
        return cls(
            task_queue=env.get("RELEASE_TASK_QUEUE") or TASK_QUEUE,
            workspace=workspace,
            catalog=catalog.resolve(),
            failure_rate=rate,
            failure_seed=int(seed) if seed else None,
            step_seconds=step_seconds,
        )


def describe_validation_error(err: ValueError) -> str:
    """One line for a pydantic ValidationError (or any ValueError): what is wrong, where."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
