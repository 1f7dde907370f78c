"""The types that cross the boundary between scripts, workflows and activities, and the constants they share.

Plain Python: no temporalio import, so release_management.py and the domain modules can use it too.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.freeze import parse_moment, parse_weekly
from orchestrator.names import (
    CHECK_NAME,
    check_check_name,
    check_container_id,
    check_release_key,
    check_version,
    clip,
)

# Promotion order: each environment takes its artifact from the one before it,
# DEV from the artifactory.
ENVIRONMENTS: tuple[str, ...] = ("DEV", "TEST", "QC", "PROD")
Environment = Literal["DEV", "TEST", "QC", "PROD"]

# Where a build puts artifacts, and the place before DEV in lock order and in the ledger's proofs.
ARTIFACTORY = "artifactory"

TASK_QUEUE = "release-task-queue"
DEFAULT_RELEASE_KEY = "RELEASE-NOV-23-INITIAL"
REPO_ROOT = Path(__file__).resolve().parent

# A release's deploys and the events it keeps are capped: its state travels in every
# query and stays in the workflow's memory for the release's whole life.
MAX_DEPLOYS = 50
EVENTS_KEPT = 200
EVENT_CHARS = 300

# After its checks pass, a deploy is verified in the environment by this health check.
HEALTH = "health"
# Quality gates: the check suites each environment runs when a deploy is tested there.
DEFAULT_CHECKS: dict[str, list[str]] = {
    "DEV": ["unit"],
    "TEST": ["integration"],
    "QC": ["performance", "security"],
    "PROD": ["smoke"],
}
MAX_CHECKS = 10
# Per-environment configuration values rendered into environments/<ENV>/config/<container>.json.
ConfigValue = str | int | float | bool | None
MAX_CONFIG_KEYS = 20
CONFIG_VALUE_CHARS = 200
MAX_FREEZE_WINDOWS = 20
FAILING_CHECKS_MAX = 100


def release_workflow_id(release_key: str) -> str:
    return f"release-{release_key}"


class DeployInfo(BaseModel):
    """One container at one version, promoted through consecutive environments."""

    deploy_key: str = Field(min_length=1)
    container_id: str
    version: str
    git_url: str = Field(min_length=1)
    environments: list[Environment] = Field(min_length=1)
    approved: bool = True
    # The check suites of each environment, from the catalog when the release gathered; None for a
    # deploy gathered before quality gates existed (it runs DEFAULT_CHECKS).
    checks: dict[Environment, list[str]] | None = None
    # The configuration values of each environment, rendered with the artifact when it is deployed.
    config: dict[Environment, dict[str, ConfigValue]] = Field(default_factory=dict)
    # The catalog's "commands" (commands.StepCommands, checked there): steps run as commands; None: simulated.
    commands: dict[str, Any] | None = None

    def checks_in(self, env: str) -> list[str]:
        return list((DEFAULT_CHECKS if self.checks is None else self.checks).get(env, []))

    @field_validator("checks")
    @classmethod
    def _checks(cls, v: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for names in (v or {}).values():
            if len(names) > MAX_CHECKS:
                raise ValueError(f"at most {MAX_CHECKS} checks per environment")
            for name in names:
                check_check_name(name)
        return v

    @field_validator("config")
    @classmethod
    def _config(cls, v: dict[str, dict[str, ConfigValue]]) -> dict[str, dict[str, ConfigValue]]:
        for values in v.values():
            check_config(values)
        return v

    @field_validator("container_id")
    @classmethod
    def _container_id(cls, v: str) -> str:
        return check_container_id(v)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return check_version(v)

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


class OnFailure(BaseModel):
    """What a release does when a deploy fails a quality gate or its health check in an environment.

    rollback: that environment gets back what it held before the release; hold: the deploy waits for a
    person (run_workflow.py retry or rollback); stop: it stays as it is. all: every deploy of the release
    in that environment is rolled back (or stopped, or held) too, and the release goes no further;
    without it the release's other deploys go on. A plain string in the catalog is the action alone.
    """

    model_config = ConfigDict(extra="forbid")

    action: Literal["rollback", "hold", "stop"] = "stop"
    all: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"action": value} if isinstance(value, str) else value


# Releases whose catalog says nothing: the whole release stops at the first gate failure, as before rollbacks.
STOP_ALL = OnFailure(action="stop", all=True)


class ApprovalPolicy(BaseModel):
    """What a release does with deploys nobody has approved yet.

    skip: release what is approved, report the rest as skipped; stop: fail at once;
    hold: wait for approval up to hold_hours, then skip or stop as after_hold says.
    A release that is itself unapproved is never skipped: it waits (hold) or fails.
    """

    unapproved: Literal["skip", "stop", "hold"] = "hold"
    # At most a year: the hold is a durable timer, and a huge one overflows the workflow's clock.
    hold_hours: float = Field(default=24, gt=0, le=8760)
    after_hold: Literal["skip", "stop"] = "stop"


def check_config(values: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
    if len(values) > MAX_CONFIG_KEYS:
        raise ValueError(f"{len(values)} configuration values; the limit is {MAX_CONFIG_KEYS}")
    for key, value in values.items():
        if not CHECK_NAME.fullmatch(key):
            raise ValueError(f"configuration key {clip(key)!r} is invalid: lowercase letters, digits, '_' and '-'")
        if isinstance(value, str) and len(value) > CONFIG_VALUE_CHARS:
            raise ValueError(f"configuration value {key} is {len(value)} characters; the limit is {CONFIG_VALUE_CHARS}")
    return values


class FreezeWindow(BaseModel):
    """A time in which nothing is promoted into an environment.

    Absolute ("2024-12-20T16:00Z" to "2025-01-02T08:00Z") or weekly ("Fri 16:00" to "Mon 08:00",
    UTC; a weekly window may run over the weekend into the next week).
    """

    # A misspelt field ("reasn") is refused, not silently dropped.
    model_config = ConfigDict(extra="forbid")

    start: str
    end: str
    reason: str = Field(default="", max_length=100)

    @model_validator(mode="after")
    def _valid(self) -> FreezeWindow:
        weekly = parse_weekly(self.start), parse_weekly(self.end)
        moments = parse_moment(self.start), parse_moment(self.end)
        for i, field in enumerate(("start", "end")):
            if weekly[i] is None and moments[i] is None:
                raise ValueError(
                    f"{field} {clip(getattr(self, field))!r} is neither a date and time (2024-12-20T16:00Z) "
                    "nor a weekly time (Fri 16:00)"
                )
        if (weekly[0] is None) != (weekly[1] is None):
            raise ValueError("start and end must both be weekly times (Fri 16:00) or both dates and times")
        if weekly[0] is not None and weekly[0] == weekly[1]:
            raise ValueError(f"the weekly window starts and ends at the same time ({self.start})")
        if moments[0] is not None and moments[1] is not None and moments[1] <= moments[0]:
            raise ValueError(f"the window ends ({self.end}) before it starts ({self.start})")
        return self


class EnvironmentAccess(BaseModel):
    """Who may act in an environment, from the catalog: approve entry into it, unfreeze, retry and roll back
    there. approvers None: anyone; required_approvals: how many of them must approve a deploy before it enters."""

    approvers: list[str] | None = None
    required_approvals: int = Field(default=0, ge=0, le=10)
    prevent_self_approval: bool = False


class RollbackTarget(BaseModel):
    """What a rollback-env asks: put back into env the version of container that passed its tests there before
    the one it holds, or the version named, which must have."""

    model_config = ConfigDict(extra="forbid")

    env: Environment
    container: Annotated[str, AfterValidator(check_container_id)]
    version: Annotated[str, AfterValidator(check_version)] | None = None

    def release_key(self) -> str:
        return f"ROLLBACK-{self.env}-{self.container}"


class ReleaseRequest(BaseModel):
    """A release's whole input: what a person chose. Everything else (versions, checks, commands, freezes, the
    approvals it needs) the worker derives from its own catalog; an input with any other field is refused.

    by: who started it (who asks, for a rollback-env); rollback: a rollback-env's target.
    """

    # Other fields are kept, for the workflow to refuse them by name (a release started by 1.0 sent them all).
    model_config = ConfigDict(extra="allow")

    release_key: str
    now: bool = False
    by: str | None = None
    rollback: RollbackTarget | None = None
    # The identity the starting Temporal client reports, recorded with who started it.
    identity: str = ""

    @field_validator("release_key")
    @classmethod
    def _release_key(cls, v: str) -> str:
        return check_release_key(v)


class ReleaseInfo(BaseModel):
    """A release: its key and, once gathered, its deploys."""

    release_key: str
    # Do not release before this day (00:00 UTC); `now` ships at once anyway.
    release_date: date | None = None
    now: bool = False
    approved: bool = True
    approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    deploys: list[DeployInfo] = Field(default_factory=list, max_length=MAX_DEPLOYS)
    # Freeze windows per environment, from the catalog: no promotion into an environment while frozen.
    freezes: dict[Environment, list[FreezeWindow]] = Field(default_factory=dict)
    on_failure: OnFailure = Field(default_factory=lambda: STOP_ALL.model_copy())
    # A rollback-env (run_workflow.py rollback-env): each deploy re-promotes from the artifactory a version
    # that passed its tests in its environment before; requested_by is recorded as its approval.
    redeploy: bool = False
    requested_by: str | None = None
    # Who started the release (run_workflow.py start --by), recorded; a rollback-env's asker is requested_by.
    started_by: str | None = None
    identity: str = ""
    # A rollback-env started since 1.1: the version is chosen under the target's lock (its deploy's is a guess).
    rollback: RollbackTarget | None = None
    # Who may approve the release and its deploys (None: anyone), and who may act in each environment.
    release_approvers: list[str] | None = None
    access: dict[Environment, EnvironmentAccess] = Field(default_factory=dict)

    @field_validator("freezes")
    @classmethod
    def _freezes(cls, v: dict[str, list[FreezeWindow]]) -> dict[str, list[FreezeWindow]]:
        if any(len(w) > MAX_FREEZE_WINDOWS for w in v.values()):
            raise ValueError(f"at most {MAX_FREEZE_WINDOWS} freeze windows per environment")
        return v

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


class Approval(BaseModel):
    """An approval, sent by Update or Signal: deploy is a container id; none approves all that waits.

    Fields are checked by the workflow (check_approver), not here: a Signal whose payload
    fails to convert is dropped by the SDK without a trace, and the release should say why.
    """

    approver: str = ""
    deploy: str | None = None
    # The environment whose entry this approves (its required approvals); None: the release or its deploys.
    env: str | None = None
    identity: str = ""


class ApprovalReply(BaseModel):
    """What the approve Update answers: small, whatever the release's size."""

    release_key: str
    status: str
    approved: list[str]
    still_waiting: list[str]


