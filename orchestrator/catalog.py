"""The release catalog (releases.json): its format, its checks, and what a release gathers from it.

Plain Python, no temporalio. Every problem with a catalog is a CatalogError of one line naming the file, the
release and the field, so a person can fix it while the release that read it retries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import CatalogError, UnknownRelease
from orchestrator.names import check_approver, check_check_name, check_release_key, clip, describe_validation_error
from orchestrator.step_commands import StepCommands
from shared import (
    DEFAULT_CHECKS,
    ENVIRONMENTS,
    HEALTH,
    MAX_CHECKS,
    MAX_FREEZE_WINDOWS,
    STOP_ALL,
    ApprovalPolicy,
    ConfigValue,
    DeployInfo,
    EnvironmentAccess,
    FreezeWindow,
    OnFailure,
    ReleaseInfo,
    check_config,
)

# An error message quotes at most this much of what it read, so one line stays one line.
QUOTE_MAX = 300
# A catalog larger than this is refused (RELEASE_CATALOG_MAX_BYTES): every gather reads it whole.
CATALOG_MAX_BYTES = 1_000_000


class CatalogRelease(BaseModel):
    release_key: str
    release_date: str | None = None
    approved: bool = True
    # Checked when the release starts (ReleaseEnvironments): a bad entry stops that release, not the others.
    environments: list[str] = Field(min_length=1)
    versions: dict[str, str] = Field(min_length=1)
    unapproved: list[str] = Field(default_factory=list)
    approval_policy: ApprovalPolicy | None = None
    on_failure: OnFailure | None = None


def _known_environment(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {clip(env)!r}; the environments are {', '.join(ENVIRONMENTS)}")
    return env


class ReleaseEnvironments(BaseModel):
    """A release's environments, as it starts: known names, consecutive in promotion order."""

    environments: list[Annotated[str, AfterValidator(_known_environment)]]

    @field_validator("environments")
    @classmethod
    def _consecutive(cls, v: list[str]) -> list[str]:
        idx = [ENVIRONMENTS.index(e) for e in v]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            # A promotion copies from the environment before, so a gap could never be verified.
            raise ValueError(
                f"{', '.join(v)} must be consecutive in the order {' → '.join(ENVIRONMENTS)} (PROD needs QC before it)"
            )
        return v


# A list of people's names: each a name a person could type (no control characters, one script), none twice.
People = Annotated[list[Annotated[str, AfterValidator(check_approver)]], Field(max_length=100)]


class EnvironmentSettings(BaseModel):
    """What the catalog says about one environment: its quality gates, configuration and freeze windows."""

    # A misspelt field ("check") would silently leave an environment without its gates.
    model_config = ConfigDict(extra="forbid")

    # None: the default checks of the environment (DEFAULT_CHECKS); [] : no quality gate.
    checks: list[Annotated[str, AfterValidator(check_check_name)]] | None = Field(default=None, max_length=MAX_CHECKS)
    config: dict[str, ConfigValue] = Field(default_factory=dict)
    freeze: list[FreezeWindow] = Field(default_factory=list, max_length=MAX_FREEZE_WINDOWS)
    # Who may act there (approve entry, unfreeze, retry, roll back); absent: anyone.
    approvers: People | None = None
    # How many different approvers must approve a deploy before it enters; 0: none.
    required_approvals: int = Field(default=0, ge=0, le=10)
    # The person who started the release may not approve its entry here.
    prevent_self_approval: bool = False

    @model_validator(mode="after")
    def _enough_approvers(self) -> EnvironmentSettings:
        if self.approvers is not None and self.required_approvals > len(self.approvers):
            raise ValueError(
                f"required_approvals is {self.required_approvals}, but only {len(self.approvers)} approvers are named"
            )
        return self

    def access(self) -> EnvironmentAccess:
        return EnvironmentAccess(
            approvers=self.approvers,
            required_approvals=self.required_approvals,
            prevent_self_approval=self.prevent_self_approval,
        )

    @field_validator("checks")
    @classmethod
    def _checks(cls, v: list[str] | None) -> list[str] | None:
        if HEALTH in (v or []):
            raise ValueError(
                f"{HEALTH!r} is the health check that follows every environment's checks: name yours otherwise"
            )
        twice = sorted({c for c in v or [] if (v or []).count(c) > 1})
        if twice:
            raise ValueError(f"check {twice[0]!r} is named twice")
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
        return check_config(v)


class Catalog(BaseModel):
    containers: dict[str, str]
    default_approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    # Absent: the release stops at the first gate or health failure and leaves it as it is (as before rollbacks).
    default_on_failure: OnFailure = Field(default_factory=lambda: STOP_ALL.model_copy())
    # Keys checked one by one with their values, so one reading names every problem.
    environments: dict[Annotated[str, AfterValidator(_known_environment)], EnvironmentSettings] = Field(
        default_factory=dict
    )
    releases: list[CatalogRelease]
    # Who may approve releases and their deploys (approved false, unapproved); absent: anyone.
    release_approvers: People | None = None
    # Steps run as commands instead of the simulation (see step_commands.py); absent: all simulated.
    commands: StepCommands | None = None

    def settings(self, env: str) -> EnvironmentSettings:
        return self.environments.get(env) or EnvironmentSettings()

    def checks(self, env: str) -> list[str]:
        checks = self.settings(env).checks
        return list(DEFAULT_CHECKS.get(env, []) if checks is None else checks)

    def access(self, environments: list[str]) -> dict[str, EnvironmentAccess]:
        """Who may act in these environments, where the catalog says anything about it."""
        return {env: s.access() for env in environments if (s := self.settings(env)).access() != EnvironmentAccess()}

    def release_keys(self) -> list[str]:
        return [r.release_key for r in self.releases]

    def deploy(self, release_key: str, container: str, version: str, environments: list[str]) -> DeployInfo:
        """Container at version, promoted by release_key through environments with their checks and config."""
        return DeployInfo(
            deploy_key=f"{release_key}:{container}",
            container_id=container,
            version=version,
            git_url=self.containers[container],
            environments=environments,  # type: ignore[arg-type]
            checks={env: self.checks(env) for env in environments},  # type: ignore[misc]
            commands=self.commands.model_dump(exclude_none=True) if self.commands else None,
            config={env: self.settings(env).config for env in environments},  # type: ignore[misc]
        )


