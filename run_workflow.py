"""Start, follow, approve and cancel releases.

    python run_workflow.py [--release-key KEY] [--now]    # start a release and follow it to its result
    python run_workflow.py status KEY                      # its progress: deploys x environments
    python run_workflow.py approve KEY --by NAME [--deploy CONTAINER]
    python run_workflow.py cancel KEY                      # stop between steps; says what was deployed
    python run_workflow.py list                            # the catalog's releases and their latest runs

Starting a release that is already running attaches to it and follows it.
KEY defaults to RELEASE-NOV-23-INITIAL; `--list` is an alias of `list`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError
from temporalio.service import RPCError, RPCStatusCode

from release_management import CatalogError, ReleaseManagement
from shared import (
    AWAITING_APPROVAL,
    DEFAULT_RELEASE_KEY,
    RUNNING,
    Approval,
    ReleaseInfo,
    ReleaseResult,
    ReleaseState,
    Settings,
    check_release_key,
    release_workflow_id,
    render_progress,
    root_cause,
)
from utils import connect, connect_config, exit_now, load_env_file
from workflows import RELEASE_KEY, RELEASE_STATUS, ReleaseWorkflow

# How long to wait for a server that went away (a restart, a network blip) before
# suggesting a re-attach; the release itself never depends on this process.
RIDE_THROUGH_SECONDS = 300
TRANSIENT = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNKNOWN)
# Queries and updates need a worker to answer; without one they would wait forever.
WORKER_ANSWER = timedelta(seconds=10)
COMMANDS = ("start", "status", "approve", "cancel", "list")


class UserError(Exception):
    """One line to the user and an exit code (2: bad input); nothing was changed."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["--list"]:
        argv = ["list", *argv[1:]]
    elif not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["start", *argv]
    parser = argparse.ArgumentParser(prog="run_workflow.py", description="Start, follow, approve and cancel releases.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a release and follow it (the default command)")
    start.add_argument("--release-key", default=DEFAULT_RELEASE_KEY, help=f"default {DEFAULT_RELEASE_KEY}")
    start.add_argument("--now", action="store_true", help="do not wait for the release date")
    commands.add_parser("status", help="a release's progress").add_argument("release_key")
    approve = commands.add_parser("approve", help="approve a release waiting for approval")
    approve.add_argument("release_key")
    approve.add_argument("--by", required=True, dest="approver", help="who approves")
    approve.add_argument("--deploy", help="approve only this container's deploy")
    commands.add_parser("cancel", help="cancel a running release").add_argument("release_key")
    commands.add_parser("list", help="the catalog's releases with the status of their latest runs")
    return parser.parse_args(argv)


def ui_link(target: dict, workflow_id: str, run_id: str | None = None) -> str | None:
    """Where the Web UI shows this release: the local dev server's UI or Temporal Cloud's."""
    host, _, port = target["target_host"].rpartition(":")
    if host in ("localhost", "127.0.0.1") and port.isdigit():
        base = f"http://localhost:{int(port) + 1000}"  # the dev server's default UI port
    elif host.endswith((".tmprl.cloud", ".api.temporal.io")):
        base = "https://cloud.temporal.io"
    else:
        return None
    tail = f"/{run_id}/history" if run_id else ""
    return f"{base}/namespaces/{target['namespace']}/workflows/{workflow_id}{tail}"


