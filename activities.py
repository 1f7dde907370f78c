"""Temporal activities: thin wrappers that run the release management system's steps.

They are synchronous and run on the worker's thread pool, because the steps do
blocking file I/O; heartbeats report liveness so a dead worker is noticed in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from release_management import ReleaseManagement
from shared import ApprovalRecord, ApprovalReport, ReleaseInfo, StepInput, StepResult
from utils import FailureInjector


def step_summary(verb: str, step: StepInput) -> str:
    d = step.deploy
    arrow = "in" if verb == "test" else "→"
    return f"{verb} {d.container_id}-{d.version} {arrow} {step.env}"


class ReleaseActivities:
    def __init__(self, rm: ReleaseManagement, failures: FailureInjector | None = None) -> None:
        self.rm = rm
        self.failures = failures or FailureInjector("never")

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for registering on a worker."""
        return [
            self.gather_deployments,
            self.gather_release_approval,
            self.record_approval,
            self.build,
            self.deploy,
            self.test,
        ]

    @activity.defn
    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        self.failures.maybe_fail(f"gather deployments of {release_key}", activity.info().attempt)
        return self.rm.gather_deployments(release_key)

    @activity.defn
    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        self.failures.maybe_fail(f"gather approval of {release.release_key}", activity.info().attempt)
        return self.rm.gather_release_approval(release)

    @activity.defn
    def record_approval(self, record: ApprovalRecord) -> None:
        self.rm.record_approval(record, attempt=activity.info().attempt)

    @activity.defn
    def build(self, step: StepInput) -> StepResult:
        return self._step("build", step)

    @activity.defn
    def deploy(self, step: StepInput) -> StepResult:
        return self._step("deploy", step)

    @activity.defn
    def test(self, step: StepInput) -> StepResult:
        return self._step("test", step)

    def _step(self, verb: str, step: StepInput) -> StepResult:
        attempt = activity.info().attempt
        self.failures.maybe_fail(step_summary(verb, step), attempt, key=step.release_key)
        run = getattr(self.rm, verb)
        artifact = run(step, attempt=attempt, progress=activity.heartbeat)
        return StepResult(artifact=artifact, attempt=attempt)
