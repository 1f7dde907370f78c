"""Replay recorded histories of real releases and locks: a workflow change that would break running ones fails.

The versioning policy (docs/design.md, Versioning) says what must replay: every history of the current baseline
and of the one before it, on the current code. With Worker Versioning a release never replays on other code than
its own; without it (a server that lacks it), this is what keeps a worker upgrade from breaking running releases.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

import orchestrator.flow.steps as steps
from orchestrator.locks import LOCK_WORKFLOWS
from tests.record_histories import BASELINE, HISTORIES, PREVIOUS_BASELINE, SCENARIOS
from workflows import ReleaseWorkflow

CURRENT = sorted((HISTORIES / BASELINE).glob("*.json"))
PREVIOUS = sorted((HISTORIES / PREVIOUS_BASELINE).glob("*.json")) if PREVIOUS_BASELINE else []


def load(path: Path) -> WorkflowHistory:
    recorded = json.loads(path.read_text())
    return WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])


def workflow_type(path: Path) -> str:
    started = json.loads(path.read_text())["history"]["events"][0]["workflowExecutionStartedEventAttributes"]
    return str(started["workflowType"]["name"])


def test_the_baselines_are_the_current_one_and_the_one_before() -> None:
    assert {p.name for p in HISTORIES.iterdir() if p.is_dir()} == {BASELINE, *([PREVIOUS_BASELINE] or [])} - {None}
    assert {p.name.split(".")[0] for p in CURRENT} == set(SCENARIOS)
    assert {workflow_type(p) for p in CURRENT} == {"ReleaseWorkflow", "StandingLockWorkflow"}
    assert sum(workflow_type(p) == "StandingLockWorkflow" for p in CURRENT) >= 6
    # The 1.1 lock, kept while its runs drain, replays its own histories.
    assert {workflow_type(p) for p in PREVIOUS} == {"ReleaseWorkflow", "TargetLockWorkflow"}


REPLAYED = CURRENT + PREVIOUS


@pytest.mark.parametrize("path", REPLAYED, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=[ReleaseWorkflow, *LOCK_WORKFLOWS], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(load(path))


@contextmanager
def deploy_and_test_swapped() -> Iterator[None]:
    """A reorder of the real workflow: each environment's deploy starts a test and each test a deploy.

    Anchored on the one function that starts the steps (orchestrator.flow.steps.start_step), not on source text.
    """
    real = steps.start_step
    swap = {"deploy": "test", "test": "deploy"}
    steps.start_step = lambda verb, step: real(swap.get(verb, verb), step)  # type: ignore[assignment]
    try:
        yield
    finally:
        steps.start_step = real  # type: ignore[assignment]


async def replay_failures(paths: list[Path]) -> dict[str, Exception]:
    """Replay the histories in this process (the swap lives only here); the failures by history file name."""
    replayer = Replayer(
        workflows=[ReleaseWorkflow, *LOCK_WORKFLOWS],
        data_converter=pydantic_data_converter,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    histories = {p.name: load(p) for p in paths}
    names = {
        h.events[0].workflow_execution_started_event_attributes.original_execution_run_id: n
        for n, h in histories.items()
    }

    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories.values():
            yield history

    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    return {names[run_id]: err for run_id, err in results.replay_failures.items()}


def deploy_histories() -> list[Path]:
    """The histories of the current baseline in which a deploy step was scheduled."""
    return [
        p
        for p in CURRENT
        if any(
            e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name") == "deploy"
            for e in json.loads(p.read_text())["history"]["events"]
        )
    ]


async def test_a_reordered_release_workflow_is_caught_by_replay() -> None:
    deploys = deploy_histories()
    assert len(deploys) >= 8, deploys
    # The same replayer, unchanged: every history replays, so what fails below fails for the reorder.
    assert await replay_failures(CURRENT) == {}
    with deploy_and_test_swapped():
        failures = await replay_failures(CURRENT)
    assert sorted(failures) == sorted(p.name for p in deploys)
    for name, err in failures.items():
        assert isinstance(err, workflow.NondeterminismError), (name, err)
