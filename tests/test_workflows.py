"""Workflow logic on the time-skipping test server, with the real activities on a temporary workspace."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import root_cause
from release_management import ReleaseManagement
from shared import ReleaseInfo, ReleaseRequest, ReleaseResult
from tests.steps import promote
from tests.support import activity_starts, in_process_worker
from utils import FailureInjector
from workflows import ReleaseWorkflow

ALL = ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]


async def start(env: WorkflowEnvironment, task_queue: str, release: ReleaseInfo) -> WorkflowHandle:
    return await env.client.start_workflow(
        ReleaseWorkflow.run, release, id=f"release-{release.release_key}-{uuid.uuid4()}", task_queue=task_queue
    )


async def failure_of(handle: WorkflowHandle) -> BaseException:
    # A bound on waiting: a bad input that were retried would otherwise never end.
    with pytest.raises(WorkflowFailureError) as err:
        await asyncio.wait_for(handle.result(), 30)
    return root_cause(err.value)


async def test_release_promotes_every_deploy_through_every_environment(
    ts_env: WorkflowEnvironment, rm: ReleaseManagement
) -> None:
    async with in_process_worker(ts_env, rm) as tq:
        result = await (await start(ts_env, tq, ReleaseRequest(release_key="RELEASE-NOV-23-INITIAL"))).result()
    assert isinstance(result, ReleaseResult)
    assert result.status == "SUCCESS"
    assert sorted(d.artifact for d in result.deploys) == ALL
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert rm.contents(env) == ALL
    steps = sorted((e["container"], e["step"], e["env"]) for e in rm.ledger.entries())
    # 3 containers x (build + 4 deploys + 4 tests), each exactly once.
    assert len(steps) == 27 and len(set(steps)) == 27


async def test_unknown_release_key_fails_at_once(ts_env: WorkflowEnvironment, rm: ReleaseManagement) -> None:
    async with in_process_worker(ts_env, rm) as tq:
        handle = await start(ts_env, tq, ReleaseRequest(release_key="RELEASE-NEVER"))
        cause = await failure_of(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "UnknownRelease"
    assert "unknown release key 'RELEASE-NEVER'" in str(cause)
    assert await attempts(ts_env, handle) == [1]


# On a real server: all three deploys fail at once, and the release cancels the steps of the
# others while their failures are on the way. The time-skipping test server refuses such a
# cancel (ACTIVITY_UNKNOWN, temporalio/sdk-java#2391) and the release hangs; a real server
# finds the failure among the events it buffered, as it should.
@pytest.mark.parametrize("qc", ["never tested", "tested, then emptied"])
async def test_missing_source_fails_without_retrying(
    dev_server: WorkflowEnvironment, rm: ReleaseManagement, tmp_path: Path, qc: str
) -> None:
    if qc == "never tested":
        error, message = "NotVerified", "to PROD: it never passed its tests in QC"
    else:
        # The versions passed their tests in QC, as the ledger says; then QC lost the files.
        promote(rm, "RELEASE-JAN-24-ALPHA-DEV")
        promote(rm, "RELEASE-JAN-24-ALPHA-QC")
        for artifact in rm.contents("QC"):
            (tmp_path / "environments" / "QC" / artifact).unlink()
        error, message = "MissingArtifact", "to PROD: QC does not hold"
    async with in_process_worker(dev_server, rm) as tq:
        handle = await start(dev_server, tq, ReleaseRequest(release_key="RELEASE-JAN-24-ALPHA-PROD"))
        cause = await failure_of(handle)
    assert isinstance(cause, ApplicationError) and cause.type == error
    assert message in str(cause)
    assert rm.contents("PROD") == []
    assert set(await attempts(dev_server, handle, children=True)) == {1}


# What any Temporal client could send (`temporal workflow start --input ...`): a release already gathered, with a
# version the catalog never had, a shell command, no checks, no freezes, approved.
FORGED = {
    "release_key": "RELEASE-NOV-23-INITIAL",
    "now": True,
    "approved": True,
    "freezes": {},
    "deploys": [
        {
            "deploy_key": "RELEASE-NOV-23-INITIAL:frontend",
            "container_id": "frontend",
            "version": "6.6",
            "git_url": "https://example.invalid/frontend",
            "environments": ["PROD"],
            "checks": {},
            "approved": True,
            "commands": {"deploy": {"argv": ["sh", "-c", "touch {workspace}/../owned"]}},
        }
    ],
}


@pytest.mark.parametrize("extra", [FORGED, {"release_key": "RELEASE-NOV-23-INITIAL", "redeploy": True}])
async def test_an_input_with_what_the_catalog_decides_is_refused_and_nothing_runs(
    ts_env: WorkflowEnvironment, rm: ReleaseManagement, tmp_path: Path, extra: dict[str, object]
) -> None:
    async with in_process_worker(ts_env, rm) as tq:
        handle = await ts_env.client.start_workflow(
            "ReleaseWorkflow", extra, id=f"forged-{uuid.uuid4()}", task_queue=tq
        )
        cause = await failure_of(handle)
    assert isinstance(cause, ApplicationError) and cause.type == "InvalidInput" and cause.non_retryable
    fields = ", ".join(sorted(set(extra) - {"release_key", "now"}))
    assert cause.message == (
        f"release RELEASE-NOV-23-INITIAL: its input holds {fields}, which no person chooses: a release's input is "
        "its key, now, who starts it and a rollback target; the worker's catalog gives the rest"
    )
    assert await activity_starts(ts_env.client, handle.id) == []  # not even the catalog was read
    assert [p.name for p in tmp_path.iterdir()] == []


async def test_release_survives_frequent_failures(ts_env: WorkflowEnvironment, rm: ReleaseManagement) -> None:
    async with in_process_worker(ts_env, rm, FailureInjector("alot", seed=7)) as tq:
        handle = await start(ts_env, tq, ReleaseRequest(release_key="RELEASE-NOV-23-INITIAL"))
        result = await handle.result()
    assert result.status == "SUCCESS"
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert rm.contents(env) == ALL
    retried = [a for a in await attempts(ts_env, handle, children=True) if a > 1]
    assert len(retried) >= 5, "FAILURE_RATE=alot should show retries in history"
    # Retries re-ran steps, yet every side effect is recorded once.
    keys = [(e["deploy_key"], e["step"], e["env"]) for e in rm.ledger.entries()]
    assert len(keys) == 27 == len(set(keys))


async def attempts(env: WorkflowEnvironment, handle: WorkflowHandle, children: bool = False) -> list[int]:
    if not children:
        history = await handle.fetch_history()
        return [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
        ]
    return [a.attempt for a in await activity_starts(env.client, handle.id)]


async def test_status_queries_while_a_release_runs_are_all_answered(
    dev_server: WorkflowEnvironment, rm: ReleaseManagement
) -> None:
    """Queried without pause from start to end, as a starter and a watching person would: every answer comes.

    (With its locks taken by local activities, a query that arrived while one ran failed
    with a nondeterminism error in the SDK's core.)
    """
    async with in_process_worker(dev_server, rm) as tq:
        handle = await start(dev_server, tq, ReleaseRequest(release_key="RELEASE-NOV-23-INITIAL"))
        result = asyncio.ensure_future(handle.result())
        answers, statuses = 0, set()
        while not result.done():
            statuses.add((await handle.query(ReleaseWorkflow.progress)).status)
            answers += 1
        assert (await result).status == "SUCCESS"
    assert answers >= 10 and "RUNNING" in statuses, (answers, statuses)
