"""Freeze windows in a release: a deploy waits out a frozen environment on a durable timer, unless a person
unfreezes the release (an Update, or a Signal of the same name).

Workflow code. The windows' arithmetic is orchestrator/freeze.py's, fed with workflow.now().
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from orchestrator.access import check_actor
    from orchestrator.flow.release_run import ReleaseRun
    from orchestrator.flow.steps import record
    from orchestrator.freeze import frozen_until
    from orchestrator.names import check_approver
    from shared import (
        CANCELLED,
        ENVIRONMENTS,
        FAILED,
        FROZEN,
        SUCCESS,
        FreezeWindow,
        StepInput,
        Unfreeze,
        UnfreezeReply,
    )


class FreezeGate:
    def __init__(self, run: ReleaseRun) -> None:
        self.run = run
        # The environment each deploy waits to enter while it is frozen, by deploy key.
        self.waiting: dict[str, str] = {}

    def frozen(self, env: str) -> tuple[datetime, FreezeWindow] | None:
        """When the freeze of env in force now ends, and its window; None if env is not frozen (or was unfrozen)."""
        windows = self.run.info.freezes.get(env)  # type: ignore[call-overload]
        if not windows or self.run.state.unfrozen_by is not None:
            return None
        return frozen_until(windows, workflow.now())

    async def wait_out(self, step: StepInput) -> None:
        """Wait until step.env is no longer frozen, on a durable timer, or until a person unfreezes the release."""
        frozen = self.frozen(step.env)
        if frozen is None:
            return
        key = step.deploy.deploy_key
        while frozen is not None:
            until, window = frozen
            reason = f": {window.reason}" if window.reason else ""
            self.waiting[key] = step.env
            note = f"the {step.env} freeze to end at {until:%Y-%m-%d %H:%M} UTC{reason}"
            self.run.note(step, "waiting", "freeze", note=note)
            self.run.set_status(FROZEN)
            try:
                await workflow.wait_condition(
                    lambda: self.run.state.unfrozen_by is not None,
                    timeout=until - workflow.now(),
                    timeout_summary=f"{step.env} freeze ends",
                )
            except TimeoutError:
                pass
            finally:
                del self.waiting[key]
                if not self.waiting:
                    self.run.resume(FROZEN)
            # Another window may begin where this one ends.
            frozen = self.frozen(step.env)
        self.run.note(step, "running", "freeze")

    # --- unfreeze, by Update or Signal ---

    def check(self, request: Unfreeze) -> str:
        """Who unfreezes; ValueError says why the release cannot be unfrozen."""
        state = self.run.state
        key = state.release_key
        approver = check_approver(request.approver, "unfreezes")
        if state.status in (SUCCESS, FAILED, CANCELLED):
            raise ValueError(f"release {key} has finished ({state.status}): nothing to unfreeze")
        if state.unfrozen_by is not None:
            raise ValueError(f"release {key} is already unfrozen by {state.unfrozen_by}")
        if not self.waiting:
            raise ValueError(f"release {key} is not frozen ({state.status}): nothing waits for a freeze to end")
        for env in sorted(set(self.waiting.values()), key=ENVIRONMENTS.index):
            check_actor(self.run.info, approver, env)
        return approver

    async def apply(self, request: Unfreeze) -> UnfreezeReply:
        approver, state = self.check(request), self.run.state
        environments = sorted(set(self.waiting.values()), key=ENVIRONMENTS.index)
        state.unfrozen_by, state.unfrozen_at = approver, workflow.now()
        self.run.event(f"freeze of {', '.join(environments)} overridden by {approver} for this release")
        await record(self.run, "unfreeze", approver, [state.release_key], environments, request.identity)
        return UnfreezeReply(release_key=state.release_key, status=state.status, environments=environments)