def catalog_problem(err: ValidationError, text: str) -> str:
    """A validation error of the catalog in one line: the release (by key) and the field of each problem."""
    try:
        data = json.loads(text)
        releases = data.get("releases") if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        releases = None
    parts = []
    for e in err.errors():
        loc, msg = list(e.get("loc", ())), str(e.get("msg", "")).removeprefix("Value error, ")
        where = ""
        if loc[:1] == ["releases"] and len(loc) > 1 and isinstance(loc[1], int):
            entry = releases[loc[1]] if isinstance(releases, list) and loc[1] < len(releases) else None
            key = entry.get("release_key") if isinstance(entry, dict) else None
            where = f"release {clip(key)}: " if isinstance(key, str) else f"releases[{loc[1]}]: "
            loc = loc[2:]
        # "[key]": pydantic's mark of a dict key that fails, where the key itself says enough.
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "[key]").lstrip(".")
        parts.append(f"{where}{field}: {msg}" if field else f"{where}{msg}")
    return "; ".join(parts)


def load_catalog(path: Path, max_bytes: int = CATALOG_MAX_BYTES) -> Catalog:
    """The catalog at path, checked; any problem with it is a CatalogError of one line naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CatalogError(f"cannot read release catalog {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        size = path.stat().st_size
        raise CatalogError(
            f"release catalog {path} is {size:,} bytes; the limit is {max_bytes:,} (RELEASE_CATALOG_MAX_BYTES)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CatalogError(f"release catalog {path} is not UTF-8: invalid byte at offset {e.start}") from None
    try:
        catalog = Catalog.model_validate_json(text)
    except ValidationError as e:
        raise CatalogError(f"release catalog {path} is invalid: {clip(catalog_problem(e, text), QUOTE_MAX)}") from None
    except Exception as e:  # say, RecursionError on absurd nesting: still the catalog's fault
        raise CatalogError(f"release catalog {path} cannot be read: {type(e).__name__}") from None
    if not catalog.releases:
        raise CatalogError(f"release catalog {path} lists no releases")
    seen: set[str] = set()
    for r in catalog.releases:
        if r.release_key in seen:
            # First-wins would release whichever entry happens to come first, silently.
            raise CatalogError(f"release catalog {path} lists release {clip(r.release_key)!r} more than once")
        seen.add(r.release_key)
    return catalog


def check_failing_checks(catalog: Catalog, failing: frozenset[tuple[str, str, str]]) -> None:
    """ValueError, in one line, for a FAILING_CHECKS item that could never fail anything: a container the catalog
    does not list, or a check its environment does not run."""
    for artifact, env, check in sorted(failing):
        item = f"FAILING_CHECKS: {artifact}:{env}:{check}"
        container = artifact.rpartition("-")[0]
        if container not in catalog.containers:
            raise ValueError(f"{item}: the catalog lists no container {container!r}")
        runs = [*catalog.checks(env), HEALTH]
        if check not in runs:
            raise ValueError(f"{item}: {env} runs no check {check!r}; its checks are {', '.join(runs)}")


def gather(catalog: Catalog, path: Path, release_key: str) -> ReleaseInfo:
    """Release release_key as the catalog (read from path) describes it: its deploys, approvals, freezes, policy."""
    entry = next((r for r in catalog.releases if r.release_key == release_key), None)
    if entry is None:
        known = clip(", ".join(r.release_key for r in catalog.releases), QUOTE_MAX)
        try:
            check_release_key(release_key)
            what = f"unknown release key {release_key!r}"
        except ValueError as e:
            what = str(e)  # names the rule or the limit, quoting the key clipped
        raise UnknownRelease(f"{what}; known keys: {known}")
    try:
        ReleaseEnvironments(environments=entry.environments)
    except ValidationError as e:
        problem = catalog_problem(e, "")
        raise CatalogError(
            f"release catalog {path} is invalid: release {release_key}: {clip(problem, QUOTE_MAX)}"
        ) from None
    try:
        deploys = []
        for container, version in entry.versions.items():
            if container not in catalog.containers:
                raise CatalogError(
                    f"release {release_key} names container {clip(container)!r}, "
                    f"which the catalog's containers do not list"
                )
            deploy = catalog.deploy(release_key, container, version, entry.environments)
            deploys.append(deploy.model_copy(update={"approved": container not in entry.unapproved}))
        return ReleaseInfo(
            release_key=release_key,
            release_date=entry.release_date,  # type: ignore[arg-type]
            approved=entry.approved,
            approval_policy=entry.approval_policy or catalog.default_approval_policy,
            deploys=deploys,
            freezes={e: catalog.settings(e).freeze for e in entry.environments if catalog.settings(e).freeze},
            on_failure=entry.on_failure or catalog.default_on_failure,
            release_approvers=catalog.release_approvers,
            access=catalog.access(entry.environments),
        )
    except ValidationError as e:
        raise CatalogError(
            f"release {release_key} in the catalog: {clip(describe_validation_error(e), QUOTE_MAX)}"
        ) from None
