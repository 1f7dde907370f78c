"""The release management system being orchestrated: catalog, builds, promotions, tests.

Plain Python with no temporalio import, so it can be used and tested on its own.
Every step is idempotent: run twice for the same release run it has the effect of
once, and it records itself in the ledger once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from shared import (
    ENVIRONMENTS,
    ApprovalPolicy,
    ApprovalRecord,
    ApprovalReport,
    DeployInfo,
    ReleaseInfo,
    StepInput,
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


# Error types a retry cannot fix; workflows list them in their retry policies.
NON_RETRYABLE_ERRORS = [c.__name__ for c in (UnknownRelease, CatalogError, MissingArtifact)]


def _noop() -> None:
    pass


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden temporary file and a rename, so a crash leaves old or new, never half."""
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Ledger:
    """Append-only JSON lines, one per side effect: the evidence that nothing ran twice."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, entry: dict[str, object]) -> bool:
        """Append entry unless one for the same (run, deploy, step, env) is there already."""
        identity = _identity(entry)
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        # The lock makes check-then-append atomic across workers sharing the workspace;
        # one write() of a whole line in append mode never leaves half a line behind.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if any(_identity(e) == identity for e in self._read(fd)):
                return False
            os.write(fd, line)
            os.fsync(fd)
            return True
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return self._read(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> list[dict[str, object]]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        entries = []
        for raw in b"".join(chunks).splitlines():
            try:
                entries.append(json.loads(raw))
            except ValueError:
                continue  # a torn line from a power cut is not evidence of a step
        return entries


def _identity(entry: dict[str, object]) -> tuple[object, ...]:
    return tuple(entry.get(k) for k in ("run_id", "deploy_key", "step", "env"))


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


class ReleaseManagement:
    """Releases as data (the catalog) and the folders artifacts move through."""

    def __init__(self, workspace: Path, catalog: Path, step_seconds: float = 0.0) -> None:
        self.workspace = workspace
        self.catalog_path = catalog
        self.step_seconds = step_seconds
        self.artifactory = workspace / "artifactory"
        self.ledger = Ledger(workspace / "ledger.jsonl")

    # --- catalog -------------------------------------------------------------

    def catalog(self) -> Catalog:
        try:
            raw = self.catalog_path.read_text()
        except OSError as e:
            raise CatalogError(f"cannot read release catalog {self.catalog_path}: {e.strerror}") from None
        try:
            return Catalog.model_validate_json(raw)
        except ValidationError as e:
            raise CatalogError(
                f"release catalog {self.catalog_path} is invalid: {describe_validation_error(e)}"
            ) from None

    def release_keys(self) -> list[str]:
        return [r.release_key for r in self.catalog().releases]

    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        catalog = self.catalog()
        entry = next((r for r in catalog.releases if r.release_key == release_key), None)
        if entry is None:
            known = ", ".join(r.release_key for r in catalog.releases)
            raise UnknownRelease(f"unknown release key {release_key!r}; known keys: {known}")
        try:
            deploys = []
            for container, version in entry.versions.items():
                if container not in catalog.containers:
                    raise CatalogError(
                        f"release {release_key} names container {container!r}, "
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
            raise CatalogError(f"release {release_key} in the catalog: {describe_validation_error(e)}") from None

    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        return ApprovalReport(
            release_approved=release.approved,
            unapproved_deploys=[d.deploy_key for d in release.deploys if not d.approved],
        )

    def record_approval(self, record: ApprovalRecord, attempt: int = 1) -> None:
        """One ledger line per approved deploy (deploy_key is the release key for the release itself)."""
        for deploy_key in record.deploy_keys:
            self.ledger.record(
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

    def contents(self, env: str) -> list[str]:
        """Artifacts deployed to env (hidden temporary files excluded)."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def build(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> str:
        d = step.deploy
        self._work(progress)
        self.artifactory.mkdir(parents=True, exist_ok=True)
        artifact = self.artifactory / _artifact(d)
        content = build_content(d, step.release_key)
        if not artifact.exists() or artifact.read_bytes() != content:
            atomic_write(artifact, content)
        self._record(step, "build", attempt)
        return artifact.name

    def deploy(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> str:
        d, env = step.deploy, step.env
        name = _artifact(d)
        source_dir, source_label = self._source(env)
        source = source_dir / name
        if not source.is_file():
            raise MissingArtifact(
                f"cannot deploy {d.container_id} {d.version} to {env}: {source_label} does not hold {name}"
            )
        self._work(progress)
        target_dir = self.env_dir(env)
        target_dir.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        target = target_dir / name
        if not target.exists() or target.read_bytes() != data:
            atomic_write(target, data)
        # Only once the new version is in place does the old one go: a crash in
        # between leaves both, never neither.
        for old in target_dir.iterdir():
            if old.name != name and _container_of(old.name) == d.container_id:
                old.unlink(missing_ok=True)
        self._record(step, "deploy", attempt)
        return name

    def test(self, step: StepInput, attempt: int = 1, progress: Callable[[], None] = _noop) -> str:
        d, env = step.deploy, step.env
        name = _artifact(d)
        if not (self.env_dir(env) / name).is_file():
            raise MissingArtifact(f"cannot test {d.container_id} {d.version} in {env}: {env} does not hold {name}")
        self._work(progress)
        self._record(step, "test", attempt)
        return name

    def _source(self, env: str) -> tuple[Path, str]:
        i = ENVIRONMENTS.index(env)
        if i == 0:
            return self.artifactory, "the artifactory"
        return self.env_dir(ENVIRONMENTS[i - 1]), ENVIRONMENTS[i - 1]

    def _work(self, progress: Callable[[], None]) -> None:
        # Simulated work, in short slices so the caller can report liveness.
        deadline = time.monotonic() + self.step_seconds
        while (left := deadline - time.monotonic()) > 0:
            progress()
            time.sleep(min(left, 0.5))
        progress()

    def _record(self, step: StepInput, verb: str, attempt: int) -> None:
        d = step.deploy
        self.ledger.record(
            {
                "release_key": step.release_key,
                "run_id": step.run_id,
                "deploy_key": d.deploy_key,
                "container": d.container_id,
                "version": d.version,
                "step": verb,
                "env": step.env,
                "attempt": attempt,
                "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            }
        )


def _artifact(d: DeployInfo) -> str:
    return f"{d.container_id}-{d.version}"


def _container_of(artifact_name: str) -> str:
    return artifact_name.rsplit("-", 1)[0]


def build_content(d: DeployInfo, release_key: str) -> bytes:
    return (f"container: {d.container_id}\nversion: {d.version}\nrelease: {release_key}\ngit: {d.git_url}\n").encode()
