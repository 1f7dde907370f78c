"""The warm starts of run_workflow.py and run_worker.py (tests/warm_scripts.py) show a test what plain ones show."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.conftest import REPO, target_of
from tests.support import WorkerProcess, script_env, task_queue, until
from tests.warm_scripts import WARM_SCRIPTS

# No server listens there: the commands that need one say so and exit 3.
NOBODY = "127.0.0.1:9"
PLAIN = [sys.executable, str(REPO / "run_workflow.py")]


async def run(command: list[str], args: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize(
    "args",
    [["--help"], ["status", "RELEASE-NOV-23-INITIAL"], ["inventory"], ["approve", "NO SUCH KEY", "--by", "x"]],
    ids=["help", "no-server", "inventory", "bad-key"],
)
async def test_a_warm_command_prints_and_exits_as_a_plain_one(args: list[str], tmp_path: Path) -> None:
    env = script_env(NOBODY, tmp_path, "warm")
    plain = await run(PLAIN, args, env)
    assert plain[1].strip()  # something to compare
    assert await run(WARM_SCRIPTS.command("run_workflow.py"), args, env) == plain


async def test_a_killed_launcher_takes_its_command_along(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    # No worker: a start waits for one until it is stopped.
    env = script_env(target_of(dev_server), tmp_path, task_queue())
    proc = await asyncio.create_subprocess_exec(
        *WARM_SCRIPTS.command("run_workflow.py"),
        "--release-key",
        "RELEASE-JAN-24-ALPHA-DEV",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # The command is a grandchild of the warm process, which records its pid under the launcher's.
    command = await asyncio.to_thread(WARM_SCRIPTS.pid_of, proc.pid)
    assert alive(command)
    proc.kill()
    await proc.wait()
    await until(lambda: not alive(command), 10)


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


async def test_a_warm_worker_killed_is_gone_when_kill_returns(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    worker = WorkerProcess(script_env(target_of(dev_server), tmp_path, task_queue()), tmp_path / "worker.log").start()
    assert worker.warm and worker.proc is not None
    pid = WARM_SCRIPTS.pid_of(worker.proc.pid)
    assert pid != worker.proc.pid and alive(pid)
    worker.kill()
    assert not alive(pid)
    assert worker.proc.returncode == -9  # the launcher ends as its command did
