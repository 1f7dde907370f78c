"""The first five minutes, end to end: a real dev server, the real scripts, the hints run as printed.

No worker yet, a worker started by the printed command, the approve hint, a run without the
project's dependencies, a step that keeps failing, a workflow task that keeps failing, a cancel
while gathering, output piped into `head`, `make worker` asked for other settings, bad input.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from orchestrator.cli.waits import CHECK_SECONDS, WORKER_ANSWER, WORKER_GRACE_SECONDS
from tests.conftest import REPO, target_of
from tests.support import WorkerProcess, run_script, script_env, task_queue, until
from tests.warm_scripts import WARM_SCRIPTS
from utils import FailureInjector, SimulatedFailure, python_command

ALPHA_DEV = "RELEASE-JAN-24-ALPHA-DEV"  # DEV only: nine quick steps
HOLD = "RELEASE-FEB-24-BETA-HOLD"  # waits for an approval of sbstore
# With FAILURE_RATE=sometimes, seed 3945 fails "build frontend-1.2 → DEV" 5 times and no other
# step of ALPHA_DEV; with alot, seed 997 fails its gathering 12 times (checked below).
BUILD_SEED, GATHER_SEED = 3945, 997


class Script:
    """run_workflow.py in a subprocess, its output lines collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args, self.env = args, env
        self.lines: list[tuple[float, str]] = []  # (seconds since start, line)
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> Script:
        self.began = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *WARM_SCRIPTS.command("run_workflow.py"),
            *self.args,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append((time.monotonic() - self.began, raw.decode().rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    async def line(self, pattern: str, limit: float = 60) -> tuple[float, str]:
        """The first line matching a regular expression, and when it came."""
        try:
            await until(lambda: any(re.search(pattern, line) for _, line in self.lines), limit)
        except TimeoutError:
            raise AssertionError(f"no line matching {pattern!r} within {limit} s:\n{self.text}") from None
        return next((at, line) for at, line in self.lines if re.search(pattern, line))

    async def result(self, limit: float = 120) -> tuple[int, str]:
        assert self.proc is not None and self.reader is not None
        code = await asyncio.wait_for(self.proc.wait(), limit)
        await self.reader
        return code, self.text

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


async def shell(command: str, env: dict[str, str], limit: float = 60) -> tuple[int, str, str]:
    """A command line run by the shell from the project root, as a person pastes it."""
    proc = await asyncio.create_subprocess_shell(
        command, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    return proc.returncode or 0, out.decode(), err.decode()


def make_env(env: dict[str, str], state: Path) -> dict[str, str]:
    """make, told through MAKEFLAGS to keep its pids and logs in `state`, so the command lines it
    runs stay exactly as printed and the repo's own .temporal (a demo's worker) is left alone.
    The install stamp counts as fresh: `make test` has just installed."""
    # Under `make test` the outer make's level would make this one print "Entering directory" lines.
    outer = {k: v for k, v in env.items() if k not in ("MAKELEVEL", "MFLAGS")}
    return {**outer, "MAKEFLAGS": f"--no-print-directory --old-file=.venv/.installed STATE={state}"}


def stop_make_worker(env: dict[str, str], state: Path) -> None:
    subprocess.run(["make", "stop-worker"], cwd=REPO, env=make_env(env, state), capture_output=True, timeout=60)


def failures(rate: str, seed: int, what: str, key: str = "") -> int:
    """How many attempts of a step in a row FailureInjector fails, as the worker would."""
    injector = FailureInjector(rate, seed)
    for attempt in range(1, 30):
        try:
            injector.maybe_fail(what, attempt, key=key)
        except SimulatedFailure:
            continue
        return attempt - 1
    return 29


def into_closed_pipe(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """run_workflow.py writing into a pipe whose reader has already gone; exit code and stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "run_workflow.py"), *args],
            cwd=REPO,
            env=env,
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write)
    return proc.returncode, proc.stderr.decode()


async def terminate(client: Client, workflow_id: str) -> None:
    try:
        await client.get_workflow_handle(workflow_id).terminate("test over")
    except Exception:
        pass  # already closed


@pytest.fixture
def server(dev_server: WorkflowEnvironment) -> str:
    return target_of(dev_server)


async def test_without_a_worker_the_starter_says_so_and_the_printed_command_starts_one(
    server: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    tq = task_queue()
    env = script_env(server, tmp_path, tq)
    state = tmp_path / "state"
    starter = await Script(["--release-key", ALPHA_DEV], env).start()
    try:
        at, warning = await starter.line(r"no worker polls task queue", limit=30)
        # From the first check after the grace, 3 s in, not after a timeout; measured from when the
        # release started, so a slow interpreter start does not count, and generous for a busy machine.
        began, _ = await starter.line(rf"^Release {ALPHA_DEV} started ")
        assert at - began < CHECK_SECONDS + WORKER_GRACE_SECONDS + 7, starter.text
        command = warning.split("start one with: ", 1)[1]
        assert command.endswith(" make worker") and f"RELEASE_TASK_QUEUE={tq}" in command, warning
        code, out, err = await shell(command, make_env(env, state))
        assert code == 0 and "Worker started (pid " in out and f"RELEASE_TASK_QUEUE={tq}" in out, out + err
        await starter.line(rf"a worker polls task queue {tq} now")
        code, text = await starter.result()
    finally:
        starter.kill()
        stop_make_worker(env, state)
    assert code == 0 and f"Result: Release {ALPHA_DEV}: SUCCESS" in text, text
    assert text.count("no worker polls task queue") == 1, text
    assert "Traceback" not in text
    # The Web UI's Input: only what a person decides (which release, now or not, who), nothing the catalog says.
    history = await dev_server.client.get_workflow_handle(f"release-{ALPHA_DEV}").fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [request] = [json.loads(p.data) for p in started.input.payloads]
    assert request.pop("identity").endswith(f"@{socket.gethostname()}"), request
    assert request == {"release_key": ALPHA_DEV, "now": False, "by": getpass.getuser(), "rollback": None}


async def test_the_approve_hint_works_as_printed(server: str, tmp_path: Path) -> None:
    env = script_env(server, tmp_path, task_queue())
    worker = await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)
    starter = await Script(["--release-key", HOLD], env).start()
    try:
        _, hint = await starter.line(r"approve with: ")
        command = hint.split("approve with: ", 1)[1]
        if Path(sys.executable).parent.resolve() == REPO / ".venv" / "bin":
            assert command.startswith(".venv/bin/python run_workflow.py approve "), hint
        assert command.startswith(f"{python_command()} run_workflow.py approve {HOLD} --by NAME"), hint
        _, one = await starter.line(r"or approve one deploy: ")
        assert one.endswith(f"approve {HOLD} --by NAME --deploy sbstore"), one
        code, out, err = await shell(command.replace("NAME", "alice"), env)
        assert (code, out.strip(), err) == (0, "Approved by alice: sbstore-1.9; still waiting: nothing", ""), out + err
        code, text = await starter.result()
    finally:
        starter.kill()
        worker.stop_quietly()
    assert code == 0 and f"Result: Release {HOLD}: SUCCESS" in text, text


@pytest.mark.parametrize("script", ["run_workflow.py", "run_worker.py"])
def test_without_the_dependencies_a_script_says_how_to_run_it(script: str) -> None:
    args = ["status", ALPHA_DEV] if script == "run_workflow.py" else []
    # -S: no site-packages, so an interpreter without temporalio, pydantic and dotenv.
    interpreters = [[sys.executable, "-S"]]
    system = subprocess.run(["python3", "-c", "import temporalio"], capture_output=True, cwd="/")
    if system.returncode != 0 and b"No module named" in system.stderr:
        interpreters.append(["python3"])  # the system python3, as a new user would type it
    for interpreter in interpreters:
        proc = subprocess.run([*interpreter, script, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "run `make install`, then " in lines[0], lines[0]
        assert f"`.venv/bin/python {shlex.join([script, *args])}`" in lines[0], lines[0]


async def test_output_piped_into_head_ends_quietly(
    server: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    tq = task_queue()
    env = script_env(server, tmp_path, tq)
    key = f"FIRST-MINUTES-{uuid.uuid4().hex[:8]}"
    # A release nobody works on: status answers at once that no worker polls, without a query.
    await dev_server.client.start_workflow("ReleaseWorkflow", {"release_key": key}, id=f"release-{key}", task_queue=tq)
    try:
        # As fast as a command that asks no worker anything, not after the query's timeout.
        began = time.monotonic()
        await run_script(["list"], env)
        baseline = time.monotonic() - began
        began = time.monotonic()
        code, out = await run_script(["status", key], env)
        assert time.monotonic() - began < baseline + WORKER_ANSWER.total_seconds() / 2, out
        assert code == 0 and out.startswith(f"Release {key}: RUNNING; no worker polls task queue {tq}"), out
        command = out.split("start one with `", 1)[1].split("`", 1)[0]
        assert command.endswith(" make worker") and f"RELEASE_TASK_QUEUE={tq}" in command, out
        py = python_command()
        for command in (f"{py} run_workflow.py status {key} | head -1", f"{py} run_workflow.py list | head -1"):
            code, out, err = await shell(command, env)
            assert code == 0 and len(out.splitlines()) == 1 and err == "", (command, out, err)
        # A reader that has gone before anything is written: certain to break the pipe.
        for args in (["status", key], ["list"]):
            code, err = await asyncio.to_thread(into_closed_pipe, args, env)
            assert (code, err) == (141, ""), err
    finally:
        await terminate(dev_server.client, f"release-{key}")


async def test_a_failing_workflow_task_is_reported_as_that(
    server: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    tq = task_queue()
    env = script_env(server, tmp_path, tq)
    key = f"FIRST-MINUTES-{uuid.uuid4().hex[:8]}"
    worker = await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)
    # A workflow type no worker knows fails every workflow task: a stand-in for a bug.
    await dev_server.client.start_workflow("NoSuchWorkflow", id=f"release-{key}", task_queue=tq)
    outputs: list[str] = []

    async def reported() -> bool:
        code, out = await run_script(["status", key], env)
        outputs.append(out)
        return code == 0 and "workflow task keeps failing" in out

    try:
        async with asyncio.timeout(60):
            while not await reported():  # noqa: ASYNC110 - the condition is another process's output
                await asyncio.sleep(0.5)
    finally:
        worker.stop_quietly()
        await terminate(dev_server.client, f"release-{key}")
    out = outputs[-1]
    assert out.startswith(f"Release {key}: RUNNING, but the release's workflow task keeps failing (attempt "), out
    assert "Workflow class NoSuchWorkflow is not registered on this worker" in out, out
    assert "no worker" not in out, out


@pytest.mark.slow(20)
async def test_a_step_failing_again_and_again_is_shown_once_per_attempt(server: str, tmp_path: Path) -> None:
    build = "build frontend-1.2 → DEV"
    assert failures("sometimes", BUILD_SEED, build, ALPHA_DEV) == 5
    env = script_env(server, tmp_path, task_queue(), FAILURE_RATE="sometimes", FAILURE_SEED=str(BUILD_SEED))
    worker = await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)
    starter = await Script(["--release-key", ALPHA_DEV], env).start()
    try:
        code, text = await starter.result()
    finally:
        starter.kill()
        worker.stop_quietly()
    assert code == 0 and f"Result: Release {ALPHA_DEV}: SUCCESS" in text, text
    shown = re.findall(rf"^  {build}: attempt (\d+), last error: (.*)$", text, re.MULTILINE)
    # Attempts 4, 5 and 6 are each in flight for seconds; the follower looks every few.
    assert shown and [int(a) for a, _ in shown] == sorted({int(a) for a, _ in shown}), text
    for attempt, error in shown:
        assert int(attempt) >= 4 and error == f"simulated failure (sometimes): {build}, attempt {int(attempt) - 1}"


async def test_a_cancel_while_gathering_retries_ends_cancelled_and_the_retries_are_visible(
    server: str, tmp_path: Path
) -> None:
    gather = f"gather deployments of {ALPHA_DEV}"
    assert failures("alot", GATHER_SEED, gather) >= 12
    env = script_env(server, tmp_path, task_queue(), FAILURE_RATE="alot", FAILURE_SEED=str(GATHER_SEED))
    worker = await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)
    starter = await Script(["--release-key", ALPHA_DEV], env).start()
    try:
        # From the 4th attempt on; the follower looks every few seconds, so maybe at a later one.
        error = re.escape(f"simulated failure (alot): {gather}, attempt ")
        _, shown = await starter.line(rf"^  gather deploys of {ALPHA_DEV}: attempt \d+, last error: {error}\d+$")
        attempt, failed = map(int, re.findall(r"attempt (\d+)", shown))
        assert attempt >= 4 and failed == attempt - 1, shown
        code, out = await run_script(["status", ALPHA_DEV], env)
        assert code == 0 and re.search(rf"^  gather deploys of {ALPHA_DEV}: attempt \d+, last error: ", out, re.M), out
        began = time.monotonic()
        code, out = await run_script(["cancel", ALPHA_DEV], env)
        assert code == 0 and f"Release {ALPHA_DEV}: CANCELLED (deployed before the cancel: nothing)" in out, out
        assert time.monotonic() - began < 15, out
        code, text = await starter.result()
        assert code == 1 and f"Result: Release {ALPHA_DEV}: CANCELLED" in text, text
        code, out = await run_script(["list"], env)
        assert any(line.split() == [ALPHA_DEV, "CANCELLED"] for line in out.splitlines()), out
    finally:
        starter.kill()
        worker.stop_quietly()


@pytest.mark.slow(25)
async def test_make_worker_says_when_the_running_worker_has_other_settings(server: str, tmp_path: Path) -> None:
    env = script_env(server, tmp_path, task_queue())
    state = tmp_path / "state"
    try:
        code, out, err = await shell("make worker", make_env(env, state))
        assert code == 0, out + err
        first = re.search(r"Worker started \(pid (\d+), ", out)
        assert first and "FAILURE_RATE=never" in out, out
        code, out, err = await shell("make worker", make_env(env, state))
        assert (code, out.splitlines()[-1]) == (0, f"Worker already running (pid {first[1]}, log: {state}/worker.log)")

        code, out, err = await shell("FAILURE_RATE=alot make worker", make_env(env, state))
        restart = f"make STATE={state} stop-worker && FAILURE_RATE=alot make STATE={state} worker"
        assert code != 0 and out.splitlines()[-1] == (
            f"Worker already running (pid {first[1]}) with FAILURE_RATE=never, not FAILURE_RATE=alot as asked: "
            f"restart it with `{restart}`"
        ), out + err
        code, out, err = await shell(restart, make_env(env, state))
        second = re.search(r"Worker started \(pid (\d+), .* FAILURE_RATE=alot ", out)
        assert code == 0 and second and second[1] != first[1], out + err
        # The log is the new worker's alone: readiness cannot be read from the old one's.
        log = (state / "worker.log").read_text()
        assert f"Worker ready (pid {second[1]})" in log and f"pid {first[1]}" not in log, log
    finally:
        stop_make_worker(env, state)


async def test_bad_input_is_refused_in_one_line(server: str, tmp_path: Path) -> None:
    env = script_env(server, tmp_path, task_queue())
    long_key = "K" * 5000
    cases = [
        (["status", long_key], "release key 'KKKK"),
        (["cancel", long_key], "release key 'KKKK"),
        (["approve", long_key, "--by", "alice"], "release key 'KKKK"),
        (["--release-key", long_key], "release key 'KKKK"),
        (["approve", HOLD, "--by", "a" * 5000], "the approver's name is 5000 characters long; the limit is 100"),
        (["approve", HOLD, "--by", "alice\n\x1b[32mapproved by the CTO"], "the approver's name holds control"),
    ]
    results = await asyncio.gather(*(run_script(args, env) for args, _ in cases))
    for (_, message), (code, out) in zip(cases, results, strict=True):
        assert code == 2 and len(out.splitlines()) == 1 and out.startswith(f"error: {message}"), out[:300]
        assert len(out) < 200, out[:300]
        if "KKKK" in message:
            assert "5000 characters long; the limit is 100" in out, out


@pytest.mark.parametrize("script", ["run_workflow.py", "run_worker.py"])
async def test_ctrl_c_while_a_script_imports_ends_it_quietly(script: str, tmp_path: Path) -> None:
    """Ctrl+C during the script's imports (a plain start: about 0.7 s of them) ends it at once, with no traceback.

    Raised as a KeyboardInterrupt there, Python could swallow it in a callback, and the script went on: a starter
    then waited for a worker, unstoppable but by a second Ctrl+C (seen once in about 60 tries under load).
    """
    env = script_env("127.0.0.1:9", tmp_path, task_queue())  # nothing listens: the script would end with 3
    for _ in range(3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / script),
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        # The script's own imports have begun once pydantic's compiled core is loaded (the interpreter's start,
        # before the script runs, is not the script's to handle).
        maps = Path(f"/proc/{proc.pid}/maps")
        await until(lambda: proc.returncode is not None or "pydantic_core" in maps.read_text(), 30)  # noqa: B023
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode != 3:  # 3: it had reached the server already, too late for this test; again
            break
    assert proc.returncode == 130, out.decode()
    assert "Traceback" not in out.decode() and "KeyboardInterrupt" not in out.decode(), out.decode()


async def test_ctrl_c_while_a_starter_follows_stops_following_and_the_release_goes_on(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    """A plain starter waiting for a worker: Ctrl+C ends it with 130 and the line that says the release goes on."""
    env = script_env(target_of(dev_server), tmp_path, task_queue())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "run_workflow.py"),
        "--release-key",
        "RELEASE-JAN-24-ALPHA-DEV",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while b"no worker polls task queue" not in await proc.stdout.readline():
            pass
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, out.decode()
    assert (out.decode().rstrip().splitlines() or [""])[-1] == (
        "Stopped waiting. The release goes on in Temporal; "
        f"`{python_command()} run_workflow.py status RELEASE-JAN-24-ALPHA-DEV` shows it."
    ), out.decode()
    handle = dev_server.client.get_workflow_handle("release-RELEASE-JAN-24-ALPHA-DEV")
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
