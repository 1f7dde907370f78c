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

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from release_management import CatalogError, ReleaseManagement
from shared import DEFAULT_RELEASE_KEY, ReleaseInfo, Settings, check_release_key, release_workflow_id
from utils import connect, connect_config, exit_now, load_env_file, root_cause
from workflows import ReleaseWorkflow


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start a release and wait for its result.")
    parser.add_argument("--release-key", default=DEFAULT_RELEASE_KEY, help=f"default {DEFAULT_RELEASE_KEY}")
    parser.add_argument("--list", action="store_true", help="list the release keys in the catalog")
    return parser.parse_args(argv)


def ui_link(target: dict, workflow_id: str, run_id: str | None = None) -> str | None:
    host = target["target_host"].rsplit(":", 1)[0]
    if host in ("localhost", "127.0.0.1") and target["target_host"].endswith(":7233"):
        base = "http://localhost:8233"
    elif host.endswith(".tmprl.cloud"):
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
        result = await handle.result()
    except WorkflowFailureError as e:
        print(f"Result: Release {key}: FAILED: {root_cause(e)}", flush=True)
        return 1
    print(f"Result: Release {key}: {result.status}", flush=True)
    return 0


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
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
        client = await connect(target)
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
    load_env_file()
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        print("\nStopped waiting; the release goes on. Run the same command again to attach to it.")
        code = 130
    exit_now(code)
