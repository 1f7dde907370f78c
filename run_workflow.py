"""Start, follow, approve and cancel releases. Run it from the project root with the project's venv:

    .venv/bin/python run_workflow.py [--release-key KEY] [--now]   # start a release and follow it to its result
    .venv/bin/python run_workflow.py status KEY                     # its progress: deploys x environments
    .venv/bin/python run_workflow.py approve KEY --by NAME [--deploy CONTAINER]
    .venv/bin/python run_workflow.py unfreeze KEY --by NAME        # let a FROZEN release promote now
    .venv/bin/python run_workflow.py retry KEY --by NAME [--deploy CONTAINER]     # a HELD deploy: run its checks again
    .venv/bin/python run_workflow.py rollback KEY --by NAME [--deploy CONTAINER]  # a HELD deploy: roll it back
    .venv/bin/python run_workflow.py rollback-env ENV CONTAINER --by NAME [--to VERSION]  # an earlier version again
    .venv/bin/python run_workflow.py cancel KEY                     # stop between steps; says what was deployed
    .venv/bin/python run_workflow.py list                           # the catalog's releases and their latest runs
    .venv/bin/python run_workflow.py inventory [--json]             # what each environment holds, who put it there
    .venv/bin/python run_workflow.py history ENV [CONTAINER]        # promotions and rollbacks into ENV, newest first

Starting a release that is already running attaches to it and follows it.
KEY defaults to RELEASE-NOV-23-INITIAL; `--list` is an alias of `list`.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

try:
    from pydantic import BaseModel
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import (
        DescribeTaskQueueRequest,
        GetWorkflowExecutionHistoryReverseRequest,
    )
    from temporalio.client import (
        Client,
        WorkflowExecutionDescription,
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowHandle,
        WorkflowQueryFailedError,
        WorkflowUpdateFailedError,
        WorkflowUpdateRPCTimeoutOrCancelledError,
    )
    from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
    from temporalio.exceptions import TerminatedError, is_cancelled_exception
    from temporalio.service import RPCError, RPCStatusCode

    from inventory import print_history, print_inventory
    from release_management import CatalogError, ReleaseError, ReleaseManagement
    from shared import (
        AWAITING_APPROVAL,
        DEFAULT_RELEASE_KEY,
        FROZEN,
        RUNNING,
        Approval,
        Decision,
        DeployState,
        ReleaseResult,
        ReleaseState,
        Settings,
        Unfreeze,
        check_approver,
        check_release_key,
        clip,
        release_workflow_id,
        render_progress,
        root_cause,
    )
    from utils import connect, connect_config, exit_now, load_env_file, script_command, worker_command
    from workflows import RELEASE_KEY, RELEASE_STATUS, ReleaseWorkflow
except ModuleNotFoundError as missing:
    # An interpreter without the project's dependencies (say the system python3): say how to
    # run the script instead of a traceback. A module of this project missing is a real bug.
    if (Path(__file__).resolve().parent / f"{(missing.name or '').partition('.')[0]}.py").exists():
        raise
    print(
        f"error: {sys.executable} lacks the project's dependencies (no module {missing.name!r}): "
        f"run `make install`, then `.venv/bin/python {shlex.join(['run_workflow.py', *sys.argv[1:]])}` "
        "from the project root",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

# How long to wait for a server that went away (a restart, a network blip) before
# suggesting a re-attach; the release itself never depends on this process.
RIDE_THROUGH_SECONDS = 300
TRANSIENT = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNKNOWN)
# Queries and updates need a worker to answer; without one they would wait forever.
WORKER_ANSWER = timedelta(seconds=10)
COMMANDS = (
    "start",
    "status",
    "approve",
    "unfreeze",
    "retry",
    "rollback",
    "rollback-env",
    "cancel",
    "list",
    "inventory",
    "history",
)
# An idle worker renews its long poll about once a minute, and a killed worker stays in the
# task queue's poller list for minutes: only a poller seen more recently than this counts.
POLLER_FRESH_SECONDS = 90
# How often a follower looks at the task queue and at the steps in flight (describe calls, so
# not every second), and how long it gives a worker that is starting before it warns.
CHECK_SECONDS = 3
WORKER_GRACE_SECONDS = 2
# A step that failed this many times in a row is shown with its last error, so no release
# retries in silence: from its 4th attempt on (after its 3rd failed attempt), once per attempt.
FAILURES_SHOWN = 3
DEPLOY_WORKFLOW = "DeployWorkflow"
RELEASE_WORKFLOW = "ReleaseWorkflow"
ERROR_CHARS = 300


class ReleaseStart(BaseModel):
    """The workflow's input as the starter sends it: only what the starter decided.

    The workflow reads it as a ReleaseInfo; the rest (date, approvals, deploys) comes from the
    catalog when the release gathers, so the Web UI's Input shows no defaults the catalog overrides.
    """

    release_key: str
    now: bool


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
    unfreeze = commands.add_parser("unfreeze", help="override the freeze windows for a FROZEN release")
    unfreeze.add_argument("release_key")
    unfreeze.add_argument("--by", required=True, dest="approver", help="who overrides the freeze")
    for name, does in (
        ("retry", "run the failed checks of a HELD deploy again"),
        ("rollback", "roll back a HELD deploy"),
    ):
        decide = commands.add_parser(name, help=does)
        decide.add_argument("release_key")
        decide.add_argument("--by", required=True, dest="approver", help="who decides")
        decide.add_argument("--deploy", help="the held deploy's container, when several are held")
    back = commands.add_parser(
        "rollback-env", help="re-promote into ENV the version of CONTAINER that passed its tests there before"
    )
    back.add_argument("env", metavar="ENV", help="DEV, TEST, QC or PROD")
    back.add_argument("container", metavar="CONTAINER")
    back.add_argument("--by", required=True, dest="approver", help="who asks for it")
    back.add_argument("--to", dest="version", help="this version, which must have passed its tests in ENV")
    commands.add_parser("cancel", help="cancel a running release").add_argument("release_key")
    commands.add_parser("list", help="the catalog's releases with the status of their latest runs")
    inventory = commands.add_parser("inventory", help="what each environment holds, who put it there, and drift")
    inventory.add_argument("--json", action="store_true", help="print it as JSON")
    history = commands.add_parser("history", help="the promotions and rollbacks into an environment, newest first")
    history.add_argument("env", metavar="ENV", help="DEV, TEST, QC or PROD")
    history.add_argument("container", metavar="CONTAINER", nargs="?", help="only this container")
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


def start_worker_hint(settings: Settings, task_queue: str) -> str:
    """The command that starts a worker for this task queue (a run may be on another queue than ours)."""
    return worker_command(None if task_queue == settings.task_queue else task_queue)


async def start(
    client: Client, settings: Settings, target: dict, key: str, now: bool, payload: BaseModel | None = None
) -> int:
    """Start release key (or follow its run), and follow it; payload: the whole input (a rollback-env's)."""
    workflow_id = release_workflow_id(key)
    running = await run_status(client, key) == WorkflowExecutionStatus.RUNNING
    attributes = TypedSearchAttributes(
        [SearchAttributePair(RELEASE_KEY, key), SearchAttributePair(RELEASE_STATUS, RUNNING)]
    )
    for search_attributes in (attributes, None):
        try:
            # By type name: the workflow takes a ReleaseInfo, and gets one filled from this.
            handle: WorkflowHandle[Any, ReleaseResult] = await client.start_workflow(
                RELEASE_WORKFLOW,
                payload or ReleaseStart(release_key=key, now=now),
                id=workflow_id,
                task_queue=settings.task_queue,
                result_type=ReleaseResult,
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
        result = await Follower(client, settings, handle, target, key).follow()
    except WorkflowFailureError as e:
        if is_cancelled_exception(e.cause):
            state = await progress(handle)
            print(f"Result: Release {key}: CANCELLED ({state.error if state else 'see status'})", flush=True)
        elif isinstance(e.cause, TerminatedError):
            # Ended from outside (`temporal workflow terminate`, the Web UI): not a failure of its own.
            print(f"Result: Release {key}: TERMINATED ({e.cause.message or 'no reason given'})", flush=True)
        else:
            print(f"Result: Release {key}: FAILED: {root_cause(e)}", flush=True)
        return 1
    if result is None:
        return 3
    skipped = f" (skipped, not approved: {', '.join(result.skipped)})" if result.skipped else ""
    print(f"Result: Release {key}: {result.status}{skipped}", flush=True)
    return 0


@dataclass
class Trouble:
    """Something a person should see in a running release: a step failing again and again, or a
    workflow task that keeps failing. `news` changes when it deserves another line."""

    ident: str
    news: Hashable
    line: str
    release_task: bool = False


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
    state: ReleaseState | None = None
    events_seen: int = 0
    hinted: bool = False
    unfreeze_hinted: bool = False
    held_hinted: list[str] = field(default_factory=list)
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
                next_check = time.monotonic() + CHECK_SECONDS
                await self.check(warn=time.monotonic() - begun >= WORKER_GRACE_SECONDS)
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
        self.state = state
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
        if state.status == AWAITING_APPROVAL and not self.hinted:
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
            polls = await worker_polls(self.client, description.task_queue)
        except RPCError:
            return  # the server is away: wait_through_outages says so
        running = description.status == WorkflowExecutionStatus.RUNNING
        if running and not polls and warn and not self.warned:
            self.warned = True
            print(
                f"  no worker polls task queue {description.task_queue}, so the release waits; "
                f"start one with: {start_worker_hint(self.settings, description.task_queue)}",
                flush=True,
            )
        elif polls and self.warned:
            self.warned = False
            print(f"  a worker polls task queue {description.task_queue} now: the release goes on", flush=True)
        self.worker = polls
        if not polls or not running:
            self.task_failing = False
            return
        found = await troubles(self.client, description, self.state)
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
            elif now - lost_since > RIDE_THROUGH_SECONDS:
                print(
                    f"Temporal at {target['target_host']} is still unreachable. The release is safe in it: "
                    f"run `{script_command('run_workflow.py', '--release-key', key)}` again to re-attach.",
                    flush=True,
                )
                return None
            await asyncio.sleep(1)


async def progress(handle: WorkflowHandle) -> ReleaseState | None:
    """The release's state, or None when no worker answers (or the server is away)."""
    try:
        return await handle.query(ReleaseWorkflow.progress, rpc_timeout=WORKER_ANSWER)
    except (TimeoutError, RPCError, WorkflowQueryFailedError):
        return None  # a query that failed once (a worker restarting, say) is asked again at the next look


async def worker_polls(client: Client, task_queue: str) -> bool:
    """Whether a live worker polls the task queue for workflow tasks."""
    pollers = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    now = time.time()
    return any(
        not p.HasField("last_access_time") or now - p.last_access_time.ToSeconds() < POLLER_FRESH_SECONDS
        for p in pollers.pollers
    )


def one_line(text: str) -> str:
    """An error as one bounded line: an error's text is not ours to trust with newlines or length."""
    return clip(" ".join(text.split()), ERROR_CHARS)


async def troubles(client: Client, release: WorkflowExecutionDescription, state: ReleaseState | None) -> list[Trouble]:
    """Steps failing again and again, and failing workflow tasks, in a running release and its running deploys."""
    children = [
        c.workflow_id for c in release.raw_description.pending_children if c.workflow_type_name == DEPLOY_WORKFLOW
    ]
    described: list[WorkflowExecutionDescription | None] = [
        release,
        *await asyncio.gather(*(describe(client, child) for child in children)),
    ]
    found: list[Trouble] = []
    for execution in described:
        if execution is None:
            continue
        container = None if execution.id == release.id else execution.id.rpartition("/")[2]
        deploy = next((d for d in state.deploys if d.container_id == container), None) if state else None
        if task := await task_trouble(client, execution, None if container is None else deploy or container):
            found.append(task)
        for activity in execution.raw_description.pending_activities:
            if activity.attempt > FAILURES_SHOWN and activity.HasField("last_failure"):
                what = step_name(activity.activity_type.name, release, container, deploy, activity.activity_id)
                found.append(
                    Trouble(
                        f"{execution.id} {activity.activity_id}",
                        activity.attempt,
                        f"{what}: attempt {activity.attempt}, last error: {one_line(activity.last_failure.message)}",
                    )
                )
    return found


async def task_trouble(
    client: Client, execution: WorkflowExecutionDescription, deploy: DeployState | str | None
) -> Trouble | None:
    """A workflow task that keeps failing (a bug, bad data): reported as that, with its error.

    `deploy` names the deploy whose workflow this is; None for the release itself.
    """
    raw = execution.raw_description
    if not raw.HasField("pending_workflow_task") or raw.pending_workflow_task.attempt <= 1:
        return None
    error = await last_task_failure(client, execution.id, execution.run_id or "")
    name = deploy.artifact if isinstance(deploy, DeployState) else deploy
    whose = "the release's" if deploy is None else f"deploy {name}:"
    return Trouble(
        f"{execution.id} workflow task",
        error,  # a new line when the error changes, not at each retry
        f"{whose} workflow task keeps failing (attempt {raw.pending_workflow_task.attempt}): {error}",
        release_task=deploy is None,
    )


async def describe(client: Client, workflow_id: str) -> WorkflowExecutionDescription | None:
    try:
        return await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return None  # it has just ended, or the server is away: the next check sees


def step_name(
    verb: str,
    release: WorkflowExecutionDescription,
    container: str | None,
    deploy: DeployState | None,
    activity_id: str = "",
) -> str:
    """A step as the Web UI's activity summaries name it, "deploy frontend-1.0 → DEV", from what is known."""
    if container is None and verb in ("build", "deploy", "test") and not activity_id.isdigit():
        return activity_id  # a release that runs its own deploys names each step so
    if container is None:
        key = release.id.removeprefix(release_workflow_id(""))
        names = {"gather_deployments": "gather deploys of", "gather_release_approval": "check approval of"}
        return f"{names.get(verb, verb.replace('_', ' ') + ' of')} {key}"
    if deploy is None:
        return f"{verb} of deploy {container}"
    # A deploy goes through its environments in order: the step in flight is in the first unfinished one.
    env = next((e for e, c in deploy.cells.items() if c.status in ("running", "waiting")), None) or next(
        (e for e, c in deploy.cells.items() if c.status == "pending"), None
    )
    if verb in ("build", "deploy", "test") and env:
        return f"{verb} {deploy.artifact} {'in' if verb == 'test' else '→'} {env}"
    return f"{verb.replace('_', ' ')} for {deploy.artifact}" + (f" → {env}" if env else "")


async def last_task_failure(client: Client, workflow_id: str, run_id: str) -> str:
    """The error of the workflow's last failed workflow task, read from the end of its history."""
    token = b""
    for _ in range(5):  # it is among the last events; a long history is not read whole
        page = await client.workflow_service.get_workflow_execution_history_reverse(
            GetWorkflowExecutionHistoryReverseRequest(
                namespace=client.namespace,
                execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                maximum_page_size=100,
                next_page_token=token,
            )
        )
        for event in page.history.events:
            if event.HasField("workflow_task_failed_event_attributes"):
                return one_line(event.workflow_task_failed_event_attributes.failure.message)
        token = page.next_page_token
        if not token:
            break
    return "its history in the Web UI has the error"


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


async def running_release(client: Client, settings: Settings, key: str, doing: str) -> WorkflowHandle:
    """The running release, with a worker to act on it; UserError says why not."""
    description = await latest_run(client, key)
    if description is None:
        raise UserError(f"release {key} was never started: nothing to {doing}")
    if description.status != WorkflowExecutionStatus.RUNNING:
        run = description.status.name if description.status else "unknown"
        raise UserError(f"release {key} is not running (its latest run is {run}): nothing to {doing}")
    # Only a worker can answer; without one the request would wait silently.
    if not await worker_polls(client, description.task_queue):
        raise UserError(
            f"no worker polls task queue {description.task_queue}: start one with "
            f"`{start_worker_hint(settings, description.task_queue)}` and try again; nothing was sent",
            code=3,
        )
    return client.get_workflow_handle(release_workflow_id(key))


async def status(client: Client, settings: Settings, target: dict, key: str) -> int:
    run = await latest_run(client, key)
    if run is None:
        raise UserError(f"release {key} was never started")
    handle = client.get_workflow_handle(release_workflow_id(key))
    # The release's own word (AWAITING_APPROVAL, SUCCESS...) where it set one, else Temporal's.
    word = run.typed_search_attributes.get(RELEASE_STATUS) or (run.status.name if run.status else "unknown")
    running = run.status == WorkflowExecutionStatus.RUNNING
    hint = start_worker_hint(settings, run.task_queue)
    state = None
    # Only a worker answers the progress query; look first rather than wait out its timeout.
    if not await worker_polls(client, run.task_queue):
        if running:
            print(
                f"Release {key}: {word}; no worker polls task queue {run.task_queue}, so it waits "
                f"and its progress cannot be read: start one with `{hint}`"
            )
        else:
            print(f"Release {key}: {word} (reading its progress needs a worker: start one with `{hint}`)")
    else:
        failing = await task_trouble(client, run, None) if running else None
        if failing:
            # Its queries would wait for a workflow task that does not come; the error says why.
            print(f"Release {key}: {word}, but {failing.line}")
        else:
            state = await progress(handle)
            if state is None:
                # A worker polls, so it is not missing: busy, or gone within the last minute.
                print(
                    f"Release {key}: {word} (its progress query got no answer within {WORKER_ANSWER.seconds} s: "
                    "the worker may be busy, or have just stopped)"
                )
            else:
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
        found = await troubles(client, run, state) if running else []
        for trouble in found:
            if not trouble.release_task:
                print(f"  {trouble.line}")
    if link := ui_link(target, release_workflow_id(key)):
        print(f"Web UI: {link}")
    return 0


async def send_update(handle: WorkflowHandle, update: Any, arg: BaseModel, key: str, what: str) -> Any:
    """The release's answer to an update; its validator's refusal, or no answer, as a UserError."""
    try:
        return await handle.execute_update(update, arg, rpc_timeout=WORKER_ANSWER)
    except WorkflowUpdateFailedError as e:
        cause = root_cause(e)
        raise UserError(getattr(cause, "message", str(cause))) from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # The server keeps an update it has admitted, so it may still apply.
        raise UserError(
            f"the release did not answer within {WORKER_ANSWER.seconds} s (its worker may be busy, or have just "
            f"stopped); the {what} may still apply: check with `{script_command('run_workflow.py', 'status', key)}`",
            code=3,
        ) from None


async def approve(client: Client, settings: Settings, key: str, approver: str, deploy: str | None) -> int:
    handle = await running_release(client, settings, key, "approve")
    reply = await send_update(
        handle, ReleaseWorkflow.approve, Approval(approver=approver, deploy=deploy), key, "approval"
    )
    approved = ", ".join(reply.approved) or "nothing"
    print(f"Approved by {approver}: {approved}; still waiting: {', '.join(reply.still_waiting) or 'nothing'}")
    return 0


async def unfreeze(client: Client, settings: Settings, key: str, approver: str) -> int:
    handle = await running_release(client, settings, key, "unfreeze")
    reply = await send_update(handle, ReleaseWorkflow.unfreeze, Unfreeze(approver=approver), key, "unfreeze")
    print(f"Unfrozen by {approver}: release {key} promotes into {', '.join(reply.environments)} now ({reply.status})")
    return 0


async def decide(client: Client, settings: Settings, key: str, action: str, approver: str, deploy: str | None) -> int:
    handle = await running_release(client, settings, key, action)
    update = ReleaseWorkflow.retry if action == "retry" else ReleaseWorkflow.rollback
    reply = await send_update(handle, update, Decision(approver=approver, deploy=deploy), key, action)
    print(f"{action.capitalize()} of {reply.deploy} asked by {approver} (release {key}: {reply.status})")
    return 0


async def cancel(client: Client, settings: Settings, key: str) -> int:
    handle = await running_release(client, settings, key, "cancel")
    await handle.cancel()
    print(f"Cancel requested: release {key} stops once the steps in flight finish.", flush=True)
    try:
        await handle.result()
    except WorkflowFailureError as e:
        # A cancel that lands while a step runs may arrive as that step's error, wrapping the cancel.
        if is_cancelled_exception(e.cause):
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
        # These read the workspace only: no Temporal settings, catalog or server needed.
        if args.command == "inventory":
            return print_inventory(settings.workspace, args.json)
        if args.command == "history":
            return print_history(settings.workspace, args.env, args.container)
        target = connect_config()
        key = check_release_key(getattr(args, "release_key", DEFAULT_RELEASE_KEY))
        if args.command in ("approve", "unfreeze", "retry", "rollback", "rollback-env"):
            does = {"approve": "approves", "unfreeze": "unfreezes"}.get(args.command, f"asks to {args.command}")
            args.approver = check_approver(args.approver, does)
        rm = ReleaseManagement(settings.workspace, settings.catalog)
        try:
            known: list[str] | None = rm.release_keys()
        except CatalogError as e:
            if args.command == "list":
                raise
            if args.command == "start" and settings.catalog.is_file():
                # A catalog that reads but is wrong would fail the release as it gathers: say so before it starts.
                raise CatalogError(f"cannot start {key}: {e}") from None
            known = None  # the worker's catalog decides
        if args.command == "start" and known is not None:
            if key not in known:
                raise ValueError(f"unknown release key {key!r}; known keys: {', '.join(known)}")
            try:
                rm.gather_deployments(key)  # the release's own entry: what it gathers, it gets
            except CatalogError as e:
                raise CatalogError(f"cannot start {key}: {e}") from None
        payload = None
        if args.command == "rollback-env":
            payload = rm.rollback_env(args.env.upper(), args.container, args.approver, args.version)
            key = payload.release_key
    except (ValueError, ReleaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    try:
        # The starter reports outages itself, in one line, instead of the SDK's retry warnings.
        client = await connect(target, quiet=True)
    except RuntimeError:
        print(
            f"error: cannot reach Temporal at {target['target_host']} (namespace {target['namespace']}). "
            "Start a local server and a worker with `make worker` (`make server` alone starts no worker), "
            "or set TEMPORAL_ADDRESS (see .env.example).",
            file=sys.stderr,
        )
        return 3
    try:
        if args.command == "start":
            return await start(client, settings, target, key, args.now)
        if payload is not None:
            return await start(client, settings, target, key, True, payload)
        if args.command == "status":
            return await status(client, settings, target, key)
        if args.command == "approve":
            return await approve(client, settings, key, args.approver, args.deploy)
        if args.command == "unfreeze":
            return await unfreeze(client, settings, key, args.approver)
        if args.command in ("retry", "rollback"):
            return await decide(client, settings, key, args.command, args.approver, args.deploy)
        if args.command == "cancel":
            return await cancel(client, settings, key)
        return await list_releases(client, known or [])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except RPCError as e:
        print(f"error: Temporal at {target['target_host']} refused the request: {e.message}", file=sys.stderr)
        return 3


def stopped_waiting(argv: list[str]) -> None:
    """What Ctrl+C leaves behind: the release goes on without this process."""
    args = parse_args(argv)
    if args.command == "rollback-env":
        args.release_key = f"ROLLBACK-{args.env.upper()}-{args.container}"
    if args.command in ("start", "cancel", "rollback-env"):
        show = script_command("run_workflow.py", "status", args.release_key)
        print(f"\nStopped waiting. The release goes on in Temporal; `{show}` shows it.")


if __name__ == "__main__":
    try:
        code = asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        code = 130
        try:
            stopped_waiting(sys.argv[1:])
        except BrokenPipeError:
            pass
    except BrokenPipeError:
        # The reader went away (`status KEY | head -1`): end quietly, as a shell tool ends on SIGPIPE.
        code = 141
    exit_now(code)
