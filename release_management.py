"""The release management system being orchestrated: its steps (build, deploy, test, rollback) on a workspace.

Plain Python with no temporalio import, so it can be used and tested on its own. Every step is idempotent: run
twice for the same release run it has the effect of once. The ledger records every execution of a step, and
says which one applied it. The catalog (orchestrator/catalog.py) says what a release deploys; the ledger
(orchestrator/ledger.py) what ran; gates and rollbacks have modules of their own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from orchestrator.access import check_actor
from orchestrator.catalog import CATALOG_MAX_BYTES, QUOTE_MAX, Catalog, gather, load_catalog
from orchestrator.command_runner import ALONE, Liveness
from orchestrator.command_steps import CommandSteps
from orchestrator.errors import (
    CatalogError,
    GateFailed,
    InvalidInput,
    InvalidStep,
    MissingArtifact,
    RollbackRefused,
    VerificationFailed,
)
from orchestrator.gates import Verdict, run_checks
from orchestrator.ledger import open_ledger
from orchestrator.ledger_format import now_iso, step_line
from orchestrator.names import clip, describe_validation_error
from orchestrator.promotion import check_upstream, promotable
from orchestrator.rollback import holder_before, keep_before, restore, rollback_version
from orchestrator.workspace import Workspace, artifact_name, sha256_of, write_if_changed
from shared import (
    ENVIRONMENTS,
    HEALTH,
    ApprovalReport,
    DecisionRecord,
    DeployInfo,
    ReleaseInfo,
    RollbackTarget,
    StepInput,
)

# Called by a step once its effect is in place, before its ledger line: (verb, step, attempt).
AfterEffect = Callable[[str, StepInput, int], None]


class StepOutcome(NamedTuple):
    artifact: str
    # False when this execution found the effect already in place (and the ledger already claims it).
    applied: bool


class ReleaseManagement(Workspace):
    """Releases as data (the catalog) and the folders artifacts move through.

    after_effect, if set, is called by each step once its effect is in place (put there by
    this execution or an earlier one) and before its ledger line is written: the window in
    which a crash leaves an applied step unrecorded. Fault injection strikes there
    (FAILURE_AT=effect), so that tests make a retry really run an applied step again;
    midway likewise strikes between a deploy's artifact and its configuration (FAILURE_AT=midway).
    """

    def __init__(
        self,
        workspace: Path,
        catalog: Path,
        step_seconds: float = 0.0,
        after_effect: AfterEffect | None = None,
        failing_checks: frozenset[tuple[str, str, str]] = frozenset(),
        midway: AfterEffect | None = None,
        catalog_max_bytes: int = CATALOG_MAX_BYTES,
        ledger_url: str | None = None,
    ) -> None:
        super().__init__(workspace)
        self.catalog_path = catalog
        self.catalog_max_bytes = catalog_max_bytes
        self.step_seconds = step_seconds
        self.after_effect = after_effect
        # (artifact, environment, check) of the quality-gate checks that fail (FAILING_CHECKS).
        self.failing_checks = failing_checks
        # Called by a deploy between its two writes, its artifact in place and its configuration not yet.
        self.midway = midway
        self.ledger = open_ledger(workspace, ledger_url)

    # --- the catalog and approvals ---------------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The catalog, checked; any problem with it is a CatalogError of one line naming the file."""
        return load_catalog(self.catalog_path, self.catalog_max_bytes)

    def release_keys(self) -> list[str]:
        return self.catalog().release_keys()

    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        return gather(self.catalog(), self.catalog_path, release_key)

    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        return ApprovalReport(
            release_approved=release.approved,
            unapproved_deploys=[d.deploy_key for d in release.deploys if not d.approved],
        )

    def record_approval(self, record: DecisionRecord, attempt: int = 1) -> None:
        """One ledger line per deploy the decision is about (deploy_key is the release key for the release itself).

        An approval names its approver ("approver"), any other decision its maker ("by"); an approval of one
        environment's entry, and a hold, name that environment ("env"). A repeated call (a retry) adds lines
        with applied false: a decision is claimed once.
        """
        entry_approval = record.step == "approve" and len(record.environments) == 1
        who = {"approver": record.by} if record.step in ("approve", "unfreeze") else {"by": record.by}
        for deploy_key in record.deploy_keys:
            self.ledger.record_unless_claimed(
                {
                    "release_key": record.release_key,
                    "run_id": record.run_id,
                    "deploy_key": deploy_key,
                    "step": record.step,
                    "env": record.environments[0] if entry_approval or record.step == "hold" else None,
                    **({"environments": record.environments} if record.environments else {}),
                    **who,
                    **({"identity": record.identity} if record.identity else {}),
                    "attempt": attempt,
                    "at": record.at.isoformat(timespec="milliseconds"),
                }
            )

    # --- steps -----------------------------------------------------------------------------------------------

    def build(self, step: StepInput, attempt: int = 1, live: Liveness = ALONE) -> StepOutcome:
        """Write the artifact; applied if this execution wrote it (it was missing or different)."""
        started = now_iso()
        step = _checked(step, "build")
        d = step.deploy
        self._work(live)
        artifact = self.artifact_path(d)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        applied = CommandSteps(self, step, live).build()
        if applied is None:
            applied = write_if_changed(artifact, build_content(d, step.release_key))
        self._effect_in_place("build", step, attempt)
        # The build's digest: what each promotion of it must copy (orchestrator/promotion.py).
        extra = {"sha256": sha256_of(self.inside(artifact))}
        return StepOutcome(artifact.name, self._record(step, "build", attempt, started, applied, extra))

    def deploy(self, step: StepInput, attempt: int = 1, live: Liveness = ALONE) -> StepOutcome:
        """Copy the artifact from the environment before, with its configuration; applied if it changed a file.

        Refused (NotVerified) unless the ledger shows these bytes, by digest, passing their tests in the
        environment before (DEV: built into the artifactory): a file there is not enough.

        The configuration file is the commit point. The new artifact goes in beside the old one,
        then the configuration naming it, then the old artifact goes: a crash between any two
        leaves a configuration beside the artifact it names, never beside another version alone.

        The caller runs one deploy per environment and container at a time (a lock taken
        outside): removing the container's other versions then never removes a version
        another deploy just put there.
        """
        started = now_iso()
        step = _checked(step, "deploy")
        d, env = step.deploy, step.env
        name = artifact_name(d)
        source = promotable(self, self.ledger, d, env, step.redeploy)
        self._work(live)
        self.env_dir(env).mkdir(parents=True, exist_ok=True)
        keep_before(self, step)
        try:
            data = self.inside(source.path).read_bytes()
        except FileNotFoundError:
            raise source.missing from None  # removed while this step worked: no retry brings it back
        if hashlib.sha256(data).hexdigest() != source.digest:
            raise source.changed  # changed while this step worked: the bytes copied are the ones proven
        applied = CommandSteps(self, step, live).deploy(data, source.path.parent.name)
        if applied is None:
            applied = write_if_changed(self.env_dir(env) / name, data)
        if self.midway is not None:
            self.midway("deploy", step, attempt)
        config = self.config_path(env, d.container_id)
        config.parent.mkdir(exist_ok=True)
        rendered = render_config(d, env, step.release_key)
        applied = write_if_changed(config, rendered) or applied
        # Only once the new version and its configuration are in place does the old one go.
        for old in self.files_of(env, d.container_id):
            if old.name != name:
                try:
                    old.unlink()
                except FileNotFoundError:
                    continue
                applied = True
        self._effect_in_place("deploy", step, attempt)
        # The config's digest: the inventory tells a config edited by hand from the one deployed.
        extra = {"sha256": source.digest, "config_sha256": hashlib.sha256(rendered).hexdigest()}
        return StepOutcome(name, self._record(step, "deploy", attempt, started, applied, extra))

    def test(self, step: StepInput, attempt: int = 1, live: Liveness = ALONE) -> StepOutcome:
        """Run the environment's quality gates on the deployed artifact, then its health check; one report each.

        Applied if this execution wrote a report. A failed check is final (GateFailed, or VerificationFailed
        for the health check), whatever a retry would do: see orchestrator/gates.py. The ledger line says
        whether the tests passed.
        """
        started = now_iso()
        step = _checked(step, "test")
        d, env = step.deploy, step.env
        name = artifact_name(d)
        deployed = self.inside(self.env_dir(env) / name)
        if not deployed.is_file():
            raise MissingArtifact(f"cannot test {d.container_id} {d.version} in {env}: {env} does not hold {name}")
        # The bytes under test, by digest: a pass proves these, and only these may be promoted from here.
        digest = sha256_of(deployed)
        self._work(live)

        commands = CommandSteps(self, step, live)

        def check(check: str) -> Verdict:
            return commands.check(check) or self._simulated_check(step, check)

        applied, failed, findings = run_checks(self, step, check, commands.has_check, started)
        if failed is not None:
            verdict = {"passed": False, "failed_check": failed, "sha256": digest}
            self._record(step, "test", attempt, started, applied, verdict)
            finding = f": {findings[0]}" if findings else ""
            error = VerificationFailed if failed == HEALTH else GateFailed
            raise error(clip(f"{name} failed {failed} in {env}{finding}", QUOTE_MAX))
        self._effect_in_place("test", step, attempt)
        extra = {"passed": True, "checks": d.checks_in(env), "sha256": digest}
        return StepOutcome(name, self._record(step, "test", attempt, started, applied, extra))

    def rollback(
        self, step: StepInput, attempt: int = 1, live: Liveness = ALONE, by: str | None = None, identity: str = ""
    ) -> StepOutcome:
        """Give step.env back exactly what it held of the container before this run deployed there.

        The artifact files and the config file, byte for byte, or nothing if it held nothing (see
        orchestrator/rollback.py). Idempotent; a run that never deployed there has nothing to give back, and
        records nothing.
        """
        started = now_iso()
        step = _checked(step, "roll back")
        if not self.kept_path(step).is_dir():
            return StepOutcome("", False)
        self._work(live)
        old, applied = restore(self, step, lambda: self.midway("rollback", step, attempt) if self.midway else None)
        entries = self.ledger.target_entries(step.env, step.deploy.container_id) if old else []
        restored = holder_before(entries, step.env, step.deploy.container_id, step.run_id) if old else None
        self._effect_in_place("rollback", step, attempt)
        put_back = self.inside(self.env_dir(step.env) / old[0]) if old else None
        digest = {"sha256": sha256_of(put_back)} if put_back is not None and put_back.is_file() else {}
        extra = {"restored": restored, "by": by, **digest, **({"identity": identity} if identity else {})}
        # The artifact it holds again ("" for none), for the release to say what is where.
        return StepOutcome(old[0] if old else "", self._record(step, "rollback", attempt, started, applied, extra))

    def rollback_env(self, env: str, container: str, by: str, to: str | None = None) -> ReleaseInfo:
        """The release that re-promotes into env the version of container that passed its tests there before
        the one it holds (or version `to`, which must have): from the artifactory, with the env's gates. Its
        version is a first look: the release chooses again under the target's lock (rollback_choice).

        ReleaseError says why not, in one line. Reads the whole ledger: a rollback is rare.
        """
        if env not in ENVIRONMENTS:
            raise InvalidInput(f"unknown environment {clip(env)!r}; the environments are {', '.join(ENVIRONMENTS)}")
        try:
            target = RollbackTarget(env=env, container=container, version=to)  # type: ignore[arg-type]
        except ValidationError as err:
            raise InvalidInput(describe_validation_error(err)) from None
        catalog = self.catalog()
        if container not in catalog.containers:
            raise CatalogError(f"the catalog has no container {clip(container)!r}: {', '.join(catalog.containers)}")
        key = target.release_key()
        release = ReleaseInfo(
            release_key=key,
            now=True,
            deploys=[catalog.deploy(key, container, self.rollback_choice(target), [env])],
            redeploy=True,
            requested_by=by,
            on_failure=catalog.default_on_failure,
            rollback=target,
            access=catalog.access([env]),
        )
        try:
            check_actor(release, by, env)
        except ValueError as e:
            raise RollbackRefused(str(e)) from None
        return release

    def rollback_choice(self, target: RollbackTarget) -> str:
        """The version a rollback-env puts back into its environment, as the ledger says now (see rollback_env)."""
        return rollback_version(
            self.ledger.target_entries(target.env, target.container), target.env, target.container, target.version
        )

    def check_upstream(self, release: ReleaseInfo) -> None:
        """Refuse, before any starts, a release whose deploys cannot enter their first environment (promotion.py)."""
        check_upstream(self, self.ledger, release)

    # --- the steps' parts ------------------------------------------------------------------------------------

    def _simulated_check(self, step: StepInput, check: str) -> Verdict:
        """The simulation's verdict: it fails where FAILING_CHECKS says."""
        name = artifact_name(step.deploy)
        if (name, step.env, check) in self.failing_checks:
            return False, [f"FAILING_CHECKS names {name}:{step.env}:{check}"]
        return True, []

    def _effect_in_place(self, verb: str, step: StepInput, attempt: int) -> None:
        if self.after_effect is not None:
            self.after_effect(verb, step, attempt)

    def _work(self, live: Liveness) -> None:
        # Simulated work, in short slices so the caller can report liveness. A step that takes
        # no time has none to report: a heartbeat would cost it a round trip to the server.
        deadline = time.monotonic() + self.step_seconds
        while (left := deadline - time.monotonic()) > 0:
            live.heartbeat()
            time.sleep(min(left, 0.5))

    def _record(
        self,
        step: StepInput,
        verb: str,
        attempt: int,
        started_at: str,
        applied: bool,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """Record this execution; return whether the ledger counts it as the one that applied the step."""
        entry = step_line(step, verb, attempt, started_at, extra)
        if applied:
            self.ledger.record({**entry, "applied": True})
            return True
        # The effect was in place already. Usually an earlier execution applied it and
        # recorded so; but a crash between the effect and its ledger line leaves no line
        # claiming it, and then this execution claims it, so that exactly one applied line
        # exists per step. (An earlier execution still running, cut off but not dead,
        # could then record a second one; the lock around deploys makes that rare.)
        return self.ledger.record_unless_claimed(entry)


def _checked(step: StepInput, verb: str) -> StepInput:
    """step, validated again: a client that skipped validation must not make a step write outside its folders."""
    try:
        return StepInput.model_validate(step.model_dump(warnings=False))
    except ValidationError as e:
        raise InvalidStep(f"refusing to {verb}: {clip(describe_validation_error(e), QUOTE_MAX)}") from None


def render_config(d: DeployInfo, env: str, release_key: str) -> bytes:
    """The configuration file of d in env: the catalog's values for env, and the artifact they go with.

    "{container}", "{version}" and "{env}" in a string value are replaced, so one endpoint serves every container.
    """
    values = {
        key: value.replace("{container}", d.container_id).replace("{version}", d.version).replace("{env}", env)
        if isinstance(value, str)
        else value
        for key, value in d.config.get(env, {}).items()  # type: ignore[call-overload]
    }
    body = {
        "artifact": artifact_name(d),
        "container": d.container_id,
        "version": d.version,
        "environment": env,
        "release_key": release_key,
        "values": values,
    }
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def build_content(d: DeployInfo, release_key: str) -> bytes:
    """The artifact the simulated build writes: what it was built from, and by which release."""
    return (f"container: {d.container_id}\nversion: {d.version}\nrelease: {release_key}\ngit: {d.git_url}\n").encode()
