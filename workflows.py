"""ReleaseWorkflow runs one DeployWorkflow per deploy; each promotes its container DEV → PROD.

Deterministic code only: every side effect happens in an activity.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities import ReleaseActivities, step_summary
    from release_management import NON_RETRYABLE_ERRORS
    from shared import (
        ENVIRONMENTS,
        DeployRequest,
        DeployResult,
        ReleaseInfo,
        ReleaseResult,
        StepInput,
    )


# A workflow input that fails validation (sent by a client other than
# run_workflow.py) fails the workflow at once instead of retrying its first task.
@workflow.defn(failure_exception_types=[ValidationError])
class ReleaseWorkflow:
    @workflow.run
    async def run(self, release: ReleaseInfo) -> ReleaseResult:
        if not release.deploys:
            release = await workflow.execute_activity_method(
                ReleaseActivities.gather_deployments,
                release.release_key,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=10),
                    non_retryable_error_types=NON_RETRYABLE_ERRORS,
                ),
                summary=f"gather deploys of {release.release_key}",
            )
        if not release.deploys:
            raise ApplicationError(f"release {release.release_key} has no deploys", non_retryable=True)

        approval = await workflow.execute_activity_method(
            ReleaseActivities.gather_release_approval,
            release,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)),
            summary=f"check approval of {release.release_key}",
        )
        if not approval.release_approved:
            raise ApplicationError(
                f"release {release.release_key} is not approved", type="NotApproved", non_retryable=True
            )
        if approval.unapproved_deploys:
            raise ApplicationError(
                f"release {release.release_key} has unapproved deploys: {', '.join(approval.unapproved_deploys)}",
                type="NotApproved",
                non_retryable=True,
            )

        info = workflow.info()
        # Deploys of different containers are independent, so they run side by side;
        # all of them finish (or fail) before the release reports, so none is cut off midway.
        outcomes: list[Any] = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    DeployWorkflow.run,
                    DeployRequest(release_key=release.release_key, run_id=info.run_id, deploy=d),
                    id=f"{info.workflow_id}/{d.container_id}",
                    static_summary=f"{d.container_id}-{d.version} → {', '.join(d.environments)}",
                )
                for d in release.deploys
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return ReleaseResult(release_key=release.release_key, status="SUCCESS", deploys=outcomes)


@workflow.defn(failure_exception_types=[ValidationError])
class DeployWorkflow:
    @workflow.run
    async def run(self, request: DeployRequest) -> DeployResult:
        deploy = request.deploy
        for env in deploy.environments:
            step = StepInput(release_key=request.release_key, run_id=request.run_id, deploy=deploy, env=env)
            # Only the first environment builds; later ones promote what was tested before.
            if env == ENVIRONMENTS[0]:
                await self._step(ReleaseActivities.build, "build", step)
            await self._step(ReleaseActivities.deploy, "deploy", step)
            await self._step(ReleaseActivities.test, "test", step)
        return DeployResult(
            deploy_key=deploy.deploy_key,
            artifact=f"{deploy.container_id}-{deploy.version}",
            environments=deploy.environments,
        )

    async def _step(self, activity: Any, verb: str, step: StepInput) -> str:
        return await workflow.execute_activity_method(
            activity,
            step,
            # Steps heartbeat while they work, so a step whose worker died is
            # retried after heartbeat_timeout, not after the whole start-to-close.
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(seconds=5),
            # Simulated faults retry until they pass; bad input fails at once.
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=5),
                non_retryable_error_types=NON_RETRYABLE_ERRORS,
            ),
            summary=step_summary(verb, step),
        )
