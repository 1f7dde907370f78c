"""The floor for `make bench`: a no-op workflow with the critical path of a release, and nothing else.

The floor (FloorFlatWorkflow, the cheapest way Temporal allows, and the release's own shape) is one
workflow that runs 2 sequential no-op activities (gather, approve), then its deploys side by side as
coroutines, each running 9 sequential no-op activities (build, then deploy and test in DEV, TEST, QC
and PROD): 29 activities for 3 containers. The child floor (FloorReleaseWorkflow) runs each deploy as
a child workflow instead, a second line. Every activity is a regular one with the release's kind of
options (a 30 s start-to-close timeout, the default retry policy). What a release takes beyond this
floor is the project's own cost: its steps' work, its locks, its progress, its starter's checks.

resources/bench.py runs a worker for it in its own process (`worker`). Run alone, this file starts
one floor workflow on a server whose worker polls TASKQUEUE, prints the result and exits:

    .venv/bin/python resources/bench_floor.py --start ADDRESS TASKQUEUE [--child]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

ENVIRONMENTS = ("DEV", "TEST", "QC", "PROD")
CONTAINERS = ("frontend", "sbstore", "backendforfrontend")
# The release's gather and approval activities have this timeout; its steps have 30 minutes (and a heartbeat).
STEP_TIMEOUT = timedelta(seconds=30)
# Activities the floor runs: 2 + 3 x 9.
STEPS_PER_CHILD = 1 + 2 * len(ENVIRONMENTS)
ACTIVITIES = 2 + len(CONTAINERS) * STEPS_PER_CHILD


@activity.defn(name="floor_step")
async def floor_step(what: str) -> str:
    """Does nothing: a step's round trip through Temporal and nothing else."""
    return what


async def _step(what: str) -> None:
    await workflow.execute_activity(floor_step, what, start_to_close_timeout=STEP_TIMEOUT, summary=what)


@workflow.defn(name="FloorDeployWorkflow")
class FloorDeployWorkflow:
    @workflow.run
    async def run(self, container: str) -> int:
        return await _deploy(container)


async def _deploy(container: str) -> int:
    steps = 0
    for env in ENVIRONMENTS:
        for verb in (["build"] if env == ENVIRONMENTS[0] else []) + ["deploy", "test"]:
            await _step(f"{verb} {container} {env}")
            steps += 1
    return steps


@workflow.defn(name="FloorFlatWorkflow")
class FloorFlatWorkflow:
    """The release's shape: one workflow, its deploys side by side as coroutines (containers: how many)."""

    @workflow.run
    async def run(self, containers: int) -> int:
        await _step("gather")
        await _step("approve")
        done = await asyncio.gather(*(_deploy(f"c{i}") for i in range(containers)))
        return 2 + sum(done)


@workflow.defn(name="FloorReleaseWorkflow")
class FloorReleaseWorkflow:
    @workflow.run
    async def run(self, key: str) -> int:
        await _step(f"gather {key}")
        await _step(f"approve {key}")
        info = workflow.info()
        done = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    FloorDeployWorkflow.run,
                    c,
                    id=f"{info.workflow_id}/{c}",
                    static_summary=f"{c} → DEV, TEST, QC, PROD",
                )
                for c in CONTAINERS
            )
        )
        return 2 + sum(done)


def worker(client: Client, task_queue: str) -> Worker:
    """A no-op worker for the floor (async activities: no thread pool needed), with the release worker's sandbox."""
    from run_worker import workflow_runner

    return Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorFlatWorkflow, FloorReleaseWorkflow, FloorDeployWorkflow],
        activities=[floor_step],
        workflow_runner=workflow_runner(),
    )


def workflow_id() -> str:
    return f"floor-{uuid.uuid4().hex[:12]}"


async def run_once(
    client: Client, task_queue: str, wf_id: str | None = None, child: bool = False, containers: int = 3
) -> tuple[str, int]:
    """Run one floor workflow to its result: (workflow id, activities run). child: the child-workflow floor."""
    wf_id = wf_id or workflow_id()
    if child:
        steps = await client.execute_workflow(FloorReleaseWorkflow.run, "FLOOR", id=wf_id, task_queue=task_queue)
    else:
        steps = await client.execute_workflow(FloorFlatWorkflow.run, containers, id=wf_id, task_queue=task_queue)
    return wf_id, steps


async def start(client: Client, task_queue: str) -> Any:
    """Start one floor workflow (the flat one, 3 containers): its handle."""
    return await client.start_workflow(FloorFlatWorkflow.run, 3, id=workflow_id(), task_queue=task_queue)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_floor.py", description="Run one floor workflow and print its result.")
    parser.add_argument("--start", nargs=2, metavar=("ADDRESS", "TASKQUEUE"), required=True)
    parser.add_argument("--child", action="store_true", help="the child-workflow floor")
    args = parser.parse_args(argv)
    address, task_queue = args.start
    # As run_workflow.py connects: the pydantic data converter.
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    wf_id, steps = await run_once(client, task_queue, child=args.child)
    print(f"Result: floor {wf_id}: {steps} activities", flush=True)
    return 0 if steps == ACTIVITIES else 1


if __name__ == "__main__":
    from utils import exit_now  # the repo root is importable: the project is installed in the venv

    exit_now(asyncio.run(main(sys.argv[1:])))
