"""Replay recorded histories of real releases: a workflow change that would break running releases fails here."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

import workflows
from locks import TargetLockWorkflow
from tests.record_histories import GENERATION, PAST_GENERATIONS, SCENARIOS, SINCE
from workflows import DeployWorkflow, ReleaseWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    recorded = json.loads(path.read_text())
    return WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])


def test_the_recorded_scenarios_are_all_there() -> None:
    scenarios = {p.name.split(".")[0] for p in HISTORIES}
    assert scenarios == set(SCENARIOS)
    # Each scenario in each generation that records it.
    recorded = {tuple(p.name.split(".")[:2]) for p in HISTORIES}
    for generation in (GENERATION, *PAST_GENERATIONS):
        since = [s for s in SCENARIOS if int(generation[1:]) >= SINCE.get(s, 1)]
        assert {s for s, g in recorded if g == generation} == set(since), generation
    types = {
        json.loads(p.read_text())["history"]["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"][
            "name"
        ]
        for p in HISTORIES
    }
    assert types == {"ReleaseWorkflow", "DeployWorkflow", "TargetLockWorkflow"}
    # Every generation stays: the first (no generation in the name) and the current one.
    generations = {p.name.split(".")[1] for p in HISTORIES if not p.name.split(".")[1].isdigit()}
    assert generations == {GENERATION, *PAST_GENERATIONS} and any(p.name.split(".")[1].isdigit() for p in HISTORIES)


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[ReleaseWorkflow, DeployWorkflow, TargetLockWorkflow], data_converter=pydantic_data_converter
    )
    await replayer.replay_workflow(load(path))


# A reorder of the real workflows: each environment tests before it deploys, in every generation
# (the release running its own deploys; a DeployWorkflow with target locks; the first one, without).
# Each swap must find its code exactly once.
SWAPS = [
    ('await self._step("deploy", step)\n', 'await self._step("test", step)\n'),
    ('await self._step("test", step, done=True)\n', 'await self._step("deploy", step, done=True)\n'),
    (
        'await self._step("deploy", step, "running")\n',
        'await self._step("test", step, "running")\n',
    ),
    ('await self._step("test", step, "done")\n', 'await self._step("deploy", step, "done")\n'),
    ('+ ["deploy", "test"]\n', '+ ["test", "deploy"]\n'),
]


def workflows_module(swaps: list[tuple[str, str]]) -> ModuleType:
    """workflows.py as it is on disk, with these changes, loaded as a module of its own."""
    source = Path(workflows.__file__).read_text()
    for old, new in swaps:
        assert source.count(old) == 1, f"workflows.py no longer holds {old!r} once: update SWAPS"
        source = source.replace(old, new)
    module = ModuleType(f"reordered_workflows_{len(swaps)}")
    module.__file__ = workflows.__file__
    sys.modules[module.__name__] = module  # its type hints are resolved through sys.modules
    try:
        exec(compile(source, workflows.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


async def replay_failures(module: ModuleType, paths: list[Path]) -> dict[str, Exception]:
    """Replay the histories with this module's workflows; the failures by history file name."""
    # Outside the sandbox: the module exists only in this process, the sandbox would import it anew.
    replayer = Replayer(
        workflows=[module.ReleaseWorkflow, module.DeployWorkflow, TargetLockWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    names = {}
    histories = []
    for path in paths:
        history = load(path)
        names[history.events[0].workflow_execution_started_event_attributes.original_execution_run_id] = path.name
        histories.append(history)

    async def each() -> AsyncIterator[WorkflowHistory]:
        for history in histories:
            yield history

    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    return {names[run_id]: err for run_id, err in results.replay_failures.items()}


def deploy_histories() -> list[Path]:
    """The histories in which a deploy step was scheduled: a DeployWorkflow's, or a release's that runs its deploys."""
    return [
        p
        for p in HISTORIES
        if any(
            e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name") == "deploy"
            for e in json.loads(p.read_text())["history"]["events"]
        )
    ]


async def test_a_reordered_deploy_workflow_is_caught_by_replay() -> None:
    deploys = deploy_histories()
    assert len(deploys) >= 20, deploys
    assert {p.name.split(".")[1] for p in deploys} >= {GENERATION, *PAST_GENERATIONS}, deploys
    # The same loading, unchanged: every history replays, so what fails below fails for the reorder.
    assert await replay_failures(workflows_module([]), HISTORIES) == {}
    failures = await replay_failures(workflows_module(SWAPS), HISTORIES)
    assert sorted(failures) == sorted(p.name for p in deploys)
    for name, err in failures.items():
        assert isinstance(err, workflow.NondeterminismError), (name, err)
