"""The release management system being orchestrated: catalog, builds, promotions, tests.

Plain Python with no temporalio import, so it can be used and tested on its own.
Every step is idempotent: run twice for the same release run it has the effect of
once. The ledger records every execution of a step, and says which one applied it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field, ValidationError

from shared import (
    ENVIRONMENTS,
    ApprovalPolicy,
    ApprovalRecord,
    ApprovalReport,
    DeployInfo,
    ReleaseInfo,
    StepInput,
    check_release_key,
    clip,
    describe_validation_error,
)


class ReleaseError(Exception):
    """A problem that retrying cannot fix: the release must stop and say why."""


class UnknownRelease(ReleaseError):
    pass


class CatalogError(ReleaseError):
    pass


class MissingArtifact(ReleaseError):
    pass


class InvalidStep(ReleaseError):
    """A step whose input fails validation, as a client that skipped it could send."""


# Error types a retry cannot fix; workflows list them in their retry policies.
NON_RETRYABLE_ERRORS = [c.__name__ for c in (UnknownRelease, CatalogError, MissingArtifact, InvalidStep)]

# An error message quotes at most this much of what it read, so one line stays one line.
QUOTE_MAX = 300


class StepOutcome(NamedTuple):
    artifact: str
    # False when this execution found the effect already in place (and the ledger already claims it).
    applied: bool


def _noop() -> None:
    pass


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden temporary file and a rename, so a crash leaves old or new, never half."""
    # A name of its own per writer: two releases building the same artifact at once
    # must not write into one temporary file and rename each other's half-written data.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def identity_of(entry: Mapping[str, object]) -> tuple[object, ...]:
    """What a ledger line is about: one step of one deploy in one environment of one release run."""
    return tuple(entry.get(k) for k in ("run_id", "deploy_key", "step", "env"))


