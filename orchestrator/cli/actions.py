"""The subcommands that act on a release that exists: status, approve, unfreeze, retry, rollback, cancel, list.

Each prints its answer and returns an exit code; a refusal is a UserError of one line, and nothing changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import is_cancelled_exception

from orchestrator.cli import waits
from orchestrator.cli.diagnostics import (
    UserError,
    final_progress,
    latest_run,
    no_worker,
    progress,
    release_polled,
    start_one,
    task_trouble,
    troubles,
)
from orchestrator.cli.follower import start_worker_hint, ui_link
from orchestrator.errors import root_cause
from orchestrator.flow.release_run import RELEASE_STATUS_ATTRIBUTE
from orchestrator.names import printable
from orchestrator.render import render_progress
from orchestrator.settings import Settings
from shared import (
    FROZEN,
    Approval,
    ApprovalReply,
    Decision,
    DecisionReply,
    ReleaseState,
    Unfreeze,
    UnfreezeReply,
    release_workflow_id,
)
from utils import script_command


def status_word(status: WorkflowExecutionStatus | None) -> str:
    """Temporal's word for a run's state, spelled as the release's own words are (CANCELLED, not CANCELED)."""
    if status is None:
        return "unknown"
    return "CANCELLED" if status == WorkflowExecutionStatus.CANCELED else status.name


async def running_release(client: Client, settings: Settings, key: str, doing: str) -> WorkflowHandle:
    """The running release, with a worker to act on it; UserError says why not."""
    description = await latest_run(client, key)
    if description is None:
        raise UserError(f"release {key} was never started: nothing to {doing}")
    if description.status != WorkflowExecutionStatus.RUNNING:
        run = status_word(description.status)
        raise UserError(f"release {key} is not running (its latest run is {run}): nothing to {doing}")
    # Only a worker can answer; without one the request would wait silently.
    if not await release_polled(client, description):
        hint = start_worker_hint(settings, description.task_queue)
        raise UserError(
            f"{no_worker(description)}: {start_one(description, hint, quoted=True)} and try again; nothing was sent",
            code=3,
        )
    return client.get_workflow_handle(release_workflow_id(key))


async def status(client: Client, settings: Settings, target: dict, key: str) -> int:
    run = await latest_run(client, key)
    if run is None:
        raise UserError(f"release {key} was never started")
    # The release's own word (AWAITING_APPROVAL, SUCCESS...) where it set one, else Temporal's.
    word = run.typed_search_attributes.get(RELEASE_STATUS_ATTRIBUTE) or status_word(run.status)
    running = run.status == WorkflowExecutionStatus.RUNNING
    hint = start_worker_hint(settings, run.task_queue)
    # Only a worker answers the progress query; look first rather than wait out its timeout.
    if not await release_polled(client, run):
        if running:
            print(
                f"Release {key}: {word}; {no_worker(run)}, so it waits "
                f"and its progress cannot be read: {start_one(run, hint, quoted=True)}"
            )
        else:
            print(f"Release {key}: {word} (reading its progress needs a worker: {start_one(run, hint, quoted=True)})")
    else:
        failing = await task_trouble(client, run) if running else None
        if failing:
            # Its queries would wait for a workflow task that does not come; the error says why.
            print(f"Release {key}: {word}, but {failing.line}")
        else:
            state = await progress(client.get_workflow_handle(release_workflow_id(key)))
            if state is None:
                # A worker polls, so it is not missing: busy, or gone within the last minute.
                print(
                    f"Release {key}: {word} (its progress query got no answer within "
                    f"{waits.WORKER_ANSWER.seconds} s: the worker may be busy, or have just stopped)"
                )
            else:
                _print_state(state, key)
        for trouble in await troubles(client, run) if running else []:
            if not trouble.release_task:
                print(f"  {trouble.line}")
    if link := ui_link(target, release_workflow_id(key)):
        print(f"Web UI: {link}")
    return 0


