"""The workspace's folders and files, and the writes every step makes: atomic, and only when the bytes change.

Plain Python, no temporalio. Artifacts are files named "<container>-<version>" in the artifactory and in each
environment's folder; an environment's config/ folder holds one configuration file per container.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import suppress
from pathlib import Path

from orchestrator.errors import OutsideWorkspace
from shared import DeployInfo, StepInput

# The config file as a rollback keeps it: not an artifact's name, which has a version after its last "-".
KEPT_CONFIG = "config.json"


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


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write data atomically unless path already holds it; whether it wrote."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write(path, data)
    return True


def bytes_of(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read in pieces."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def artifact_name(d: DeployInfo) -> str:
    return f"{d.container_id}-{d.version}"


def container_of(artifact: str) -> str:
    return artifact.rsplit("-", 1)[0]


class Workspace:
    """Where a workspace keeps what: the artifactory, each environment's folder, reports, rollback keepsakes."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.artifactory = workspace / "artifactory"

    def inside(self, path: Path) -> Path:
        """path, if no folder or file on its way from the workspace is a symbolic link: a link could lead outside
        the workspace (or into another environment), and the worker reads and writes only inside it.
        OutsideWorkspace, in one line, otherwise."""
        try:
            parts = path.relative_to(self.workspace).parts
        except ValueError:
            raise OutsideWorkspace(f"refused: {path} is outside the workspace {self.workspace}") from None
        here = self.workspace
        for part in parts:
            here = here / part
            if here.is_symlink():
                where = here.relative_to(self.workspace)
                raise OutsideWorkspace(
                    f"refused: {where} in the workspace is a symbolic link (to {os.readlink(here)}): "
                    "the worker follows no links"
                )
        return path

    def env_dir(self, env: str) -> Path:
        return self.inside(self.workspace / "environments" / env)

    def artifact_path(self, d: DeployInfo) -> Path:
        return self.inside(self.artifactory / artifact_name(d))

    def report_path(self, d: DeployInfo, env: str, check: str, retry: int = 0) -> Path:
        """A check's report; a try a person asked for (retry) writes its own, beside the failed try's."""
        suffix = f".retry{retry}" if retry else ""
        return self.inside(self.artifactory / "reports" / artifact_name(d) / f"{env}-{check}{suffix}.json")

    def config_path(self, env: str, container: str) -> Path:
        return self.inside(self.env_dir(env) / "config" / f"{container}.json")

    def kept_path(self, step: StepInput) -> Path:
        """Where a deploy keeps what step.env held of its container before the run changed it."""
        return self.inside(self.env_dir(step.env) / ".rollback" / step.run_id / step.deploy.container_id)

    def contents(self, env: str) -> list[str]:
        """Artifacts deployed to env (hidden temporary files excluded)."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def files_of(self, env: str, container: str) -> list[Path]:
        """The artifact files of container in env."""
        folder = self.env_dir(env)
        if not folder.is_dir():
            return []
        # By name first: a folder holds every container's artifacts, and only this container's are looked at.
        with os.scandir(folder) as entries:
            names = [
                e.name
                for e in entries
                if not e.name.startswith(".") and container_of(e.name) == container and (e.is_file() or e.is_symlink())
            ]
        return [self.inside(folder / name) for name in names]