async def start(client: Client, settings: Settings, target: dict, key: str, now: bool) -> int:
    workflow_id = release_workflow_id(key)
    running = await run_status(client, key) == WorkflowExecutionStatus.RUNNING
    attributes = TypedSearchAttributes(
        [SearchAttributePair(RELEASE_KEY, key), SearchAttributePair(RELEASE_STATUS, RUNNING)]
    )
    for search_attributes in (attributes, None):
        try:
            handle = await client.start_workflow(
                ReleaseWorkflow.run,
                ReleaseInfo(release_key=key, now=now),
                id=workflow_id,
                task_queue=settings.task_queue,
                # A second start of a running release follows it rather than failing.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=search_attributes,
                static_summary=f"Release {key}" + (" (--now: not waiting for the release date)" if now else ""),
            )
            break
        except RPCError as e:
            if search_attributes is None or "search attribute" not in e.message.lower():
                raise
            print(
                f"note: namespace {target['namespace']} has no ReleaseKey/ReleaseStatus search attributes, "
                "so the Web UI cannot filter releases by them (setup.md says how to add them)",
                flush=True,
            )
    verb = "is already running; following it" if running else "started"
    print(f"Release {key} {verb} (workflow {workflow_id}).", flush=True)
    if running and now:
        print("note: --now applies to a new run; the running one keeps its release date", flush=True)
    if link := ui_link(target, workflow_id, handle.result_run_id):
        print(f"Web UI: {link}", flush=True)
    try:
        result = await follow(handle, target, key)
    except WorkflowFailureError as e:
        if isinstance(e.cause, CancelledError):
            state = await progress(handle)
            print(f"Result: Release {key}: CANCELLED ({state.error if state else 'see status'})", flush=True)
        else:
            print(f"Result: Release {key}: FAILED: {root_cause(e)}", flush=True)
        return 1
    if result is None:
        return 3
    skipped = f" (skipped, not approved: {', '.join(result.skipped)})" if result.skipped else ""
    print(f"Result: Release {key}: {result.status}{skipped}", flush=True)
    return 0


async def follow(handle: WorkflowHandle, target: dict, key: str) -> ReleaseResult | None:
    """Print the release's steps as they happen, then return its result."""
    result = asyncio.create_task(wait_through_outages(handle, target, key))
    seen, hinted = 0, False
    while True:
        done = result.done()
        state = await progress(handle)
        if state is not None:
            for event in state.events[seen:]:
                print(f"  {event}", flush=True)
            seen = len(state.events)
            if state.status == AWAITING_APPROVAL and not hinted:
                hinted = True
                print(
                    f"  approve with: python run_workflow.py approve {key} --by NAME [--deploy CONTAINER]", flush=True
                )
        if done:
            return result.result()
        await asyncio.wait([result], timeout=1)


async def wait_through_outages(handle: WorkflowHandle, target: dict, key: str) -> ReleaseResult | None:
    """The release's result; rides through a server restart instead of giving up on the release."""
    lost_since: float | None = None
    while True:
        try:
            return await handle.result()
        except RPCError as e:
            if e.status not in TRANSIENT:
                raise
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                host = target["target_host"]
                print(f"Lost contact with Temporal at {host}; waiting for it to come back.", flush=True)
            elif now - lost_since > RIDE_THROUGH_SECONDS:
                print(
                    f"Temporal at {target['target_host']} is still unreachable. The release is safe in it: "
                    f"run `python run_workflow.py --release-key {key}` again to re-attach.",
                    flush=True,
                )
                return None
            await asyncio.sleep(1)


async def progress(handle: WorkflowHandle) -> ReleaseState | None:
    """The release's state, or None when no worker answers (or the server is away)."""
    try:
        return await handle.query(ReleaseWorkflow.progress, rpc_timeout=WORKER_ANSWER)
    except (TimeoutError, RPCError):
        return None


async def latest_run(client: Client, key: str) -> WorkflowExecutionDescription | None:
    """The release's latest run; None if it was never started."""
    try:
        return await client.get_workflow_handle(release_workflow_id(key)).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def run_status(client: Client, key: str) -> WorkflowExecutionStatus | None:
    run = await latest_run(client, key)
    return run.status if run else None


async def running_release(client: Client, key: str, doing: str) -> WorkflowHandle:
    """The running release, with a worker to act on it; UserError says why not."""
    description = await latest_run(client, key)
    if description is None:
        raise UserError(f"release {key} was never started: nothing to {doing}")
    if description.status != WorkflowExecutionStatus.RUNNING:
        run = description.status.name if description.status else "unknown"
        raise UserError(f"release {key} is not running (its latest run is {run}): nothing to {doing}")
    # Only a worker can answer; without one the request would wait silently.
    pollers = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=description.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    if not pollers.pollers:
        raise UserError(
            f"no worker is polling task queue {description.task_queue}: start one (`make worker`) "
            "and try again; nothing was sent",
            code=3,
        )
    return client.get_workflow_handle(release_workflow_id(key))


