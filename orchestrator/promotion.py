"""Verified upstream: a deploy enters an environment only with the bytes the ledger shows passing their tests in
the environment before (DEV: built into the artifactory), by SHA-256; a file there is not enough.

Plain Python, no temporalio. O(1) per question, through the ledger's index.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from orchestrator.catalog import QUOTE_MAX
from orchestrator.errors import MissingArtifact, NotVerified, ReleaseError
from orchestrator.ledger import Ledger
from orchestrator.names import clip
from orchestrator.workspace import Workspace, artifact_name, sha256_of
from shared import ARTIFACTORY, ENVIRONMENTS, DeployInfo, ReleaseInfo


class Source(NamedTuple):
    """Where a deploy copies from: the file, the digest its bytes must have, and the errors to raise if the file
    goes missing or its bytes change before they are read."""

    path: Path
    digest: str
    missing: MissingArtifact
    changed: NotVerified


def promotable(ws: Workspace, ledger: Ledger, d: DeployInfo, env: str, redeploy: bool = False) -> Source:
    """What d's promotion into env copies, proven by the ledger.

    The ledger must show d's version passing its tests in the environment before (an explicit pass; DEV: built
    into the artifactory), with the digest of the bytes that passed, and the file there must still have those
    bytes: NotVerified otherwise, LedgerBroken while the ledger's chain is broken. MissingArtifact if the file is
    not there. A redeploy (rollback-env) copies the artifactory's build of a version that passed in env itself.
    """
    i = ENVIRONMENTS.index(env)
    upstream = env if redeploy else ENVIRONMENTS[i - 1] if i else ARTIFACTORY
    source_dir = ws.artifactory if redeploy or not i else ws.env_dir(ENVIRONMENTS[i - 1])
    source_label = "the artifactory" if redeploy or not i else ENVIRONMENTS[i - 1]
    refused = f"cannot deploy {d.container_id} {d.version} to {env}"
    proof = ledger.verified(d.container_id, d.version, upstream)
    if not proof.passed:
        why = (
            "the artifactory never built it" if upstream == ARTIFACTORY else f"it never passed its tests in {upstream}"
        )
        raise NotVerified(f"{refused}: {why}")
    if proof.digest is None:
        raise NotVerified(
            f"{refused}: its proof in {_place(upstream)} was written before 1.1 and names no digest: release it "
            f"through {_place(upstream)} again"
        )
    name = artifact_name(d)
    missing = MissingArtifact(f"{refused}: {source_label} does not hold {name}")
    path = ws.inside(source_dir / name)
    if not path.is_file():
        raise missing
    which = (
        f"the build that passed in {env}"
        if redeploy
        else "the build it recorded"
        if upstream == ARTIFACTORY
        else "the build that passed there"
    )
    changed = NotVerified(f"{refused}: the bytes in {source_label} are not {which}")
    if sha256_of(path) != proof.digest:
        raise changed
    return Source(path, proof.digest, missing, changed)


def _place(place: str) -> str:
    return "the artifactory" if place == ARTIFACTORY else place


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
