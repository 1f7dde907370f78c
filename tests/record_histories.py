"""Record histories of real releases for the replay tests: `make histories`.

Re-record only for a new baseline, as the versioning policy says (docs/design.md, Versioning): the point of
the recorded files is that a change which would break workflows already running fails CI. A baseline is a
folder, tests/histories/<version>/, holding one history per scenario of the release workflow, and the lock
workflows of the race scenario (locks live across worker versions, so theirs must replay on the next one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from pathlib import Path

from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from release_management import ReleaseManagement
from shared import AWAITING_APPROVAL, FROZEN, HELD, Approval, Decision, ReleaseRequest, RollbackTarget, Unfreeze
from tests.conftest import CATALOG, installed_binary
from tests.support import in_process_worker, run_release_steps
from utils import FailureInjector, exit_now
from workflows import ReleaseWorkflow

HISTORIES = Path(__file__).parent / "histories"
# The baseline these files are recorded from (the project's version, major.minor), and the one before it, whose
# lock histories must still replay; older baselines are removed (docs/design.md, Versioning).
BASELINE = "1.2"
PREVIOUS_BASELINE: str | None = "1.1"

# scenario: (release key, failure injector, whether the release succeeds)
SCENARIOS = {
    "success": ("RELEASE-NOV-23-INITIAL", FailureInjector("never"), True),
    "retries": ("RELEASE-NOV-23-INITIAL", FailureInjector("alot", seed=7), True),
    # A promotion into PROD of versions never tested in QC: refused.
    "not-verified": ("RELEASE-JAN-24-ALPHA-PROD", FailureInjector("never"), False),
    "unknown-key": ("RELEASE-NEVER", FailureInjector("never"), False),
    # Held for approval of sbstore, then approved by an Update and the rest by a Signal.
    "approvals": ("RELEASE-FEB-24-BETA-HOLD", FailureInjector("never"), True),
    # sbstore fails its security check in QC (FAILING_CHECKS).
    "gate-failure": ("RELEASE-NOV-23-INITIAL", FailureInjector("never"), False),
    # PROD frozen (examples/freeze.json), unfrozen by an Update; a Signal after it is ignored.
    "freeze": ("RELEASE-DEMO-FREEZE", FailureInjector("never"), True),
    # With examples/rollback.json, sbstore 1.7 fails security in QC after INITIAL, and is rolled back.
    "rollback": ("RELEASE-NOV-23-HOTFIX-STAGE", FailureInjector("never"), False),
    # on_failure hold; a person asks to retry (it fails again), then to roll back, by a Signal.
    "hold": ("RELEASE-JAN-24-ALPHA-QC-HOLD", FailureInjector("never"), False),
    # rollback-env QC frontend after INITIAL and HOTFIX-STAGE: frontend 1.0 back in QC.
    "rollback-env": ("ROLLBACK-QC-frontend", FailureInjector("never"), True),
    # examples/approvers.json: PROD needs two approvers, not the starter; a refused Signal, then two Updates.
    "entry-approvals": ("RELEASE-NOV-23-INITIAL", FailureInjector("never"), True),
    # INITIAL and HOTFIX-STAGE at once: their deploys queue for the same targets' locks.
    "race": ("RELEASE-NOV-23-HOTFIX-STAGE", FailureInjector("never"), True),
}
EXAMPLES = CATALOG.parent / "examples"
CATALOGS = {
    "freeze": EXAMPLES / "freeze.json",
    "rollback": EXAMPLES / "rollback.json",
    "hold": EXAMPLES / "rollback.json",
    "entry-approvals": EXAMPLES / "approvers.json",
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


async def until_status(handle: WorkflowHandle, status: str) -> None:
    while (await handle.query(ReleaseWorkflow.progress)).status != status:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def approve_when_held(handle: WorkflowHandle) -> None:
    await until_status(handle, AWAITING_APPROVAL)
    await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="recorder", deploy="sbstore"))
    await handle.signal("approve", Approval(approver="recorder"))  # nothing left: ignored, but in history


async def unfreeze_when_frozen(handle: WorkflowHandle) -> None:
    await until_status(handle, FROZEN)
    await handle.execute_update(ReleaseWorkflow.unfreeze, Unfreeze(approver="recorder"))
    await handle.signal("unfreeze", Unfreeze(approver="recorder"))  # unfrozen already: ignored, but in history


async def decide_when_held(handle: WorkflowHandle) -> None:
    """Retry by an Update (it fails again, and is held again), then roll back by a Signal."""
    await until_status(handle, HELD)
    await handle.execute_update(ReleaseWorkflow.retry, Decision(approver="recorder"))
    while sum("is held in" in e for e in (await handle.query(ReleaseWorkflow.progress)).events) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await handle.signal("rollback", Decision(approver="recorder"))


async def approve_entry(handle: WorkflowHandle) -> None:
    """The starter's own approval is refused (a Signal, ignored with an event); two approvers let it in."""
    await until_status(handle, AWAITING_APPROVAL)
    await handle.signal("approve", Approval(approver="alice", env="PROD"))
    for name in ("bob", "carol"):
        await handle.execute_update(ReleaseWorkflow.approve, Approval(approver=name, env="PROD"))


