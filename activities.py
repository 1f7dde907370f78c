"""The Temporal activities: thin wrappers that run the release management system's steps, their failures classified.

They are synchronous and run on the worker's thread pool, because the steps do
blocking file I/O; heartbeats report liveness so a dead worker is noticed in seconds.

Every failure leaves here classified: SimulatedFailure is transient and retried;
ReleaseError (bad data, a missing artifact) is final by its type name, which workflows
list as non-retryable; OSError becomes a retryable WorkspaceError, since a person can fix
a folder's permissions or a full disk outside; anything else is a programming error,
a final StepBug.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError, FailureError

from orchestrator.command_runner import CommandCancelled, CommandError, Liveness
from orchestrator.errors import LedgerUnavailable, ReleaseError
from orchestrator.names import clip
from release_management import ReleaseManagement
from shared import (
    ApprovalReport,
    DecisionRecord,
    ReleaseInfo,
    ReleaseRequest,
    RollbackRequest,
    RollbackTarget,
    StepInput,
    StepResult,
    step_summary,
)
from utils import FailureInjector, SimulatedFailure

T = TypeVar("T")
MESSAGE_MAX = 300


def _cancelled() -> bool:
    """Whether a step's command should stop: its activity was cancelled, or the worker is shutting down."""
    return activity.is_cancelled() or activity.is_worker_shutdown()