async def status(client: Client, target: dict, key: str) -> int:
    run = await run_status(client, key)
    if run is None:
        raise UserError(f"release {key} was never started")
    handle = client.get_workflow_handle(release_workflow_id(key))
    state = await progress(handle)
    if state is None:
        print(f"Release {key}: {run.name} (no worker answered the progress query; `make worker` starts one)")
    else:
        print(render_progress(state))
        for event in state.events[-5:]:
            print(f"  {event}")
    if link := ui_link(target, release_workflow_id(key)):
        print(f"Web UI: {link}")
    return 0


async def approve(client: Client, key: str, approver: str, deploy: str | None) -> int:
    handle = await running_release(client, key, "approve")
    try:
        state = await handle.execute_update(
            ReleaseWorkflow.approve, Approval(approver=approver, deploy=deploy), rpc_timeout=WORKER_ANSWER
        )
    except WorkflowUpdateFailedError as e:
        cause = root_cause(e)
        raise UserError(getattr(cause, "message", str(cause))) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # The server keeps an update it has admitted, so it may still apply.
        raise UserError(
            f"no worker answered within {WORKER_ANSWER.seconds} s; the approval may still apply "
            f"when one does: check with `python run_workflow.py status {key}`",
            code=3,
        ) from None
    print(f"Approved by {approver}.")
    print(render_progress(state))
    return 0


async def cancel(client: Client, key: str) -> int:
    handle = await running_release(client, key, "cancel")
    await handle.cancel()
    print(f"Cancel requested: release {key} stops once the steps in flight finish.", flush=True)
    try:
        await handle.result()
    except WorkflowFailureError as e:
        if isinstance(e.cause, CancelledError):
            state = await progress(handle)
            print(f"Release {key}: CANCELLED ({state.error if state else 'see status'})")
            return 0
        print(f"Release {key} failed before the cancel took effect: {root_cause(e)}")
        return 1
    print(f"Release {key} finished before the cancel took effect: SUCCESS")
    return 1


async def list_releases(client: Client, keys: list[str]) -> int:
    async def latest(key: str) -> str:
        run = await latest_run(client, key)
        if run is None:
            return "never run"
        # The release's own word (SUCCESS, AWAITING_APPROVAL...) where it set one, else Temporal's.
        return run.typed_search_attributes.get(RELEASE_STATUS) or (run.status.name if run.status else "unknown")

    for key, latest_status in zip(keys, await asyncio.gather(*(latest(k) for k in keys)), strict=True):
        print(f"{key:<34} {latest_status}")
    return 0


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        load_env_file()
        settings = Settings.from_env()
        target = connect_config()
        key = check_release_key(getattr(args, "release_key", DEFAULT_RELEASE_KEY))
        if args.command == "approve" and not args.approver.strip():
            raise ValueError("--by is empty: say who approves")
        rm = ReleaseManagement(settings.workspace, settings.catalog)
        try:
            known: list[str] | None = rm.release_keys()
        except CatalogError:
            if args.command == "list":
                raise
            known = None  # the worker's catalog decides
        if args.command == "start" and known is not None and key not in known:
            raise ValueError(f"unknown release key {key!r}; known keys: {', '.join(known)}")
    except (ValueError, CatalogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        # The starter reports outages itself, in one line, instead of the SDK's retry warnings.
        client = await connect(target, quiet=True)
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}). "
            "Start a local server with `make server`, or set TEMPORAL_ADDRESS (see .env.example).",
            file=sys.stderr,
        )
        return 3
    try:
        if args.command == "start":
            return await start(client, settings, target, key, args.now)
        if args.command == "status":
            return await status(client, target, key)
        if args.command == "approve":
            return await approve(client, key, args.approver.strip(), args.deploy)
        if args.command == "cancel":
            return await cancel(client, key)
        return await list_releases(client, known or [])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except RPCError as e:
        print(f"error: Temporal at {target['target_host']} refused the request: {e.message}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    try:
        code = asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("\nStopped waiting. The release goes on in Temporal; `python run_workflow.py status KEY` shows it.")
        code = 130
    exit_now(code)