def _print_state(state: ReleaseState, key: str) -> None:
    """The release's table, its last events, and what a person can do now."""
    print(render_progress(state))
    for event in state.events[-5:]:
        print(f"  {event}")
    if state.status == FROZEN:
        hint = script_command("run_workflow.py", "unfreeze", key, "--by", "NAME")
        print(f"  override the freeze for this release with: {hint}")
    for d in state.deploys:
        if any(c.status == "held" for c in d.cells.values()):
            pick = ["--deploy", d.container_id]
            retry = script_command("run_workflow.py", "retry", key, "--by", "NAME", *pick)
            back = script_command("run_workflow.py", "rollback", key, "--by", "NAME", *pick)
            print(f"  {d.artifact} is held: {retry}  (after a fix), or {back}")


async def send_update(
    handle: WorkflowHandle, update: str, arg: BaseModel, reply: type[BaseModel], key: str, what: str
) -> Any:
    """The release's answer to the Update named `update` (ReleaseWorkflow's: named, so that the command line does
    not import the workflow code); its validator's refusal, or no answer, as a UserError."""
    try:
        return await handle.execute_update(update, arg, result_type=reply, rpc_timeout=waits.WORKER_ANSWER)
    except WorkflowUpdateFailedError as e:
        cause = root_cause(e)
        raise UserError(getattr(cause, "message", str(cause))) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # The server keeps an update it has admitted, so it may still apply.
        raise UserError(
            f"the release did not answer within {waits.WORKER_ANSWER.seconds} s (its worker may be busy, or have "
            f"just stopped); the {what} may still apply: check with "
            f"`{script_command('run_workflow.py', 'status', key)}`",
            code=3,
        ) from None


async def approve(
    client: Client, settings: Settings, key: str, approver: str, deploy: str | None, env: str | None = None
) -> int:
    handle = await running_release(client, settings, key, "approve")
    approval = Approval(approver=approver, deploy=deploy, env=env, identity=client.identity)
    reply = await send_update(handle, "approve", approval, ApprovalReply, key, "approval")
    approved = ", ".join(reply.approved) or "nothing"
    print(f"Approved by {approver}: {approved}; still waiting: {', '.join(reply.still_waiting) or 'nothing'}")
    return 0


async def unfreeze(client: Client, settings: Settings, key: str, approver: str) -> int:
    handle = await running_release(client, settings, key, "unfreeze")
    unfreeze = Unfreeze(approver=approver, identity=client.identity)
    reply = await send_update(handle, "unfreeze", unfreeze, UnfreezeReply, key, "unfreeze")
    print(f"Unfrozen by {approver}: release {key} promotes into {', '.join(reply.environments)} now ({reply.status})")
    return 0


async def decide(client: Client, settings: Settings, key: str, action: str, approver: str, deploy: str | None) -> int:
    handle = await running_release(client, settings, key, action)
    decision = Decision(approver=approver, deploy=deploy, identity=client.identity)
    reply = await send_update(handle, action, decision, DecisionReply, key, action)
    print(f"{action.capitalize()} of {reply.deploy} asked by {approver} (release {key}: {reply.status})")
    return 0


async def cancel(client: Client, settings: Settings, key: str, by: str) -> int:
    handle = await running_release(client, settings, key, "cancel")
    # Who cancels, for the release to record; then the cancel itself, which a signal cannot stand in for.
    await handle.signal("cancelled_by", Decision(approver=by, identity=client.identity))
    await handle.cancel()
    print(f"Cancel requested: release {key} stops once the steps in flight finish.", flush=True)
    try:
        await handle.result()
    except WorkflowFailureError as e:
        # A cancel that lands while a step runs may arrive as that step's error, wrapping the cancel.
        if is_cancelled_exception(e.cause):
            state = await final_progress(handle)
            print(f"Release {key}: CANCELLED ({state.error if state else 'see status'})")
            return 0
        print(f"Release {key} failed before the cancel took effect: {printable(str(root_cause(e)))}")
        return 1
    print(f"Release {key} finished before the cancel took effect: SUCCESS")
    return 1


async def list_releases(client: Client, keys: list[str]) -> int:
    async def latest(key: str) -> str:
        run = await latest_run(client, key)
        if run is None:
            return "never run"
        # The release's own word (SUCCESS, AWAITING_APPROVAL...) where it set one, else Temporal's.
        return run.typed_search_attributes.get(RELEASE_STATUS_ATTRIBUTE) or status_word(run.status)

    for key, latest_status in zip(keys, await asyncio.gather(*(latest(k) for k in keys)), strict=True):
        print(f"{printable(key):<34} {latest_status}")
    return 0
