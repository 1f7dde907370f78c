"""Record histories of real releases for the replay tests: `make histories`.

Re-record only for a deliberate, versioned change to the workflows: the point of the
recorded files is that a change which would break releases already running fails CI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from release_management import ReleaseManagement
from shared import AWAITING_APPROVAL, FROZEN, HELD, Approval, Decision, ReleaseInfo, Unfreeze
from tests.conftest import CATALOG, installed_binary
from tests.support import in_process_worker, run_release_steps
from utils import FailureInjector, exit_now
from workflows import ReleaseWorkflow

HISTORIES = Path(__file__).parent / "histories"
# Histories of every generation of the workflows stay: a release started by older code must
# still replay on the new. Name a new generation for each versioned change, and record it;
# files without a generation (success.0.json) are the first one.
GENERATION = "v5"
# The generations recorded before (besides the first): their files stay, and must keep replaying.
PAST_GENERATIONS = ("v2", "v3", "v4")

# scenario: (release key, failure injector, whether the release succeeds)
SCENARIOS = {
    "success": ("RELEASE-NOV-23-INITIAL", FailureInjector("never"), True),
    "retries": ("RELEASE-NOV-23-INITIAL", FailureInjector("alot", seed=7), True),
    # A promotion into PROD of versions never tested in QC: refused (it was a missing artifact before v4).
    "missing-artifact": ("RELEASE-JAN-24-ALPHA-PROD", FailureInjector("never"), False),
    "unknown-key": ("RELEASE-NEVER", FailureInjector("never"), False),
    # Held for approval of sbstore, then approved by an Update and the rest by a Signal.
    "approvals": ("RELEASE-FEB-24-BETA-HOLD", FailureInjector("never"), True),
    # From v4: sbstore fails its security check in QC (FAILING_CHECKS).
    "gate-failure": ("RELEASE-NOV-23-INITIAL", FailureInjector("never"), False),
    # From v4: PROD frozen (examples/freeze.json), unfrozen by an Update; a Signal after it is ignored.
    "freeze": ("RELEASE-DEMO-FREEZE", FailureInjector("never"), True),
    # From v5: with examples/rollback.json, sbstore 1.7 fails security in QC after INITIAL, and is rolled back.
    "rollback": ("RELEASE-NOV-23-HOTFIX-STAGE", FailureInjector("never"), False),
    # From v5: on_failure hold; a person asks to retry (it fails again), then to roll back, by a Signal.
    "hold": ("RELEASE-JAN-24-ALPHA-QC-HOLD", FailureInjector("never"), False),
    # From v5: rollback-env QC frontend after INITIAL and HOTFIX-STAGE: frontend 1.0 back in QC.
    "rollback-env": ("ROLLBACK-QC-frontend", FailureInjector("never"), True),
}
# The generation that first records each scenario (the others are in every one).
SINCE = {"gate-failure": 4, "freeze": 4, "rollback": 5, "hold": 5, "rollback-env": 5}
EXAMPLES = CATALOG.parent / "examples"
CATALOGS = {
    "freeze": EXAMPLES / "freeze.json",
    "rollback": EXAMPLES / "rollback.json",
    "hold": EXAMPLES / "rollback.json",
}
FAILING = {
    "gate-failure": ("sbstore-1.0", "QC", "security"),
    "rollback": ("sbstore-1.7", "QC", "security"),
    "hold": ("sbstore-1.8", "QC", "security"),
}
# What the workspace holds before the scenario's release: these releases' steps, run without Temporal.
BEFORE = {
    "rollback": ("RELEASE-NOV-23-INITIAL",),
    "hold": ("RELEASE-JAN-24-ALPHA-DEV",),
    "rollback-env": ("RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE"),
}


async def approve_when_held(handle: WorkflowHandle) -> None:
    while (await handle.query(ReleaseWorkflow.progress)).status != AWAITING_APPROVAL:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="recorder", deploy="sbstore"))
    await handle.signal("approve", Approval(approver="recorder"))  # nothing left: ignored, but in history


async def unfreeze_when_frozen(handle: WorkflowHandle) -> None:
    while (await handle.query(ReleaseWorkflow.progress)).status != FROZEN:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await handle.execute_update(ReleaseWorkflow.unfreeze, Unfreeze(approver="recorder"))
    await handle.signal("unfreeze", Unfreeze(approver="recorder"))  # unfrozen already: ignored, but in history


async def decide_when_held(handle: WorkflowHandle) -> None:
    """Retry by an Update (it fails again, and is held again), then roll back by a Signal."""
    while (await handle.query(ReleaseWorkflow.progress)).status != HELD:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await handle.execute_update(ReleaseWorkflow.retry, Decision(approver="recorder"))
    while sum("is held in" in e for e in (await handle.query(ReleaseWorkflow.progress)).events) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await handle.signal("rollback", Decision(approver="recorder"))


async def record(env: WorkflowEnvironment, scenario: str) -> list[Path]:
    key, failures, succeeds = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory() as workspace:
        rm = ReleaseManagement(Path(workspace), CATALOGS.get(scenario, CATALOG))
        run_release_steps(rm, *BEFORE.get(scenario, ()), prefix="before")
        rm.failing_checks = frozenset({FAILING[scenario]}) if scenario in FAILING else frozenset()
        info = (
            rm.rollback_env("QC", "frontend", "recorder")
            if scenario == "rollback-env"
            else ReleaseInfo(release_key=key)
        )
        async with in_process_worker(env, rm, failures) as task_queue:
            handle = await env.client.start_workflow(
                ReleaseWorkflow.run, info, id=f"release-{key}-{scenario}", task_queue=task_queue
            )
            if scenario == "approvals":
                await approve_when_held(handle)
            if scenario == "freeze":
                await unfreeze_when_frozen(handle)
            if scenario == "hold":
                await decide_when_held(handle)
            try:
                await handle.result()
                assert succeeds, f"{scenario} was expected to fail"
            except WorkflowFailureError:
                assert not succeeds, f"{scenario} was expected to succeed"
    children = await child_ids(env, handle.id)
    ids = [handle.id, *children]
    for child in children:
        ids += [i for i in await lock_ids(env, child) if i not in ids]
    # A release that runs its own deploys takes its locks with a local activity: found by their ids.
    async for lock in env.client.list_workflows(f"WorkflowType = 'TargetLockWorkflow' AND TaskQueue = '{task_queue}'"):
        if lock.id not in ids:
            ids.append(lock.id)
    written = []
    for i, workflow_id in enumerate(ids):
        history = await env.client.get_workflow_handle(workflow_id).fetch_history()
        path = HISTORIES / f"{scenario}.{GENERATION}.{i}.json"
        path.write_text(json.dumps({"workflow_id": workflow_id, "history": json.loads(history.to_json())}, indent=1))
        written.append(path)
    return written


async def child_ids(env: WorkflowEnvironment, workflow_id: str) -> list[str]:
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
        for e in history.events
        if e.HasField("child_workflow_execution_started_event_attributes")
    ]


async def lock_ids(env: WorkflowEnvironment, workflow_id: str) -> list[str]:
    """The target locks a deploy signalled (their latest runs are recorded)."""
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    found = [
        e.signal_external_workflow_execution_initiated_event_attributes.workflow_execution.workflow_id
        for e in history.events
        if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
    ]
    return list(dict.fromkeys(i for i in found if i.startswith("lock/")))


async def main() -> None:
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)  # failures here are on purpose
    HISTORIES.mkdir(exist_ok=True)
    for old in HISTORIES.glob(f"*.{GENERATION}.*.json"):
        old.unlink()
    # A real server: the time-skipping one hangs a release whose deploys fail at once (see test_workflows.py).
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter, dev_server_existing_path=installed_binary("temporal")
    )
    try:
        for scenario in SCENARIOS:
            for path in await record(env, scenario):
                print(f"recorded {path.relative_to(HISTORIES.parent.parent)}")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    exit_now(0)  # temporalio #300: an interpreter that used a client can abort as it exits
