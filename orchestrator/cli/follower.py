"""Starting a release and following it: its steps printed as they happen, and what keeps it from moving, until
its result; the server may restart meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import TerminatedError, is_cancelled_exception
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.cli import waits
from orchestrator.cli.diagnostics import (
    UserError,
    final_progress,
    latest_run,
    no_worker,
    progress,
    release_polled,
    start_one,
    troubles,
)
from orchestrator.errors import REFUSED_AT_START, root_cause
from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
from orchestrator.names import printable
from orchestrator.settings import Settings
from shared import AWAITING_APPROVAL, FROZEN, RUNNING, ReleaseRequest, ReleaseResult, ReleaseState, release_workflow_id
from utils import script_command, worker_command

TRANSIENT = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNKNOWN)
RELEASE_WORKFLOW = "ReleaseWorkflow"


def ui_link(target: dict, workflow_id: str, run_id: str | None = None) -> str | None:
    """Where the Web UI shows this release: TEMPORAL_UI_URL, else Temporal Cloud's, or a local dev server's at its
    default UI port (its gRPC port + 1000: make's 8233); None where it cannot be known."""
    host, _, port = target["target_host"].rpartition(":")
    if configured := os.environ.get("TEMPORAL_UI_URL", "").strip().rstrip("/"):
        base = configured
    elif host.endswith((".tmprl.cloud", ".api.temporal.io")):
        base = "https://cloud.temporal.io"
    elif host in ("localhost", "127.0.0.1") and port.isdigit():
        base = f"http://localhost:{int(port) + 1000}"
    else:
        return None
    tail = f"/{run_id}/history" if run_id else ""
    return f"{base}/namespaces/{target['namespace']}/workflows/{workflow_id}{tail}"


def start_worker_hint(settings: Settings, task_queue: str) -> str:
    """The command that starts a worker for this task queue (a run may be on another queue than ours)."""
    return worker_command(None if task_queue == settings.task_queue else task_queue)


async def start(client: Client, settings: Settings, target: dict, request: ReleaseRequest) -> int:
    """Start the release (or follow its run), and follow it to its result; its exit code."""
    key = request.release_key
    workflow_id = release_workflow_id(key)
    handle, running = await begin(client, settings, target, request.model_copy(update={"identity": client.identity}))
    verb = "is already running; following it" if running else "started"
    print(f"Release {key} {verb} (workflow {workflow_id}).", flush=True)
    if running and request.now and request.rollback is None:
        print("note: --now applies to a new run; the running one keeps its release date", flush=True)
    if link := ui_link(target, workflow_id, handle.result_run_id):
        print(f"Web UI: {link}", flush=True)
    try:
        result = await Follower(client, settings, handle, target, key).follow()
    except WorkflowFailureError as e:
        return await _failed(handle, key, e)
    if result is None:
        return 3
    skipped = f" (skipped, not approved: {', '.join(result.skipped)})" if result.skipped else ""
    back = f" ({request.rollback.env} holds {result.deploys[0].artifact} again)" if request.rollback else ""
    print(f"Result: Release {key}: {result.status}{skipped}{back}", flush=True)
    return 0


async def begin(
    client: Client, settings: Settings, target: dict, request: ReleaseRequest
) -> tuple[WorkflowHandle[Any, ReleaseResult], bool]:
    """Start the release, or its run that is running (a second rollback-env of a target only if it asks the
    same: UserError if not); its handle, and whether it was running already."""
    running = await latest_run(client, request.release_key)
    if running is not None and running.status != WorkflowExecutionStatus.RUNNING:
        running = None
    if running is not None and request.rollback is not None:
        await same_rollback(running, request)
    return await start_release(client, settings, target, request), running is not None


def entry_waited_for(waiting_for: str | None) -> str | None:
    """The environment a deploy waits for approval to enter ("approval to enter PROD: 1 of 2"), if it does."""
    if not (waiting_for or "").startswith("approval to enter "):
        return None
    return (waiting_for or "").split()[3].rstrip(":")


async def same_rollback(running: WorkflowExecutionDescription, request: ReleaseRequest) -> None:
    """A second rollback-env of one target follows the running one only if it asks the same; UserError if not."""
    asked = (await running.memo()).get("request")
    theirs = ReleaseRequest.model_validate(asked) if isinstance(asked, dict) else None
    ours = request.rollback
    if theirs is None or theirs.rollback is None or ours is None or theirs.rollback.version == ours.version:
        return
    what = f"--to {theirs.rollback.version}" if theirs.rollback.version else "the version before the one it holds"
    raise UserError(
        f"{request.release_key} already rolls back {ours.env} {ours.container} ({what}, asked by "
        f"{theirs.by or 'someone'}): wait for it to end, or cancel it; nothing was started"
    )


async def _failed(handle: WorkflowHandle[Any, ReleaseResult], key: str, e: WorkflowFailureError) -> int:
    """Say how the release ended without success: cancelled, terminated, failed (1), or refused at its start (2)."""
    cause = root_cause(e)
    if is_cancelled_exception(e.cause):
        state = await final_progress(handle)
        print(f"Result: Release {key}: CANCELLED ({state.error if state else 'see status'})", flush=True)
    elif isinstance(e.cause, TerminatedError):
        # Ended from outside (`temporal workflow terminate`, the Web UI): not a failure of its own.
        print(f"Result: Release {key}: TERMINATED ({printable(e.cause.message or 'no reason given')})", flush=True)
    elif getattr(cause, "type", None) in REFUSED_AT_START:
        # The worker's catalog refused it as it gathered: nothing ran.
        message = printable(getattr(cause, "message", "") or str(cause))
        prefix = f"cannot start {key}: " if getattr(cause, "type", None) == "CatalogError" else ""
        print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
        return 2
    else:
        print(f"Result: Release {key}: FAILED: {printable(str(cause))}", flush=True)
    return 1


async def start_release(
    client: Client, settings: Settings, target: dict, request: ReleaseRequest
) -> WorkflowHandle[Any, ReleaseResult]:
    key, now = request.release_key, request.now
    attributes = TypedSearchAttributes(
        [SearchAttributePair(RELEASE_KEY_ATTRIBUTE, key), SearchAttributePair(RELEASE_STATUS_ATTRIBUTE, RUNNING)]
    )
    for search_attributes in (attributes, None):
        try:
            # By type name: the worker's ReleaseWorkflow takes this request.
            return await client.start_workflow(
                RELEASE_WORKFLOW,
                request,
                id=release_workflow_id(key),
                task_queue=settings.task_queue,
                result_type=ReleaseResult,
                # A second start of a running release follows it rather than failing.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                search_attributes=search_attributes,
                # What was asked, for a second rollback-env of the target to compare with.
                memo={"request": request.model_dump(mode="json", exclude_none=True)},
                static_summary=f"Release {key}" + (" (--now: not waiting for the release date)" if now else ""),
            )
        except RPCError as e:
            if search_attributes is None or "search attribute" not in e.message.lower():
                raise
            print(
                f"note: namespace {target['namespace']} has no ReleaseKey/ReleaseStatus search attributes, "
                "so the Web UI cannot filter releases by them (setup.md says how to add them)",
                flush=True,
            )
    raise AssertionError("unreachable: the second start has no search attributes to refuse")


@dataclass
class Follower:
    """Prints a release's steps as they happen, and what keeps it from moving, until its result."""

    client: Client
    settings: Settings
    handle: WorkflowHandle[Any, ReleaseResult]
    target: dict
    key: str
    worker: bool | None = None  # a worker polls the release's task queue (None: not known yet)
    warned: bool = False
    task_failing: bool = False
    events_seen: int = 0
    hinted: bool = False
    unfreeze_hinted: bool = False
    held_hinted: list[str] = field(default_factory=list)
    entry_hinted: list[str] = field(default_factory=list)
    shown: dict[str, Hashable] = field(default_factory=dict)

    async def follow(self) -> ReleaseResult | None:
        result = asyncio.create_task(wait_through_outages(self.handle, self.target, self.key))
        begun = next_check = time.monotonic()
        while True:
            done = result.done()
            if done and result.exception() is None and result.result() is None:
                return None  # the server stayed away: nothing more can be checked or shown
            # Once more at the end: a worker may have come and finished the release between checks.
            if done or time.monotonic() >= next_check:
                next_check = time.monotonic() + waits.CHECK_SECONDS
                await self.check(warn=time.monotonic() - begun >= waits.WORKER_GRACE_SECONDS)
            # Without a worker, or with a workflow task that keeps failing, a query would only
            # wait out its timeout: the checks above say so instead.
            if self.worker is not False and not self.task_failing:
                state = await progress(self.handle)
                if state is not None:
                    self.show(state)
            if done:
                return result.result()
            await asyncio.wait([result], timeout=1)

    def show(self, state: ReleaseState) -> None:
        # The release keeps only its recent events; event_count says how many there were in all.
        count = max(state.event_count, len(state.events))
        new = count - self.events_seen
        if new > 0:
            fresh = state.events[-new:]
            if new > len(fresh):
                print(f"  ({new - len(fresh)} earlier events are no longer kept by the release)", flush=True)
            for event in fresh:
                print(f"  {event}", flush=True)
            self.events_seen = count
        self._hints(state)

    def _hints(self, state: ReleaseState) -> None:
        """What a person can do now, each said once: unfreeze, retry or roll back, approve."""
        if state.status == FROZEN and not self.unfreeze_hinted:
            self.unfreeze_hinted = True
            hint = script_command("run_workflow.py", "unfreeze", self.key, "--by", "NAME")
            print(f"  it waits for the freeze to end; override it for this release with: {hint}", flush=True)
        held = [d.container_id for d in state.deploys if d.cells and any(c.status == "held" for c in d.cells.values())]
        if held and held != self.held_hinted:
            self.held_hinted = held
            more = ["--deploy", held[0]] if len(held) > 1 else []
            retry = script_command("run_workflow.py", "retry", self.key, "--by", "NAME", *more)
            rollback = script_command("run_workflow.py", "rollback", self.key, "--by", "NAME", *more)
            print(f"  held for a person: {retry}  (after a fix), or {rollback}", flush=True)
        entering = sorted({env for d in state.deploys if (env := entry_waited_for(d.waiting_for))})
        for env in entering:
            if env not in self.entry_hinted:
                self.entry_hinted.append(env)
                hint = script_command("run_workflow.py", "approve", self.key, "--by", "NAME", "--env", env)
                print(f"  approve its entry into {env} with: {hint}", flush=True)
        if state.status == AWAITING_APPROVAL and not self.hinted and not entering:
            self.hinted = True
            hint = script_command("run_workflow.py", "approve", self.key, "--by", "NAME")
            print(f"  approve with: {hint}", flush=True)
            waiting = [d.container_id for d in state.deploys if not d.approved]
            if waiting and len(state.deploys) > 1:
                one = script_command("run_workflow.py", "approve", self.key, "--by", "NAME", "--deploy", waiting[0])
                print(f"  or approve one deploy: {one}", flush=True)

    async def check(self, warn: bool) -> None:
        """Is a worker there; is a step or a workflow task failing again and again? One line per news."""
        try:
            description = await self.handle.describe()
            polls = await release_polled(self.client, description)
        except RPCError:
            return  # the server is away: wait_through_outages says so
        running = description.status == WorkflowExecutionStatus.RUNNING
        if running and not polls and warn and not self.warned:
            self.warned = True
            print(
                f"  {no_worker(description)}, so the release waits; "
                f"{start_one(description, start_worker_hint(self.settings, description.task_queue))}",
                flush=True,
            )
        elif polls and self.warned:
            self.warned = False
            print(f"  a worker polls task queue {description.task_queue} now: the release goes on", flush=True)
        self.worker = polls
        if not polls or not running:
            self.task_failing = False
            return
        found = await troubles(self.client, description)
        self.task_failing = any(t.release_task for t in found)
        for trouble in found:
            if self.shown.get(trouble.ident) != trouble.news:
                self.shown[trouble.ident] = trouble.news
                print(f"  {trouble.line}", flush=True)


async def wait_through_outages(
    handle: WorkflowHandle[Any, ReleaseResult], target: dict, key: str
) -> ReleaseResult | None:
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
            elif now - lost_since > waits.RIDE_THROUGH_SECONDS:
                print(
                    f"Temporal at {target['target_host']} is still unreachable. The release is safe in it: "
                    f"run `{script_command('run_workflow.py', '--release-key', key)}` again to re-attach.",
                    flush=True,
                )
                return None
            await asyncio.sleep(1)
