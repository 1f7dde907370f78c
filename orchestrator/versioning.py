"""Worker Versioning: which worker version a worker is (a deployment name and a build id), and making it current.

A release is pinned to the worker version that started it, and runs to its end on that version's workers, so
new workflow code never replays an old release's history. docs/design.md (Versioning) has the whole policy.
The build id is derived from the workflow code itself: a change to it is a new version; a worker restarted on
the same code is the same version.
"""

from __future__ import annotations

import asyncio
import hashlib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from shared import REPO_ROOT

# The code that runs inside workflows: what a history replays against. A change here is a new worker version.
WORKFLOW_CODE = (
    "workflows.py",
    "shared.py",
    "orchestrator/flow/*.py",
    "orchestrator/locks.py",
    "orchestrator/render.py",
    "orchestrator/freeze.py",
    "orchestrator/errors.py",
    "orchestrator/names.py",
)
# Answers that say the server has no Worker Versioning for this namespace.
UNSUPPORTED = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED)
# Answers while the server has not registered this version's pollers yet, or another change raced ours.
NOT_YET = (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.ABORTED, RPCStatusCode.UNAVAILABLE)
SUPERSEDED = (
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINING,
    WorkerDeploymentVersionStatus.WORKER_DEPLOYMENT_VERSION_STATUS_DRAINED,
)
# How long a starting worker waits for the server to know its version before it gives up making it current.
REGISTER_SECONDS = 60.0


def project_version() -> str:
    """The version in pyproject.toml, read where the code is (not an installed copy's metadata)."""
    try:
        return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


def code_digest(root: Path = REPO_ROOT) -> str:
    """12 hex digits of the SHA-256 of the workflow code under root, file by file in path order."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in WORKFLOW_CODE for p in root.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def default_build_id() -> str:
    """The project's version and its workflow code's digest: "1.0.0-3f2a9c0d1b2e"."""
    return f"{project_version()}-{code_digest()}"


def deployment_config(deployment: str, build_id: str) -> WorkerDeploymentConfig:
    """A versioned worker: every workflow it starts is pinned to this version (the worker's default behavior)."""
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=deployment, build_id=build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


async def supported(client: Client, deployment: str) -> bool:
    """Whether the server keeps worker deployments for this namespace."""
    try:
        await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError as e:
        if e.status in UNSUPPORTED:
            return False
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
    return True


async def make_current(
    client: Client, deployment: str, build_id: str, waited: Callable[[str], Any] = lambda _: None
) -> str:
    """Make this version the deployment's current one, once its worker polls: "set", "already current", or
    "superseded" (a newer version was current since: this older one serves its own releases and takes no new
    ones). Idempotent. waited(reason) is called while the server does not know the version yet."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + REGISTER_SECONDS, 0.2
    while True:
        try:
            return await _make_current(client, deployment, build_id)
        except RPCError as e:
            if e.status not in NOT_YET or loop.time() >= deadline:
                raise
            waited(e.message)
        except LookupError as e:
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"the server does not list worker version {build_id} after {REGISTER_SECONDS:g} s"
                ) from e
            waited(str(e))
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


async def _make_current(client: Client, deployment: str, build_id: str) -> str:
    described = await client.workflow_service.describe_worker_deployment(
        DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
    )
    info = described.worker_deployment_info
    if info.routing_config.current_deployment_version.build_id == build_id:
        return "already current"
    mine = [v for v in info.version_summaries if v.deployment_version.build_id == build_id]
    if not mine:
        raise LookupError(f"version {build_id} is not registered yet")
    if mine[0].status in SUPERSEDED:
        return "superseded"
    await client.workflow_service.set_worker_deployment_current_version(
        SetWorkerDeploymentCurrentVersionRequest(
            namespace=client.namespace,
            deployment_name=deployment,
            build_id=build_id,
            conflict_token=described.conflict_token,
            identity=client.identity,
        )
    )
    return "set"


async def current_build_id(client: Client, deployment: str) -> str | None:
    """The deployment's current build id; None if it has none (or no deployment)."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError as e:
        if e.status in (RPCStatusCode.NOT_FOUND, *UNSUPPORTED):
            return None
        raise
    return described.worker_deployment_info.routing_config.current_deployment_version.build_id or None
