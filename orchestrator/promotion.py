"""Verified upstream: a deploy enters an environment only with a version the ledger shows passing its tests in
the environment before (DEV: built into the artifactory); a file there is not enough.

Plain Python, no temporalio. O(1) per question, through the ledger's index.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.catalog import QUOTE_MAX
from orchestrator.errors import MissingArtifact, NotVerified, ReleaseError
from orchestrator.ledger import Ledger
from orchestrator.workspace import Workspace, artifact_name
from shared import ARTIFACTORY, ENVIRONMENTS, DeployInfo, ReleaseInfo, clip


def promotable(
    ws: Workspace, ledger: Ledger, d: DeployInfo, env: str, redeploy: bool = False
) -> tuple[Path, MissingArtifact]:
    """The source file of d's promotion into env, and the error to raise if it goes missing.

    NotVerified unless the ledger shows d's version passing its tests in the environment before
    (DEV: built into the artifactory). MissingArtifact if the file is not there. A redeploy (rollback-env)
    takes the artifactory's copy of a version that passed in env itself.
    """
    i = ENVIRONMENTS.index(env)
    upstream = env if redeploy else ENVIRONMENTS[i - 1] if i else ARTIFACTORY
    source_dir = ws.artifactory if redeploy or not i else ws.env_dir(ENVIRONMENTS[i - 1])
    source_label = "the artifactory" if redeploy or not i else ENVIRONMENTS[i - 1]
    if not ledger.verified(d.container_id, d.version, upstream):
        why = (
            "the artifactory never built it" if upstream == ARTIFACTORY else f"it never passed its tests in {upstream}"
        )
        raise NotVerified(f"cannot deploy {d.container_id} {d.version} to {env}: {why}")
    name = artifact_name(d)
    missing = MissingArtifact(
        f"cannot deploy {d.container_id} {d.version} to {env}: {source_label} does not hold {name}"
    )
    if not (source_dir / name).is_file():
        raise missing
    return source_dir / name, missing


def check_upstream(ws: Workspace, ledger: Ledger, release: ReleaseInfo) -> None:
    """Refuse, before any of them starts, a release whose deploys cannot enter their first environment.

    Deploys that start in DEV are built by the release itself; the others promote what the
    environment before holds, and must be verified there. Checked again by each deploy.
    """
    refusals: list[ReleaseError] = []
    for d in release.deploys:
        if d.environments[0] != ENVIRONMENTS[0] or release.redeploy:
            try:
                promotable(ws, ledger, d, d.environments[0], release.redeploy)
            except ReleaseError as e:
                refusals.append(e)
    if refusals:
        raise type(refusals[0])(clip("; ".join(str(e) for e in refusals), QUOTE_MAX * 3))