class DecisionRecord(BaseModel):
    """A person's decision the ledger records: who, by which Temporal client, about which deploys, and when.

    step approve: who approved these deploys (a deploy key; the release key for the release itself), for entry
    into environments, if any; unfreeze: who overrode the freeze of these environments; start, cancel: who
    started or cancelled the release; retry: who asked a held deploy's checks to run again; hold: a deploy the
    catalog's on_failure policy held for a person (by names the policy).
    """

    release_key: str
    run_id: str
    by: str
    at: datetime
    deploy_keys: list[str]
    step: Literal["approve", "unfreeze", "start", "cancel", "retry", "hold"] = "approve"
    environments: list[Environment] = Field(default_factory=list)
    # The identity the sending Temporal client reported ("4242@host" for run_workflow.py); "" if it sent none.
    identity: str = ""


class Unfreeze(BaseModel):
    """An override of the freeze windows for one release, sent by Update or Signal (checked by the workflow)."""

    approver: str = ""
    identity: str = ""


class UnfreezeReply(BaseModel):
    release_key: str
    status: str
    # The environments whose freeze held a deploy of the release when it was overridden.
    environments: list[str]


class StepInput(BaseModel):
    """What one build, deploy or test step needs; run_id ties the step to one release run."""

    release_key: str
    run_id: str
    deploy: DeployInfo
    env: Environment
    # A rollback-env: the version comes from the artifactory, and must have passed its tests in env itself.
    redeploy: bool = False
    # How many times a person asked to run the failed checks again (the hold policy's retry): a new
    # try runs them anew, where a retry by Temporal keeps the verdicts its try already has.
    retry: int = Field(default=0, ge=0, le=100)