class ReleaseActivities:
    def __init__(self, rm: ReleaseManagement, failures: FailureInjector | None = None) -> None:
        """failures also strike rm's steps between their effect and their ledger line (FAILURE_AT=effect):
        they are hooked into rm.after_effect, unless rm was given a hook of its own."""
        self.rm = rm
        self.failures = failures or FailureInjector("never")
        if rm.after_effect is None or isinstance(getattr(rm.after_effect, "__self__", None), ReleaseActivities):
            rm.after_effect = self._after_effect
        if rm.midway is None or isinstance(getattr(rm.midway, "__self__", None), ReleaseActivities):
            rm.midway = self._midway

    def all(self) -> list[Callable[..., Any]]:
        """Every activity, for registering on a worker."""
        return [
            self.gather_deployments,
            self.gather_rollback,
            self.choose_rollback,
            self.gather_release_approval,
            self.check_upstream,
            self.record_approval,
            self.build,
            self.deploy,
            self.test,
            self.rollback,
        ]

    @activity.defn
    def gather_deployments(self, release_key: str) -> ReleaseInfo:
        return self._bookkeeping(
            f"gather deployments of {clip(release_key)}", lambda: self.rm.gather_deployments(release_key)
        )

    @activity.defn
    def gather_rollback(self, request: ReleaseRequest) -> ReleaseInfo:
        """A rollback-env's release, from the catalog and the ledger: its version a first look (choose_rollback)."""
        target = request.rollback
        assert target is not None
        return self._bookkeeping(
            f"gather {request.release_key}",
            lambda: self.rm.rollback_env(target.env, target.container, request.by or "", target.version),
        )

    @activity.defn
    def choose_rollback(self, target: RollbackTarget) -> str:
        """The version a rollback-env puts back, chosen under the target's lock: what passed before, as of now."""
        return self._bookkeeping(
            f"choose the version {target.release_key()} puts back", lambda: self.rm.rollback_choice(target)
        )

    @activity.defn
    def gather_release_approval(self, release: ReleaseInfo) -> ApprovalReport:
        return self._bookkeeping(
            f"check approval of {release.release_key}", lambda: self.rm.gather_release_approval(release)
        )

    @activity.defn
    def check_upstream(self, release: ReleaseInfo) -> None:
        self._bookkeeping(f"check what {release.release_key} promotes", lambda: self.rm.check_upstream(release))

    @activity.defn
    def record_approval(self, record: DecisionRecord) -> None:
        self._run(
            f"record the approval of {record.release_key}",
            lambda: self.rm.record_approval(record, attempt=activity.info().attempt),
        )

    @activity.defn
    def build(self, step: StepInput) -> StepResult:
        return self._step("build", step)

    @activity.defn
    def deploy(self, step: StepInput) -> StepResult:
        return self._step("deploy", step)

    @activity.defn
    def test(self, step: StepInput) -> StepResult:
        return self._step("test", step)

    @activity.defn
    def rollback(self, request: RollbackRequest) -> StepResult:
        step, attempt = request.step, activity.info().attempt
        what = step_summary("rollback", step)

        def run() -> StepResult:
            self.failures.maybe_fail(what, attempt, key=step.release_key)
            live = Liveness(activity.heartbeat)
            outcome = self.rm.rollback(step, attempt=attempt, live=live, by=request.by, identity=request.identity)
            return StepResult(artifact=outcome.artifact, attempt=attempt, applied=outcome.applied)

        return self._run(what, run)

    def _step(self, verb: str, step: StepInput) -> StepResult:
        attempt = activity.info().attempt
        what = step_summary(verb, step)

        def run() -> StepResult:
            self.failures.maybe_fail(what, attempt, key=step.release_key)
            outcome = getattr(self.rm, verb)(step, attempt=attempt, live=Liveness(activity.heartbeat, _cancelled))
            # The ledger line is written: a strike here (FAILURE_AT=end) makes Temporal run a
            # step again that is applied and recorded.
            self.failures.maybe_fail(what, attempt, key=step.release_key, point="end")
            return StepResult(artifact=outcome.artifact, attempt=attempt, applied=outcome.applied)

        return self._run(what, run)

    def _bookkeeping(self, what: str, fn: Callable[[], T]) -> T:
        """A bookkeeping step: simulated faults strike it too (FAILURE_RATE), before it runs."""

        def run() -> T:
            self.failures.maybe_fail(what, activity.info().attempt)
            return fn()

        return self._run(what, run)

    def _after_effect(self, verb: str, step: StepInput, attempt: int) -> None:
        # The effect is in place, its ledger line not yet: a strike here (FAILURE_AT=effect) is
        # a crash that leaves an applied step unrecorded, for the retry to find and claim.
        self.failures.maybe_fail(step_summary(verb, step), attempt, key=step.release_key, point="effect")

    def _midway(self, verb: str, step: StepInput, attempt: int) -> None:
        # The artifact is deployed, its configuration not yet (FAILURE_AT=midway): a crash here
        # must leave a configuration beside the artifact it names, and the retry completes the pair.
        self.failures.maybe_fail(step_summary(verb, step), attempt, key=step.release_key, point="midway")

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        done: list[T] = []
        try:
            # The worker raises CancelledError into a sync activity's thread wherever it is;
            # shielded, an attempt in flight when its release is cancelled finishes whole,
            # never half a copy or an effect without its ledger line.
            with activity.shield_thread_cancel_exception():
                done.append(self._classified(what, fn))
        except CancelledError:
            if done:
                # The step completed: report it. The workflow waits for this attempt, then stops.
                return done[0]
            raise
        return done[0]

    def _classified(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (SimulatedFailure, ReleaseError, FailureError):
            raise  # transient, final by type name, or already Temporal's own
        except CommandCancelled:
            if activity.is_cancelled():
                raise CancelledError("the step's command was stopped: the step was cancelled") from None
            # The worker is stopping (Ctrl+C): the step is not cancelled, and another worker retries it.
            raise ApplicationError(f"{what}: the worker stopped while its command ran", type="WorkerStopped") from None
        except CommandError as e:
            # A step's command (commands.py): "try again" exit codes and timeouts retry, the rest is final.
            # A final one ends the release: its message names the step. A retried one is shown beside its step.
            message = clip(f"{what}: {e}" if not e.retryable else str(e), MESSAGE_MAX)
            raise ApplicationError(message, type=type(e).__name__, non_retryable=not e.retryable) from None
        except LedgerUnavailable as e:
            raise ApplicationError(
                clip(f"{what}: {e}; the step is retried", MESSAGE_MAX), type="WorkspaceError"
            ) from None
        except OSError as e:
            where = e.filename if e.filename is not None else self.rm.workspace
            raise ApplicationError(
                clip(f"{what}: {e.strerror or e} ({where}); fix it and the step goes on", MESSAGE_MAX),
                type="WorkspaceError",
            ) from None
        except Exception as e:
            # The traceback goes to the worker's log; the release gets one line and stops.
            activity.logger.error("%s: programming error", what, exc_info=e)
            raise ApplicationError(
                clip(f"{type(e).__name__}: {e}", MESSAGE_MAX).replace("\n", " "), type="StepBug", non_retryable=True
            ) from None