PEOPLE = {
    "approvals": approve_when_held,
    "freeze": unfreeze_when_frozen,
    "hold": decide_when_held,
    "entry-approvals": approve_entry,
}


async def record(env: WorkflowEnvironment, scenario: str) -> list[Path]:
    key, failures, succeeds = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory() as workspace:
        rm = ReleaseManagement(Path(workspace), CATALOGS.get(scenario, CATALOG))
        run_release_steps(rm, *BEFORE.get(scenario, ()), prefix="before")
        rm.failing_checks = frozenset({FAILING[scenario]}) if scenario in FAILING else frozenset()
        target = RollbackTarget(env="QC", container="frontend")
        rollback = ReleaseRequest(release_key=target.release_key(), now=True, by="recorder", rollback=target)
        info = rollback if scenario == "rollback-env" else None
        async with in_process_worker(env, rm, failures) as task_queue:
            other = None
            if scenario == "race":
                other = await env.client.start_workflow(
                    ReleaseWorkflow.run,
                    ReleaseRequest(release_key="RELEASE-NOV-23-INITIAL", now=True),
                    id="release-RELEASE-NOV-23-INITIAL-race",
                    task_queue=task_queue,
                )
            handle = await env.client.start_workflow(
                ReleaseWorkflow.run,
                info
                or ReleaseRequest(
                    release_key=key, now=True, by="alice" if scenario == "entry-approvals" else "recorder"
                ),
                id=f"release-{key}-{scenario}",
                task_queue=task_queue,
            )
            if scenario in PEOPLE:
                await PEOPLE[scenario](handle)
            try:
                await handle.result()
                assert succeeds, f"{scenario} was expected to fail"
            except WorkflowFailureError:
                assert not succeeds, f"{scenario} was expected to succeed"
            if other is not None:
                await other.result()
    runs: list[tuple[str, str | None]] = [(handle.id, None)] if other is None else [(handle.id, None), (other.id, None)]
    if scenario == "race":
        query = f"WorkflowType = 'StandingLockWorkflow' AND TaskQueue = '{task_queue}'"
        runs += sorted([(lock.id, lock.run_id) async for lock in env.client.list_workflows(query)])
    written = []
    for i, (workflow_id, run_id) in enumerate(runs):
        history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        path = HISTORIES / BASELINE / f"{scenario}.{i}.json"
        path.write_text(json.dumps({"workflow_id": workflow_id, "history": json.loads(history.to_json())}, indent=1))
        written.append(path)
    return written


async def main() -> None:
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)  # failures here are on purpose
    shutil.rmtree(HISTORIES / BASELINE, ignore_errors=True)
    (HISTORIES / BASELINE).mkdir(parents=True)
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
