"""Replay recorded histories of real releases: a workflow change that would break running releases fails here."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from activities import ReleaseActivities
from locks import TargetLockWorkflow
from shared import DeployRequest, DeployResult, StepInput
from tests.record_histories import GENERATION
from workflows import DeployWorkflow, ReleaseWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    recorded = json.loads(path.read_text())
    return WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])


def test_the_recorded_scenarios_are_all_there() -> None:
    scenarios = {p.name.split(".")[0] for p in HISTORIES}
    assert scenarios == {"success", "retries", "missing-artifact", "unknown-key", "approvals"}
    types = {
        json.loads(p.read_text())["history"]["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"][
            "name"
        ]
        for p in HISTORIES
    }
    assert types == {"ReleaseWorkflow", "DeployWorkflow", "TargetLockWorkflow"}
    # Every generation stays: the first (no generation in the name) and the current one.
    generations = {p.name.split(".")[1] for p in HISTORIES if not p.name.split(".")[1].isdigit()}
    assert generations == {GENERATION} and any(p.name.split(".")[1].isdigit() for p in HISTORIES)


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[ReleaseWorkflow, DeployWorkflow, TargetLockWorkflow], data_converter=pydantic_data_converter
    )
    await replayer.replay_workflow(load(path))


# Same name, steps in another order: the kind of change that breaks releases in flight.
@workflow.defn(name="DeployWorkflow", sandboxed=False)  # defined in a test module that does I/O at import
class ReorderedDeployWorkflow:
    @workflow.run
    async def run(self, request: DeployRequest) -> DeployResult:
        for env in request.deploy.environments:
            step = StepInput(release_key=request.release_key, run_id=request.run_id, deploy=request.deploy, env=env)
            for activity in (ReleaseActivities.test, ReleaseActivities.deploy):
                await workflow.execute_activity_method(activity, step, start_to_close_timeout=timedelta(minutes=1))
        raise AssertionError("unreachable in replay")


async def test_a_reordered_workflow_is_caught_by_replay() -> None:
    child = next(p for p in HISTORIES if p.name == "success.1.json")
    replayer = Replayer(workflows=[ReorderedDeployWorkflow], data_converter=pydantic_data_converter)
    with pytest.raises(workflow.NondeterminismError):
        await replayer.replay_workflow(load(child))
