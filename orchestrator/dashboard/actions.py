"""The dashboard's actions: approve, unfreeze, retry, rollback, cancel and rollback-env, each sent as the command
line sends it (the same Update, Signal or start), so the workflow applies the same rules; a refusal is one line.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError

from orchestrator.cli.actions import running_release, send_update
from orchestrator.cli.diagnostics import UserError
from orchestrator.cli.follower import begin
from orchestrator.errors import root_cause
from orchestrator.inventory import check_environment
from orchestrator.names import describe_validation_error, printable
from orchestrator.settings import Settings
from shared import (
    Approval,
    ApprovalReply,
    Decision,
    DecisionReply,
    ReleaseRequest,
    RollbackTarget,
    Unfreeze,
    UnfreezeReply,
)

# How long a rollback-env's answer is awaited before the page says it runs (a refusal comes within a second).
ROLLBACK_WAIT_SECONDS = 5
ACTIONS = ("approve", "unfreeze", "retry", "rollback", "cancel", "rollback-env")


def _field(form: dict[str, str], name: str) -> str | None:
    value = (form.get(name) or "").strip()
    return value or None


async def act(client: Client, settings: Settings, target: dict, by: str, action: str, form: dict[str, str]) -> str:
    """Do action as `by`; what happened, in one line. UserError (one line) when refused: nothing changed."""
    identity = f"{client.identity} (dashboard)"
    if action == "rollback-env":
        return await _rollback_env(client, settings, target, by, form, identity)
    key = _field(form, "release") or ""
    if action not in ACTIONS or not key:
        raise UserError(f"unknown action {action!r}: nothing was sent")
    handle = await running_release(client, settings, key, action)
    deploy, env = _field(form, "deploy"), _field(form, "env")
    if action == "approve":
        reply = await send_update(
            handle,
            "approve",
            Approval(approver=by, deploy=deploy, env=env, identity=identity),
            ApprovalReply,
            key,
            "approval",
        )
        waiting = ", ".join(reply.still_waiting) or "nothing"
        return f"Approved by {by}: {', '.join(reply.approved) or 'nothing'}; still waiting: {waiting}"
    if action == "unfreeze":
        reply = await send_update(
            handle, "unfreeze", Unfreeze(approver=by, identity=identity), UnfreezeReply, key, "unfreeze"
        )
        return f"Unfrozen by {by}: release {key} promotes into {', '.join(reply.environments)} now ({reply.status})"
    decision = Decision(approver=by, deploy=deploy, identity=identity)
    if action == "cancel":
        await handle.signal("cancelled_by", decision)
        await handle.cancel()
        return f"Cancel requested by {by}: release {key} stops once the steps in flight finish"
    reply = await send_update(handle, action, decision, DecisionReply, key, action)
    return f"{action.capitalize()} of {reply.deploy} asked by {by} (release {key}: {reply.status})"


async def _rollback_env(
    client: Client, settings: Settings, target: dict, by: str, form: dict[str, str], identity: str
) -> str:
    """Start the rollback release of one target, as `run_workflow.py rollback-env` does."""
    env, container, version = (_field(form, name) for name in ("env", "container", "version"))
    try:
        # As run_workflow.py checks it: the environment by name, the container and version by the model.
        rollback = RollbackTarget(env=check_environment(env or ""), container=container or "", version=version)
    except ValidationError as e:
        raise UserError(describe_validation_error(e).split(": ", 1)[-1]) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    key = rollback.release_key()
    request = ReleaseRequest(release_key=key, now=True, by=by, rollback=rollback, identity=identity)
    handle, _ = await begin(client, settings, target, request)
    to = f"to {version}" if version else "to the version before"
    try:
        # Most refusals (no earlier version passed there) come as the release gathers: said here, in one line.
        result = await asyncio.wait_for(handle.result(), ROLLBACK_WAIT_SECONDS)
    except TimeoutError:
        return f"Rollback of {container} in {env} {to} started by {by}: release {key} runs"
    except WorkflowFailureError as e:
        cause = root_cause(e)
        raise UserError(printable(getattr(cause, "message", "") or str(cause))) from None
    return f"Rolled back by {by}: {env} holds {result.deploys[0].artifact} again (release {key})"
