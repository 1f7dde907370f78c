"""Starts a release and waits for its result.

    python run_workflow.py                           # releases RELEASE-NOV-23-INITIAL
    python run_workflow.py --release-key KEY         # another release from the catalog
    python run_workflow.py --list                    # the release keys in the catalog

Starting a release that is already running attaches to it and waits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from release_management import CatalogError, ReleaseManagement
from shared import DEFAULT_RELEASE_KEY, ReleaseInfo, ReleaseResult, Settings, check_release_key, release_workflow_id
from utils import connect, connect_config, exit_now, load_env_file, root_cause
from workflows import ReleaseWorkflow

# How long to wait for a server that went away (a restart, a network blip) before
# suggesting a re-attach; the release itself never depends on this process.
RIDE_THROUGH_SECONDS = 300
TRANSIENT = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNKNOWN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start a release and wait for its result.")
    parser.add_argument("--release-key", default=DEFAULT_RELEASE_KEY, help=f"default {DEFAULT_RELEASE_KEY}")
    parser.add_argument("--list", action="store_true", help="list the release keys in the catalog")
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


async def release(client: Client, settings: Settings, target: dict, key: str) -> int:
    workflow_id = release_workflow_id(key)
    try:
        running = (await client.get_workflow_handle(workflow_id).describe()).status
    except RPCError:
        running = None  # never started: nothing to attach to
    handle = await client.start_workflow(
        ReleaseWorkflow.run,
        ReleaseInfo(release_key=key),
        id=workflow_id,
        task_queue=settings.task_queue,
        # A second start of a running release waits on it rather than failing.
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    verb = "is already running; waiting for it" if running == WorkflowExecutionStatus.RUNNING else "started"
    print(f"Release {key} {verb} (workflow {workflow_id}).", flush=True)
    link = ui_link(target, workflow_id, handle.result_run_id)
    if link:
        print(f"Web UI: {link}", flush=True)
    try:
        result = await wait_through_outages(handle, target, key)
    except WorkflowFailureError as e:
        print(f"Result: Release {key}: FAILED: {root_cause(e)}", flush=True)
        return 1
    if result is None:
        return 3
    print(f"Result: Release {key}: {result.status}", flush=True)
    return 0


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
                print(
                    f"Lost contact with Temporal at {target['target_host']}; waiting for it to come back.", flush=True
                )
            elif now - lost_since > RIDE_THROUGH_SECONDS:
                print(
                    f"Temporal at {target['target_host']} is still unreachable. The release is safe in it: "
                    f"run `python run_workflow.py --release-key {key}` again to re-attach.",
                    flush=True,
                )
                return None
            await asyncio.sleep(1)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        load_env_file()
        settings = Settings.from_env()
        key = check_release_key(args.release_key)
        target = connect_config()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rm = ReleaseManagement(settings.workspace, settings.catalog)
    try:
        known = rm.release_keys()
    except CatalogError as e:
        if args.list:
            print(f"error: {e}", file=sys.stderr)
            return 2
        known = None  # the worker's catalog decides
    if args.list:
        print("\n".join(known or []))
        return 0
    if known is not None and key not in known:
        print(f"error: unknown release key {key!r}; known keys: {', '.join(known)}", file=sys.stderr)
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
        return await release(client, settings, target, key)
    except RPCError as e:
        print(f"error: Temporal at {target['target_host']} refused the request: {e.message}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        print("\nStopped waiting; the release goes on. Run the same command again to attach to it.")
        code = 130
    exit_now(code)
