"""The catalog's "commands" section: which steps run a command instead of the simulation, and with what argv.

Step commands are the operator's own configuration, like a Makefile: they run as the worker's user, with the
worker's environment, and can do whatever that user can. Nothing here is a sandbox, and a catalog from someone
you do not trust must not be run. orchestrator/command_runner.py says what running one does guarantee.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from orchestrator.names import check_check_name, clip
from shared import HEALTH, DeployInfo

MAX_ARGS = 50
MAX_ARG_CHARS = 1000
MAX_TIMEOUT_SECONDS = 86400.0
MAX_RETRY_EXIT_CODES = 20
# EX_TEMPFAIL (sysexits.h): "try again later".
DEFAULT_RETRY_EXIT_CODES = (75,)

# Each placeholder and the environment variable that carries the same value.
PLACEHOLDERS: dict[str, str] = {
    "container": "RELEASE_CONTAINER",
    "version": "RELEASE_VERSION",
    "env": "RELEASE_ENV",
    "release": "RELEASE_KEY",
    "check": "RELEASE_CHECK",
    "workspace": "RELEASE_WORKSPACE",
    "artifact": "RELEASE_ARTIFACT",
    "git_url": "RELEASE_GIT_URL",
}
# Values that are names, never paths: a "/" or ".." in one could steer a path out of the workspace.
NAME_PLACEHOLDERS = ("container", "version", "env", "release", "check")


def _argument(arg: str) -> str:
    if "\0" in arg:
        shown = arg.replace("\0", "\\0")
        raise ValueError(f"argument {clip(shown)!r} holds a NUL character")
    if len(arg) > MAX_ARG_CHARS:
        raise ValueError(f"argument {clip(arg)!r} is {len(arg)} characters long; the limit is {MAX_ARG_CHARS}")
    return arg


class StepCommand(BaseModel):
    """A command the catalog gives for a step: argv (no shell), its timeout, and the exit codes worth a retry.

    Any other non-zero exit is final. A command killed by signal N counts as exit 128+N (as a shell says it),
    so listing 137 retries a command the kernel killed for lack of memory.
    """

    # A misspelt field ("timeout") would silently leave the default in force.
    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: list[Annotated[str, AfterValidator(_argument)]] = Field(min_length=1, max_length=MAX_ARGS)
    timeout_seconds: float = Field(default=600.0, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False, strict=True)
    retry_exit_codes: list[StrictInt] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_EXIT_CODES), max_length=MAX_RETRY_EXIT_CODES
    )

    @field_validator("argv")
    @classmethod
    def _program(cls, v: list[str]) -> list[str]:
        if not v[0].strip():
            raise ValueError("argv[0], the program, is empty")
        return v

    @field_validator("retry_exit_codes")
    @classmethod
    def _codes(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 1 <= c <= 255]
        if bad:
            # 0 is success; an exit status is one byte.
            raise ValueError(f"exit code {bad[0]} cannot mean 'try again': use 1 to 255")
        return v


def _per_check(name: str) -> str:
    check_check_name(name)
    if name == HEALTH:
        raise ValueError(f"{HEALTH!r} has its own entry beside 'checks': put its command there")
    return name


class StepCommands(BaseModel):
    """The catalog's "commands" section: the steps that run a command; any step left out is simulated.

    test is the command of every quality-gate check that checks does not name; health verifies a deploy
    after its checks (it never falls back to test). Checks have a map of their own, so a check named
    "build" or "deploy" can never be mistaken for the step.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    build: StepCommand | None = None
    deploy: StepCommand | None = None
    test: StepCommand | None = None
    health: StepCommand | None = None
    checks: dict[Annotated[str, AfterValidator(_per_check)], StepCommand] = Field(default_factory=dict)

    def for_check(self, check: str) -> StepCommand | None:
        """The command of one check (HEALTH included), or None: that check is simulated."""
        if check == HEALTH:
            return self.health
        return self.checks.get(check, self.test)


def placeholders_for(
    deploy: DeployInfo, release_key: str, env: str | None, artifact: Path, check: str | None = None
) -> dict[str, str]:
    """A step's placeholder values (run_command adds workspace). env is None for a build, check for a test."""
    values = {
        "container": deploy.container_id,
        "version": deploy.version,
        "release": release_key,
        "artifact": str(artifact),
        "git_url": deploy.git_url,
    }
    if env is not None:
        values["env"] = env
    if check is not None:
        values["check"] = check
    return values
