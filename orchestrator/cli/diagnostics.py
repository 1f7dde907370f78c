"""What the command line reads from Temporal about a release: its latest run, its progress, whether a worker
polls its task queue, and what keeps it from moving (a step failing again and again, a failing workflow task).
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import TaskQueueType, VersioningBehavior
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError, RPCStatusCode

from orchestrator.cli import waits
from orchestrator.names import clip, one_line
from shared import ReleaseState, release_workflow_id

# A step that failed this many times in a row is shown with its last error, so no release
# retries in silence: from its 4th attempt on (after its 3rd failed attempt), once per attempt.
FAILURES_SHOWN = 3
ERROR_CHARS = 300


class UserError(Exception):
    """One line to the user and an exit code (2: bad input); nothing was changed."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Trouble:
    """Something a person should see in a running release: a step failing again and again, or a
    workflow task that keeps failing. `news` changes when it deserves another line."""

    ident: str
    news: Hashable
    line: str
    release_task: bool = False


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


async def progress(handle: WorkflowHandle) -> ReleaseState | None:
    """The release's state, or None when no worker answers (or the server is away)."""
    try:
        # By name: the command line does not import the workflow code.
        return await handle.query("progress", result_type=ReleaseState, rpc_timeout=waits.WORKER_ANSWER)
    except (TimeoutError, RPCError, WorkflowQueryFailedError):
        return None  # a query that failed once (a worker restarting, say) is asked again at the next look


async def final_progress(handle: WorkflowHandle) -> ReleaseState | None:
    """The state of a release that has ended, or None when no worker answers.

    An ended release is replayed from its history to answer, so a busy worker can miss one ask; its state no
    longer changes, so it is asked again, at most FINAL_ASKS times.
    """
    for _ in range(waits.FINAL_ASKS):
        if (state := await progress(handle)) is not None:
            return state
    return None


async def worker_polls(client: Client, task_queue: str, build_id: str | None = None) -> bool:
    """Whether a live worker polls the task queue for workflow tasks; of version build_id, when given."""
    pollers = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    now = time.time()
    return any(
        (not p.HasField("last_access_time") or now - p.last_access_time.ToSeconds() < waits.POLLER_FRESH_SECONDS)
        and build_id in (None, p.deployment_options.build_id)
        for p in pollers.pollers
    )


def pinned_to(release: WorkflowExecutionDescription) -> str | None:
    """The worker version (build id) a release is pinned to; None before its first task, or unversioned."""
    info = release.raw_description.workflow_execution_info.versioning_info
    if info.behavior != VersioningBehavior.VERSIONING_BEHAVIOR_PINNED:
        return None
    return info.deployment_version.build_id or None


async def release_polled(client: Client, release: WorkflowExecutionDescription) -> bool:
    """Whether a worker that can run this release polls its task queue (of its version, if it is pinned)."""
    return await worker_polls(client, release.task_queue, pinned_to(release))


def no_worker(release: WorkflowExecutionDescription) -> str:
    """Why nothing runs the release: no worker, or none of the version the release is pinned to."""
    build = pinned_to(release)
    if build is None:
        return f"no worker polls task queue {release.task_queue}"
    return f"no worker of version {build}, which the release is pinned to, polls task queue {release.task_queue}"


def start_one(release: WorkflowExecutionDescription, hint: str, quoted: bool = False) -> str:
    """What gets the release a worker: the command that starts one, or one of the version it is pinned to."""
    build = pinned_to(release)
    if build is not None:
        return f"start one from the code of version {build} (setup.md, Upgrading workers)"
    return f"start one with `{hint}`" if quoted else f"start one with: {hint}"


def bounded(text: str) -> str:
    """An error as one bounded line: an error's text is not ours to trust with control characters or length."""
    return clip(one_line(text), ERROR_CHARS)


async def troubles(client: Client, release: WorkflowExecutionDescription) -> list[Trouble]:
    """Steps failing again and again, and a failing workflow task, in a running release."""
    found: list[Trouble] = []
    if task := await task_trouble(client, release):
        found.append(task)
    for activity in release.raw_description.pending_activities:
        if activity.attempt > FAILURES_SHOWN and activity.HasField("last_failure"):
            what = step_name(activity.activity_type.name, release, activity.activity_id)
            found.append(
                Trouble(
                    f"{release.id} {activity.activity_id}",
                    activity.attempt,
                    f"{what}: attempt {activity.attempt}, last error: {bounded(activity.last_failure.message)}",
                )
            )
    return found


async def task_trouble(client: Client, release: WorkflowExecutionDescription) -> Trouble | None:
    """A workflow task that keeps failing (a bug, bad data): reported as that, with its error."""
    raw = release.raw_description
    if not raw.HasField("pending_workflow_task") or raw.pending_workflow_task.attempt <= 1:
        return None
    error = await last_task_failure(client, release.id, release.run_id or "")
    return Trouble(
        f"{release.id} workflow task",
        error,  # a new line when the error changes, not at each retry
        f"the release's workflow task keeps failing (attempt {raw.pending_workflow_task.attempt}): {error}",
        release_task=True,
    )


def step_name(verb: str, release: WorkflowExecutionDescription, activity_id: str = "") -> str:
    """An activity as the Web UI's summaries name it: a step by its id ("deploy frontend-1.0 → DEV"), others
    by what they do for the release ("gather deploys of KEY")."""
    if verb in ("build", "deploy", "test", "rollback") and not activity_id.isdigit():
        return activity_id
    key = release.id.removeprefix(release_workflow_id(""))
    names = {"gather_deployments": "gather deploys of", "gather_release_approval": "check approval of"}
    return f"{names.get(verb, verb.replace('_', ' ') + ' of')} {key}"


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
                return bounded(event.workflow_task_failed_event_attributes.failure.message)
        token = page.next_page_token
        if not token:
            break
    return "its history in the Web UI has the error"