class StepResult(BaseModel):
    artifact: str
    attempt: int
    # False when this execution found the step's effect already in place (a retry after a crash).
    applied: bool = True


class DeployResult(BaseModel):
    deploy_key: str
    artifact: str
    environments: list[Environment]
    # A deploy stopped by a gate or health failure (its on_failure policy settled it): what failed,
    # and what its environment holds now ("rolled back QC to sbstore-1.7").
    failed: str | None = None
    settled: str | None = None


class RollbackRequest(BaseModel):
    """A rollback step: step.env gets back what it held before step.run_id; by: who asked, if a person."""

    step: StepInput
    by: str | None = None
    identity: str = ""


class Decision(BaseModel):
    """A person's answer to a held deploy (Update or Signal retry / rollback): deploy is a container id,
    needed only when several deploys are held. Checked by the workflow, like Approval."""

    approver: str = ""
    deploy: str | None = None
    identity: str = ""


class DecisionReply(BaseModel):
    release_key: str
    status: str
    deploy: str
    decision: str


class ReleaseResult(BaseModel):
    release_key: str
    status: Literal["SUCCESS"]
    deploys: list[DeployResult]
    skipped: list[str] = Field(default_factory=list)


# Values of the ReleaseStatus search attribute and of ReleaseState.status.
SCHEDULED, AWAITING_APPROVAL, RUNNING = "SCHEDULED", "AWAITING_APPROVAL", "RUNNING"
SUCCESS, FAILED, CANCELLED = "SUCCESS", "FAILED", "CANCELLED"
# A deploy waits for a freeze window to end (a durable timer), or for an unfreeze.
FROZEN = "FROZEN"
# A deploy that failed a gate or its health check waits for a person (on_failure hold): retry or rollback.
HELD = "HELD"

