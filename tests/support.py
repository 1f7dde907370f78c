"""Running the real scripts as subprocesses against a real Temporal server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from temporalio import activity
from temporalio.api.history.v1 import ActivityTaskStartedEventAttributes
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import ReleaseActivities
from orchestrator.locks import LOCK_WORKFLOWS, LockActivities, LockAnswer, LockMove, StandingLockWorkflow
from release_management import ReleaseManagement
from run_worker import workflow_runner
from shared import StepInput, StepResult
from tests.conftest import REPO
from tests.steps import promote
from tests.warm_scripts import WARM_SCRIPTS
from utils import EXIT_CODE, FailureInjector
from workflows import ReleaseWorkflow


def script_env(target: str, workspace: Path, task_queue: str, **overrides: str) -> dict[str, str]:
    """The environment a person would set, isolated from any .env or profile on this machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "RELEASE_", "FAILURE_", "FAILING_", "DEMO_", "WORKER_"))
    }
    env.update(
        TEMPORAL_ADDRESS=target,
        TEMPORAL_NAMESPACE="default",
        TEMPORAL_CONFIG_FILE=str(workspace / "no-profile.toml"),
        RELEASE_ENV_FILE="",
        RELEASE_WORKSPACE=str(workspace),
        RELEASE_TASK_QUEUE=task_queue,
        DEMO_STEP_SECONDS="0",
        FAILURE_RATE="never",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def task_queue() -> str:
    return f"e2e-{uuid.uuid4()}"


class WorkerProcess:
    """run_worker.py in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path, warm: bool = True) -> None:
        """warm: started as a fork of the warm process (tests/warm_scripts.py), unless WARM_SCRIPTS=off."""
        self.env, self.log = env, log
        self.warm = warm and WARM_SCRIPTS.on
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30, may_exit: bool = False) -> WorkerProcess:
        """Start it and wait for its ready line; may_exit: a worker whose injected failure ends it (EXIT_CODE)
        before that line, having taken a task first, is started too (the caller counts its exit)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            plain = [sys.executable, str(REPO / "run_worker.py")]
            command = WARM_SCRIPTS.command("run_worker.py") if self.warm else plain
            self.proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while b"Worker ready" not in self.log.read_bytes()[offset:]:
            if may_exit and self.proc.poll() == EXIT_CODE:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the worker itself; a warm one's launcher then ends as its command did, once it is reaped."""
        assert self.proc is not None
        if self.warm and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(WARM_SCRIPTS.pid_of(self.proc.pid), signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        """Ctrl+C, as a person would; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop_quietly(self) -> int | None:
        """Stop for cleanup: Ctrl+C, then SIGKILL if that fails; the exit code, or None if killed.

        Never raises, so a test's own failure is the one reported.
        """
        if self.proc is None:
            return None
        try:
            return self.stop()
        except Exception:
            self.proc.kill()
            self.proc.wait()
            return None


@contextmanager
def stopped_at_the_end(workers: list[WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """Workers that are stopped when the block ends, however it ends; add restarted ones to the list."""
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop_quietly()


async def run_python(
    argv: list[str], env: dict[str, str], limit: float = 120, merge: bool = True
) -> tuple[int, str, str]:
    """Run this interpreter with argv from the repo root to its end: exit code, stdout, stderr ("" if merged).

    run_workflow.py starts warm (tests/warm_scripts.py)."""
    script = str(REPO / "run_workflow.py")
    command = [*WARM_SCRIPTS.command("run_workflow.py"), *argv[1:]] if argv[:1] == [script] else [sys.executable, *argv]
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge else asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    return proc.returncode or 0, out.decode(), (err or b"").decode()


async def run_patched(args: list[str], env: dict[str, str], **constants: float) -> tuple[int, str]:
    """run_workflow.py's main with some of its waits (orchestrator/cli/waits.py) shortened, in seconds."""
    sets = "".join(
        f"w.{name} = timedelta(seconds={value}); " if name == "WORKER_ANSWER" else f"w.{name} = {value}; "
        for name, value in constants.items()
    )
    code = (
        "import asyncio, sys; from datetime import timedelta; import run_workflow as r; "
        "import orchestrator.cli.waits as w; "
        f"{sets}r.exit_now(asyncio.run(r.main(sys.argv[1:])))"
    )
    exit_code, out, _ = await run_python(["-c", code, *args], env)
    return exit_code, out


async def run_script(args: list[str], env: dict[str, str], limit: float = 120) -> tuple[int, str]:
    """Run run_workflow.py to completion; returns exit code and combined output."""
    code, out, _ = await run_python([str(REPO / "run_workflow.py"), *args], env, limit)
    return code, out


async def activity_starts(client: Client, workflow_id: str) -> list[ActivityTaskStartedEventAttributes]:
    """Every activity start in a workflow's history and its child workflows' histories.

    History keeps the last attempt of each activity, so attempt - 1 is its retries.
    """
    ids, starts = [workflow_id], []
    while ids:
        history = await client.get_workflow_handle(ids.pop()).fetch_history()
        for event in history.events:
            if event.HasField("activity_task_started_event_attributes"):
                starts.append(event.activity_task_started_event_attributes)
            if event.HasField("child_workflow_execution_started_event_attributes"):
                ids.append(event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id)
    return starts


async def until(condition: Callable[[], bool], limit: float = 60) -> None:
    """Wait for a condition, checking often; fail after limit seconds."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - the condition is another process's state
            await asyncio.sleep(0.05)


async def worker_exits(
    workers: list[WorkerProcess], release: asyncio.Task[tuple[int, str]], limit: int = 10
) -> AsyncIterator[int]:
    """Each time the last worker ends by FAILURE_ACTION=exit before the release does: the number of exits so far.

    The workspace is then as the exit left it, for the caller to look at; the next worker starts when the caller
    asks for the next exit. Ends when the release ends.
    """
    exits = 0
    while True:
        proc = workers[-1].proc
        assert proc is not None
        died = asyncio.create_task(asyncio.to_thread(proc.wait))
        async with asyncio.timeout(120):
            await asyncio.wait({died, release}, return_when=asyncio.FIRST_COMPLETED)
        if not died.done():
            return
        assert died.result() == EXIT_CODE, workers[-1].log.read_text()[-3000:]
        exits += 1
        assert exits < limit, "the worker keeps dying"
        yield exits
        workers.append(WorkerProcess(workers[-1].env, workers[-1].log).start(may_exit=True))


async def eventually(probe: Callable[[], Awaitable[bool]], limit: float = 30) -> None:
    """Wait until an async probe (a query, a describe) says yes, asking often; fail after limit seconds."""
    async with asyncio.timeout(limit):
        while not await probe():  # noqa: ASYNC110 - another process's state, asked for
            await asyncio.sleep(0.05)


class TrackedLocks(LockActivities):
    """The lock activity, remembering which locks it asked for.

    Standing locks never end: a worker leaving a test first waits until its locks are free (nobody owns or waits
    for them), then terminates them, so that no lock of a finished test lingers on the shared test server.
    """

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.ids: set[str] = set()

    @activity.defn(name="move_locks")
    async def move_locks(self, move: LockMove) -> list[LockAnswer]:
        answers = await super().move_locks(move)
        self.ids.update(a.lock_id for a in answers)
        return answers

    async def settle(self, limit: float = 5) -> None:
        handles = [self.client.get_workflow_handle(i) for i in sorted(self.ids)]

        async def free(handle: WorkflowHandle) -> bool:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                return True
            owner = await handle.query(StandingLockWorkflow.owner_request)
            return owner is None and not await handle.query(StandingLockWorkflow.waiting)

        try:
            async with asyncio.timeout(limit):
                for handle in handles:
                    while not await free(handle):  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
        except (TimeoutError, RPCError):
            pass
        for handle in handles:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                continue
            try:
                await handle.terminate("the test that used this lock is over")
            except RPCError:
                # It ended between the two calls (the time-skipping server may skip ahead meanwhile): nothing left
                # to clean up; anything else is still an error.
                if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                    raise


def activity_name(fn: Callable[..., object]) -> str:
    """The name an activity function is registered under (its @activity.defn name)."""
    defn = activity._Definition.from_callable(fn)
    return defn.name if defn is not None and defn.name else fn.__name__


@asynccontextmanager
async def in_process_worker(
    env: WorkflowEnvironment,
    rm: ReleaseManagement,
    failures: FailureInjector | None = None,
    replace: Callable[..., object] | list[Callable[..., object]] | None = None,
) -> AsyncIterator[str]:
    """A worker in this process with the real activities; yields its task queue.

    `replace` is an activity function (or a list of them) named like the one it stands in for (say `deploy`).
    """
    locks = TrackedLocks(env.client)
    activities = [*ReleaseActivities(rm, failures).all(), *locks.all()]
    stand_ins = [] if replace is None else replace if isinstance(replace, list) else [replace]
    names = {activity_name(f) for f in stand_ins}
    activities = [a for a in activities if activity_name(a) not in names] + stand_ins
    task_queue = f"tq-{uuid.uuid4()}"
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[ReleaseWorkflow, *LOCK_WORKFLOWS],
            activities=activities,
            activity_executor=executor,
            workflow_runner=workflow_runner(),  # the sandbox as run_worker.py sets it up
        ):
            try:
                yield task_queue
            finally:
                await locks.settle()


def run_release_steps(rm: ReleaseManagement, *keys: str, prefix: str = "run") -> None:
    """Run releases' steps in order without Temporal, as the worker would (run id "<prefix>-<key>")."""
    for key in keys:
        promote(rm, key, run=f"{prefix}-{key}")


class GatedStep:
    """A stand-in for one step activity (say `test`) that runs the real one, except that the steps `stops` picks
    wait at the gate until the test opens it. `entered` is set once such a step is waiting there."""

    def __init__(self, rm: ReleaseManagement, verb: str, stops: Callable[[StepInput], bool]) -> None:
        self.real = getattr(ReleaseActivities(rm), verb)
        self.stops = stops
        self.gate = threading.Event()
        self.entered = threading.Event()

        @activity.defn(name=verb)
        def step(step: StepInput) -> StepResult:
            if self.stops(step):
                self.entered.set()
                # Heartbeats while it waits: the step's heartbeat timeout is a few seconds.
                while not self.gate.wait(0.5):
                    activity.heartbeat()
            return self.real(step)

        self.activity = step

    async def wait_entered(self, limit: float = 30) -> None:
        await until(self.entered.is_set, limit)