class Ledger:
    """Append-only JSON lines, one per execution of a step: the evidence of what ran and what it changed.

    Every execution that completes is recorded, retries included. Of the lines about one
    (run, deploy, step, environment), exactly one says "applied": true: the execution that
    put the effect in place; the others found it done and say false.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, entry: Mapping[str, object]) -> None:
        """Append entry as one line; O(1), whatever the ledger's size."""
        with self._locked() as fd:
            self._append(fd, entry)

    def record_unless_claimed(self, entry: Mapping[str, object]) -> bool:
        """Append entry with applied true if no line claims its effect yet, else false; return which.

        Reads the whole ledger, so only for the rare execution that finds its effect in place.
        """
        with self._locked() as fd:
            entries, _ = self._read(fd)
            applied = not _claimed(entries, identity_of(entry))
            self._append(fd, {**entry, "applied": applied})
            return applied

    def applied_before(self, identity: tuple[object, ...]) -> bool:
        """Whether a line claims the effect of identity (see identity_of); reads the whole ledger."""
        return _claimed(self.entries(), identity)

    def entries(self) -> list[dict[str, object]]:
        return self.read()[0]

    def read(self) -> tuple[list[dict[str, object]], list[int]]:
        """The entries, and the 1-based numbers of lines that are not JSON objects (skipped)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return [], []
        try:
            # Shared lock: never read a line an append has only half written.
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._read(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _locked(self) -> Iterator[int]:
        # The lock orders appends (and the rare check-then-append) across workers sharing the workspace.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _append(fd: int, entry: Mapping[str, object]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        size = os.fstat(fd).st_size
        # A crash mid-append can leave a torn last line with no newline; glued onto it,
        # this record would be unreadable too, so it starts a line of its own.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        while line:
            line = line[os.write(fd, line) :]
        os.fsync(fd)

    @staticmethod
    def _read(fd: int) -> tuple[list[dict[str, object]], list[int]]:
        chunks, offset = [], 0
        while chunk := os.pread(fd, 1 << 16, offset):
            chunks.append(chunk)
            offset += len(chunk)
        entries: list[dict[str, object]] = []
        unreadable: list[int] = []
        for number, raw in enumerate(b"".join(chunks).split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                value = None
            # A torn line, or anything not written by record, is not evidence of a step.
            if isinstance(value, dict):
                entries.append(value)
            else:
                unreadable.append(number)
        return entries, unreadable


def _claimed(entries: list[dict[str, object]], identity: tuple[object, ...]) -> bool:
    # Lines written before "applied" existed were each one applied effect.
    return any(e.get("applied", True) is True and identity_of(e) == identity for e in entries)


class CatalogRelease(BaseModel):
    release_key: str
    release_date: str | None = None
    approved: bool = True
    environments: list[str] = Field(min_length=1)
    versions: dict[str, str] = Field(min_length=1)
    unapproved: list[str] = Field(default_factory=list)
    approval_policy: ApprovalPolicy | None = None


class Catalog(BaseModel):
    containers: dict[str, str]
    default_approval_policy: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    releases: list[CatalogRelease]


# Called by a step once its effect is in place, before its ledger line: (verb, step, attempt).
AfterEffect = Callable[[str, StepInput, int], None]


class ReleaseManagement:
    """Releases as data (the catalog) and the folders artifacts move through.

    after_effect, if set, is called by each step once its effect is in place (put there by
    this execution or an earlier one) and before its ledger line is written: the window in
    which a crash leaves an applied step unrecorded. Fault injection strikes there
    (FAILURE_AT=effect), so that tests make a retry really run an applied step again.
    """

    def __init__(
        self, workspace: Path, catalog: Path, step_seconds: float = 0.0, after_effect: AfterEffect | None = None
    ) -> None:
        self.workspace = workspace
        self.catalog_path = catalog
        self.step_seconds = step_seconds
        self.after_effect = after_effect
        self.artifactory = workspace / "artifactory"
        self.ledger = Ledger(workspace / "ledger.jsonl")

    # --- catalog -------------------------------------------------------------

    def catalog(self) -> Catalog:
        """The catalog, checked; any problem with it is a CatalogError of one line naming the file."""
        path = self.catalog_path
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CatalogError(f"cannot read release catalog {path}: {e.strerror or e}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise CatalogError(f"release catalog {path} is not UTF-8: invalid byte at offset {e.start}") from None
        try:
            catalog = Catalog.model_validate_json(text)
        except ValidationError as e:
            raise CatalogError(
                f"release catalog {path} is invalid: {clip(describe_validation_error(e), QUOTE_MAX)}"
            ) from None
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

    def release_keys(self) -> list[str]:
        return [r.release_key for r in self.catalog().releases]

    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        catalog = self.catalog()
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
            deploys = []
            for container, version in entry.versions.items():
                if container not in catalog.containers:
                    raise CatalogError(
                        f"release {release_key} names container {clip(container)!r}, "
                        f"which the catalog's containers do not list"
                    )
                deploys.append(
                    DeployInfo(
                        deploy_key=f"{release_key}:{container}",
                        container_id=container,
                        version=version,
                        git_url=catalog.containers[container],
                        environments=entry.environments,  # type: ignore[arg-type]
                        approved=container not in entry.unapproved,
                    )
                )
            return ReleaseInfo(
                release_key=release_key,
                release_date=entry.release_date,  # type: ignore[arg-type]
                approved=entry.approved,
                approval_policy=entry.approval_policy or catalog.default_approval_policy,
                deploys=deploys,
            )
        except ValidationError as e:
            raise CatalogError(
                f"release {release_key} in the catalog: {clip(describe_validation_error(e), QUOTE_MAX)}"
            ) from None

    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        return ApprovalReport(
            release_approved=release.approved,
            unapproved_deploys=[d.deploy_key for d in release.deploys if not d.approved],
        )

    def record_approval(self, record: ApprovalRecord, attempt: int = 1) -> None:
        """One ledger line per approved deploy (deploy_key is the release key for the release itself).

        A repeated call (a retry) adds lines with applied false: an approval is claimed once.
        """
        for deploy_key in record.deploy_keys:
            self.ledger.record_unless_claimed(
                {
                    "release_key": record.release_key,
                    "run_id": record.run_id,
                    "deploy_key": deploy_key,
                    "step": "approve",
                    "env": None,
                    "approver": record.approver,
                    "attempt": attempt,
                    "at": record.approved_at.isoformat(timespec="milliseconds"),
                }
            )

    # --- steps ---------------------------------------------------------------

    def env_dir(self, env: str) -> Path:
        return self.workspace / "environments" / env

    def report_path(self, d: DeployInfo, env: str) -> Path:
        return self.artifactory / "reports" / _artifact(d) / f"{env}.json"

    def contents(self, env: str) -> list[str]:
        """Artifacts deployed to env (hidden temporary files excluded)."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def build(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> StepOutcome:
        """Write the artifact; applied if this execution wrote it (it was missing or different)."""
        started = _now()
        step = _checked(step, "build")
        d = step.deploy
        self._work(progress)
        self.artifactory.mkdir(parents=True, exist_ok=True)
        artifact = self.artifactory / _artifact(d)
        content = build_content(d, step.release_key)
        applied = not artifact.exists() or artifact.read_bytes() != content
        if applied:
            atomic_write(artifact, content)
        self._effect_in_place("build", step, attempt)
        return StepOutcome(artifact.name, self._record(step, "build", attempt, started, applied))

    def deploy(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> StepOutcome:
        """Copy the artifact from the environment before; applied if it wrote the file or removed another version.

        The caller runs one deploy per environment and container at a time (a lock held
        outside): removing the container's other versions then never removes a version
        another deploy just put there.
        """
        started = _now()
        step = _checked(step, "deploy")
        d, env = step.deploy, step.env
        name = _artifact(d)
        source_dir, source_label = self._source(env)
        source = source_dir / name
        missing = MissingArtifact(
            f"cannot deploy {d.container_id} {d.version} to {env}: {source_label} does not hold {name}"
        )
        if not source.is_file():
            raise missing
        self._work(progress)
        target_dir = self.env_dir(env)
        target_dir.mkdir(parents=True, exist_ok=True)
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise missing from None  # removed while this step worked: no retry brings it back
        target = target_dir / name
        applied = not target.exists() or target.read_bytes() != data
        if applied:
            atomic_write(target, data)
        # Only once the new version is in place does the old one go: a crash in
        # between leaves both, never neither.
        for old in target_dir.iterdir():
            if old.name != name and not old.name.startswith(".") and _container_of(old.name) == d.container_id:
                try:
                    old.unlink()
                except FileNotFoundError:
                    continue
                applied = True
        self._effect_in_place("deploy", step, attempt)
        return StepOutcome(name, self._record(step, "deploy", attempt, started, applied))

    def test(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> StepOutcome:
        """Test the deployed artifact and write its report; applied if this run had no report yet."""
        started = _now()
        step = _checked(step, "test")
        d, env = step.deploy, step.env
        name = _artifact(d)
        if not (self.env_dir(env) / name).is_file():
            raise MissingArtifact(f"cannot test {d.container_id} {d.version} in {env}: {env} does not hold {name}")
        self._work(progress)
        report = self.report_path(d, env)
        applied = _report_run(report) != step.run_id
        if applied:
            # A report of another run is replaced: the report says what this run found.
            report.parent.mkdir(parents=True, exist_ok=True)
            body = {
                "container": d.container_id,
                "version": d.version,
                "environment": env,
                "passed": True,
                "release_key": step.release_key,
                "run_id": step.run_id,
                "started_at": started,
                "finished_at": _now(),
            }
            atomic_write(report, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
        self._effect_in_place("test", step, attempt)
        return StepOutcome(name, self._record(step, "test", attempt, started, applied))

    def _source(self, env: str) -> tuple[Path, str]:
        i = ENVIRONMENTS.index(env)
        if i == 0:
            return self.artifactory, "the artifactory"
        return self.env_dir(ENVIRONMENTS[i - 1]), ENVIRONMENTS[i - 1]

    def _effect_in_place(self, verb: str, step: StepInput, attempt: int) -> None:
        if self.after_effect is not None:
            self.after_effect(verb, step, attempt)

    def _work(self, progress: Callable[[], None]) -> None:
        # Simulated work, in short slices so the caller can report liveness.
        deadline = time.monotonic() + self.step_seconds
        while (left := deadline - time.monotonic()) > 0:
            progress()
            time.sleep(min(left, 0.5))
        progress()

    def _record(self, step: StepInput, verb: str, attempt: int, started_at: str, applied: bool) -> bool:
        """Record this execution; return whether the ledger counts it as the one that applied the step."""
        d = step.deploy
        entry: dict[str, object] = {
            "release_key": step.release_key,
            "run_id": step.run_id,
            "deploy_key": d.deploy_key,
            "container": d.container_id,
            "version": d.version,
            "step": verb,
            "env": step.env,
            "attempt": attempt,
            "started_at": started_at,
            "at": _now(),
        }
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


def _report_run(report: Path) -> object:
    """The run_id of an existing test report, or None if there is none that reads."""
    try:
        body = json.loads(report.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # not a report this tool wrote whole: write it again
    return body.get("run_id") if isinstance(body, dict) else None


def _artifact(d: DeployInfo) -> str:
    return f"{d.container_id}-{d.version}"


def _container_of(artifact_name: str) -> str:
    return artifact_name.rsplit("-", 1)[0]


def build_content(d: DeployInfo, release_key: str) -> bytes:
    return (f"container: {d.container_id}\nversion: {d.version}\nrelease: {release_key}\ngit: {d.git_url}\n").encode()