CellStatus = Literal["pending", "waiting", "running", "done", "failed", "skipped", "cancelled", "held", "rolled back"]


class Cell(BaseModel):
    """One deploy in one environment."""

    status: CellStatus = "pending"
    step: str = ""
    steps_done: int = 0
    attempts: int = 0
    deployed: bool = False


class DeployState(BaseModel):
    deploy_key: str
    container_id: str
    artifact: str
    approved: bool
    approved_by: str | None = None
    approved_at: datetime | None = None
    cells: dict[str, Cell]
    waiting_for: str | None = None


class ReleaseState(BaseModel):
    """A release's progress, as the status query returns it."""

    release_key: str
    status: str = RUNNING
    release_date: date | None = None
    approved: bool = True
    approved_by: str | None = None
    approved_at: datetime | None = None
    started_by: str | None = None
    deploys: list[DeployState] = Field(default_factory=list)
    # The last EVENTS_KEPT events; event_count counts every event ever added, so a
    # follower knows how many it missed when the oldest were dropped.
    events: list[str] = Field(default_factory=list)
    event_count: int = 0
    error: str | None = None
    # Who overrode the release's freeze windows (run_workflow.py unfreeze), and when.
    unfrozen_by: str | None = None
    unfrozen_at: datetime | None = None


def step_summary(verb: str, step: StepInput) -> str:
    """A step as people read it, "deploy frontend-1.0 → QC": the activity's id and summary in the Web UI."""
    d = step.deploy
    arrow = "in" if verb in ("test", "rollback") else "→"
    return f"{verb} {d.container_id}-{d.version} {arrow} {step.env}"
