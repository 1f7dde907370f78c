"""Who may act on a release, as the catalog says: who approves releases, who acts in each environment (approves
entry, unfreezes, retries, rolls back), and that the person who started a release may not approve its entry.

Plain Python, no temporalio: the workflow's validators and Signal handlers apply the same rules, and a refusal
names the rule. A name is what the sender asserts: docs/design.md says what that is worth.
"""

from __future__ import annotations

from shared import EnvironmentAccess, ReleaseInfo


def check_release_approver(release: ReleaseInfo, name: str) -> None:
    """ValueError unless name may approve the release and its deploys (the catalog's release_approvers)."""
    if release.release_approvers is not None and name not in release.release_approvers:
        raise ValueError(f"refused: {name} is not a release approver (the catalog's release_approvers)")


def check_actor(release: ReleaseInfo, name: str, env: str) -> None:
    """ValueError unless name may act in env: approve its entry, unfreeze, retry or roll back there."""
    approvers = access_to(release, env).approvers
    if approvers is not None and name not in approvers:
        raise ValueError(f"refused: {name} is not an approver of {env}")


def check_entry_approver(release: ReleaseInfo, name: str, env: str) -> None:
    """ValueError unless name may approve a deploy's entry into env."""
    access = access_to(release, env)
    if access.required_approvals == 0:
        raise ValueError(f"{env} needs no approval to enter (its required_approvals is 0)")
    check_actor(release, name, env)
    if access.prevent_self_approval and name == release.started_by:
        raise ValueError(f"refused: {name} started the release and may not approve its entry into {env}")


def access_to(release: ReleaseInfo, env: str) -> EnvironmentAccess:
    return release.access.get(env) or EnvironmentAccess()  # type: ignore[call-overload]
