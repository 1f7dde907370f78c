"""Step commands (orchestrator/step_commands.py, command_runner.py, process_group.py): steps run as real
subprocesses, killed whole on timeout and cancel, kept inside the workspace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from orchestrator import command_runner, process_group, step_commands
from orchestrator.command_runner import (
    CommandCancelled,
    CommandError,
    CommandFailed,
    CommandRefused,
    CommandRetry,
    CommandTimeout,
    run_command,
)
from orchestrator.errors import root_cause
from orchestrator.step_commands import StepCommand, StepCommands, placeholders_for
from release_management import ReleaseManagement, build_content
from shared import ReleaseRequest
from tests.support import in_process_worker
from workflows import ReleaseWorkflow

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXAMPLE_CATALOG = EXAMPLES / "commands.json"


def sh(script: str, timeout: float = 30, retry: list[int] | None = None) -> StepCommand:
    """A command running script with sh -c: $0 is "sh", its arguments follow the script."""
    return StepCommand(
        argv=["sh", "-c", script], timeout_seconds=timeout, **({"retry_exit_codes": retry} if retry else {})
    )


def run(
    command: StepCommand,
    ws: Path,
    placeholders: dict[str, str] | None = None,
    heartbeat: Callable[[], None] = lambda: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> str:
    return run_command(command, placeholders or {}, ws, ws / "out.log", heartbeat, cancelled)


def live_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run, from /proc; zombies are dead (pid 1 here may never reap them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# The command notes its process group (its own pid: it leads the group) and its background child's pid,
# says "started", then hangs; the child hangs too.
HANGS = 'echo $$ > pgid; sleep 300 & echo $! > child; echo started; sleep 300; echo "not reached"'


def assert_nothing_left(ws: Path) -> None:
    pgid, child = int((ws / "pgid").read_text()), int((ws / "child").read_text())
    assert live_in_group(pgid) == []
    assert not alive(pgid) and not alive(child)


@pytest.fixture(autouse=True)
def no_stray_release_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in step_commands.PLACEHOLDERS.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("FAILING_CHECKS", raising=False)


# --- outcomes -----------------------------------------------------------------------------------------------


def test_a_command_that_passes_returns_its_output_and_logs_it(tmp_path: Path) -> None:
    out = run(sh('echo "out in $(pwd)"; echo "err for $RELEASE_CONTAINER" >&2'), tmp_path, {"container": "frontend"})
    assert out == f"out in {tmp_path.resolve()}\nerr for frontend\n"
    assert (tmp_path / "out.log").read_text() == out


def test_a_command_that_fails_for_good_carries_its_last_lines(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as caught:
        run(sh("for i in 1 2 3 4 5 6 7; do echo line $i; done; echo; echo 'why: broken' >&2; exit 3"), tmp_path)
    e = caught.value
    assert str(e) == "command sh exited 3: line 4 | line 5 | line 6 | line 7 | why: broken"
    assert (e.exit_code, e.retryable, e.last_lines[-1]) == (3, False, "why: broken")
    assert not isinstance(e, CommandRetry)
    assert "line 1\n" in (tmp_path / "out.log").read_text()


def test_a_command_exiting_75_twice_then_passing_is_retried_by_its_caller(tmp_path: Path) -> None:
    # A counter in the workspace, the command's cwd: attempts 1 and 2 say "try again", the third passes.
    command = sh(
        'n=$(($(cat count 2>/dev/null || echo 0) + 1)); echo $n > count; echo "attempt $n"; [ $n -ge 3 ] || exit 75'
    )
    outcomes: list[str] = []
    for _ in range(3):  # the caller's retry loop (Temporal's, in the worker)
        try:
            outcomes.append(run(command, tmp_path))
        except CommandRetry as e:
            assert e.retryable and not isinstance(e, CommandTimeout)
            outcomes.append(str(e))
    assert outcomes == ["command sh exited 75: attempt 1", "command sh exited 75: attempt 2", "attempt 3\n"]


def test_retry_exit_codes_replace_the_default(tmp_path: Path) -> None:
    with pytest.raises(CommandRetry, match="exited 42"):
        run(sh("exit 42", retry=[42]), tmp_path)
    with pytest.raises(CommandFailed, match="exited 75"):
        run(sh("exit 75", retry=[42]), tmp_path)


def test_a_command_killed_by_a_signal_exits_128_plus_it(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as caught:
        run(sh("echo dying; kill -9 $$"), tmp_path)
    assert str(caught.value) == "command sh exited 137 (SIGKILL): dying"
    with pytest.raises(CommandRetry):
        run(sh("kill -9 $$", retry=[137]), tmp_path)


def test_a_program_that_cannot_start_is_final(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match="command no-such-program-here cannot start"):
        run(StepCommand(argv=["no-such-program-here"]), tmp_path)
    script = tmp_path / "noexec.sh"
    script.write_text("echo hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandFailed, match="^command noexec.sh cannot start: Permission denied$"):
        run(StepCommand(argv=[str(script)]), tmp_path)
    assert (tmp_path / "out.log").read_text() == "command noexec.sh cannot start: Permission denied\n"
    script.chmod(0o755)  # executable, but without a #! line the kernel cannot run it, and no shell steps in
    with pytest.raises(CommandFailed, match=r"^command noexec.sh cannot start: Exec format error \(a script needs"):
        run(StepCommand(argv=[str(script)]), tmp_path)


# --- killed whole -------------------------------------------------------------------------------------------


def test_a_command_hanging_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        run(sh(HANGS, timeout=1), tmp_path)
    assert time.monotonic() - began < 1 + process_group.KILL_GRACE_SECONDS + 5
    assert str(caught.value) == "command sh timed out after 1 s: started"
    assert caught.value.retryable and isinstance(caught.value, CommandRetry)
    assert_nothing_left(tmp_path)


def test_a_group_that_ignores_sigterm_gets_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_group, "KILL_GRACE_SECONDS", 0.5)
    # SIGTERM ignored by the shell and (inherited) by its child: only SIGKILL, after the grace, ends them.
    began = time.monotonic()
    with pytest.raises(CommandTimeout):
        run(sh(f"trap '' TERM; {HANGS}", timeout=1), tmp_path)
    assert time.monotonic() - began >= 1 + 0.5
    assert_nothing_left(tmp_path)


def test_a_command_cancelled_mid_run_is_killed_promptly_with_its_children(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    flipped: list[float] = []

    def cancelled() -> bool:
        # True once the command is under way: its first line is in the log.
        if not flipped and log.exists() and b"started" in log.read_bytes():
            flipped.append(time.monotonic())
        return bool(flipped)

    with pytest.raises(CommandCancelled) as caught:
        run(sh(HANGS, timeout=600), tmp_path, cancelled=cancelled)
    assert time.monotonic() - flipped[0] < process_group.KILL_GRACE_SECONDS
    assert str(caught.value) == "command sh was cancelled: started"
    assert_nothing_left(tmp_path)


def test_children_left_behind_by_a_command_that_ended_are_killed(tmp_path: Path) -> None:
    assert run(sh("echo $$ > pgid; sleep 300 & echo $! > child; echo done"), tmp_path) == "done\n"
    assert_nothing_left(tmp_path)


def test_a_heartbeat_that_raises_still_kills_the_command(tmp_path: Path) -> None:
    beats: list[float] = []

    def heartbeat() -> None:
        beats.append(time.monotonic())
        if (tmp_path / "child").exists():
            raise RuntimeError("the worker is going away")

    with pytest.raises(RuntimeError, match="going away"):
        run(sh(HANGS), tmp_path, heartbeat=heartbeat)
    assert_nothing_left(tmp_path)


def test_heartbeat_is_called_about_every_second_while_the_command_runs(tmp_path: Path) -> None:
    beats: list[float] = []

    def heartbeat() -> None:
        beats.append(time.monotonic())
        if len(beats) == 3:
            (tmp_path / "go").touch()  # the command waits for this

    out = run(sh("while [ ! -f go ]; do sleep 0.05; done; echo went"), tmp_path, heartbeat=heartbeat)
    assert out == "went\n" and len(beats) >= 3
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    assert all(0.9 <= gap < 2.5 for gap in gaps), gaps


# --- output -------------------------------------------------------------------------------------------------


def test_the_output_file_is_capped_and_ends_with_the_outputs_last_bytes(tmp_path: Path) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo 'the end'; exit 4"
    with pytest.raises(CommandFailed) as caught:
        run(sh(script), tmp_path)
    # One line of 300 characters that keeps the output's end; the long line itself is clipped (…).
    message = str(caught.value)
    assert message.startswith("command sh exited 4: …aaa") and message.endswith("aaa… | the end")
    assert len(str(caught.value)) == 300
    log = (tmp_path / "out.log").read_bytes()
    assert len(log) < command_runner.OUTPUT_MAX + command_runner.TAIL_MAX + 200
    assert log.startswith(b"a" * command_runner.OUTPUT_MAX + b"\n[output capped at 1048576 bytes: ")
    assert log.endswith(b"a\nthe end\n")


def test_the_output_is_written_as_it_comes(tmp_path: Path) -> None:
    # The command goes on only once its first line is in the log file.
    out = run(sh("echo first; while ! grep -q first out.log; do sleep 0.05; done; echo second"), tmp_path)
    assert out == "first\nsecond\n"


def test_no_output_says_so(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"^command sh exited 1 \(no output\)$"):
        run(sh("exit 1"), tmp_path)


# --- placeholders and the workspace -------------------------------------------------------------------------


def test_placeholders_are_replaced_in_every_argument_and_set_in_the_environment(tmp_path: Path) -> None:
    ws = tmp_path.resolve()
    values = {
        "container": "frontend",
        "version": "3.0",
        "env": "QC",
        "release": "RELEASE-X",
        "check": "security",
        "artifact": str(ws / "environments" / "QC" / "frontend-3.0"),
        "git_url": "https://example.com/{version}.git",
    }
    argv = [
        "printf",
        "%s\\n",
        "{container}-{version}",
        "{env}/{check}",
        "{release}",
        "{workspace}",
        "{artifact}",
        "{git_url}",
        "{unknown} ${HOME} {print $1}",
    ]
    out = run(StepCommand(argv=argv), tmp_path, values)
    assert out.splitlines() == [
        "frontend-3.0",
        "QC/security",
        "RELEASE-X",
        str(ws),
        str(ws / "environments" / "QC" / "frontend-3.0"),
        # One pass: a value is not searched for placeholders again.
        "https://example.com/{version}.git",
        "{unknown} ${HOME} {print $1}",
    ]
    env = run(sh("env | grep ^RELEASE_ | sort"), tmp_path, values).splitlines()
    assert env == sorted(
        [
            "RELEASE_ARTIFACT=" + values["artifact"],
            "RELEASE_CHECK=security",
            "RELEASE_CONTAINER=frontend",
            "RELEASE_ENV=QC",
            "RELEASE_GIT_URL=" + values["git_url"],
            "RELEASE_KEY=RELEASE-X",
            "RELEASE_VERSION=3.0",
            "RELEASE_WORKSPACE=" + str(ws),
        ]
    )


def test_the_workers_own_release_variables_do_not_leak_into_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELEASE_ENV", "PROD")
    monkeypatch.setenv("RELEASE_WORKSPACE", "/somewhere/else")
    assert run(sh('echo "${RELEASE_ENV:-none} $RELEASE_WORKSPACE"'), tmp_path) == f"none {tmp_path.resolve()}\n"


def test_a_placeholder_without_a_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandRefused, match=r"^command touch: placeholder \{env\} has no value in this step$"):
        run(StepCommand(argv=["touch", "ran-{env}"]), tmp_path, {"container": "frontend"})
    assert list(tmp_path.iterdir()) == []  # nothing ran, not even the log


@pytest.mark.parametrize(
    "arg",
    [
        "../x",
        "/etc/passwd",
        "{workspace}/../x",
        "a/../../x",
        "--out=../x",
        "--out={workspace}/../x",
        "{artifact}/../../../..",
        "link/x",  # a symbolic link in the workspace to a folder outside it
    ],
)
def test_a_path_escaping_the_workspace_is_refused_and_nothing_runs(tmp_path: Path, arg: str) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "link").symlink_to(tmp_path)
    artifact = str(ws.resolve() / "artifactory" / "frontend-3.0")
    with pytest.raises(CommandRefused, match="reaches outside the workspace") as caught:
        run_command(StepCommand(argv=["touch", "ran", arg]), {"artifact": artifact}, ws, ws / "out.log")
    assert not caught.value.retryable and isinstance(caught.value, CommandFailed)
    assert not (ws / "ran").exists() and not (ws / "out.log").exists()


def test_paths_inside_the_workspace_and_the_program_anywhere_are_accepted(tmp_path: Path) -> None:
    ws = tmp_path.resolve()
    artifact = str(ws / "artifactory" / "frontend-3.0")
    args = ["{workspace}/a", "sub/../b", "--out={artifact}", "./c", "https://example.com/x.git", "-n"]
    argv = ["/bin/sh", "-c", 'printf "%s\\n" "$@"', "sh", *args]
    out = run_command(StepCommand(argv=argv), {"artifact": artifact}, tmp_path, tmp_path / "logs" / "out.log")
    assert out.splitlines() == [f"{ws}/a", "sub/../b", f"--out={artifact}", "./c", "https://example.com/x.git", "-n"]
    assert (ws / "logs" / "out.log").read_text() == out


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("container", "../etc", "is not a plain name"),
        ("version", "1/2", "is not a plain name"),
        ("env", "..", "is not a plain name"),
        ("check", "", "is not a plain name"),
        ("artifact", "/etc/passwd", "is not a path inside the workspace"),
        ("artifact", "artifactory/frontend-3.0", "is not a path inside the workspace"),  # relative
        ("git_url", "https://x\0", "holds a NUL character"),
    ],
)
def test_a_placeholder_value_that_could_leave_the_workspace_is_refused(
    tmp_path: Path, name: str, value: str, error: str
) -> None:
    with pytest.raises(CommandRefused, match=error):
        run(StepCommand(argv=["touch", "ran"]), tmp_path, {name: value})
    assert not (tmp_path / "ran").exists()


def test_the_callers_mistakes_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown placeholder 'colour'"):
        run(StepCommand(argv=["true"]), tmp_path, {"colour": "red"})
    with pytest.raises(ValueError, match="is not the workspace"):
        run(StepCommand(argv=["true"]), tmp_path, {"workspace": "/tmp/elsewhere"})
    (tmp_path / "ws").mkdir()
    with pytest.raises(ValueError, match="is not inside the workspace"):
        run_command(StepCommand(argv=["true"]), {}, tmp_path / "ws", tmp_path / "out.log")
    with pytest.raises(FileNotFoundError):
        run_command(StepCommand(argv=["true"]), {}, tmp_path / "missing", tmp_path / "missing" / "out.log")


# --- the catalog's side -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"argv": []}, "at least 1 item"),
        ({"argv": ["  "]}, "the program, is empty"),
        ({"argv": ["sh", "a\0b"]}, "NUL character"),
        ({"argv": ["sh"] + ["x"] * 50}, "at most 50 items"),
        ({"argv": ["sh", "x" * 1001]}, "the limit is 1000"),
        ({"argv": ["sh"], "timeout_seconds": 0}, "greater than 0"),
        ({"argv": ["sh"], "timeout_seconds": 86401}, "less than or equal to 86400"),
        ({"argv": ["sh"], "retry_exit_codes": [0]}, "exit code 0 cannot mean 'try again'"),
        ({"argv": ["sh"], "retry_exit_codes": [256]}, "use 1 to 255"),
        ({"argv": ["sh"], "retry_exit_codes": [True]}, "valid integer"),
        ({"argv": ["sh"], "timeout": 5}, "Extra inputs are not permitted"),
        ({"argv": "sh -c true"}, "valid list"),
    ],
)
def test_a_step_command_is_checked_as_the_catalog_gives_it(fields: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        StepCommand.model_validate(fields)


def test_a_step_commands_defaults() -> None:
    command = StepCommand(argv=["true"])
    assert (command.timeout_seconds, command.retry_exit_codes) == (600, [75])


def test_each_check_runs_its_own_command_or_the_test_command() -> None:
    test, security, health = (StepCommand(argv=[name]) for name in ("test", "security", "health"))
    section = StepCommands(test=test, health=health, checks={"security": security})
    assert section.for_check("unit") is test and section.for_check("security") is security
    assert section.for_check("health") is health
    assert StepCommands(test=test).for_check("health") is None  # health never falls back to test
    assert StepCommands().for_check("unit") is None and StepCommands().build is None
    with pytest.raises(ValidationError, match="'health' has its own entry"):
        StepCommands.model_validate({"checks": {"health": {"argv": ["x"]}}})
    with pytest.raises(ValidationError, match="check 'Bad Name' is invalid"):
        StepCommands.model_validate({"checks": {"Bad Name": {"argv": ["x"]}}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        StepCommands.model_validate({"rollback": {"argv": ["x"]}})


# --- the example catalog ------------------------------------------------------------------------------------


def test_the_example_scripts_are_executable_and_parse() -> None:
    for script in ("build.sh", "deploy.sh", "check.sh", "health.sh"):
        path = EXAMPLES / script
        assert os.access(path, os.X_OK), path
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_the_example_catalog_does_what_the_simulation_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rm = ReleaseManagement(tmp_path, EXAMPLE_CATALOG)
    release = rm.gather_deployments("RELEASE-COMMANDS-DEMO")
    (d,) = release.deploys
    assert (d.container_id, d.version, d.environments) == ("frontend", "3.0", ["DEV", "TEST", "QC", "PROD"])
    section = StepCommands.model_validate(json.loads(EXAMPLE_CATALOG.read_text())["commands"])
    assert section.build and section.deploy and section.test and section.health
    ws = tmp_path.resolve()
    logs = ws / "logs"
    name = f"{d.container_id}-{d.version}"

    built = ws / "artifactory" / name
    placeholders = placeholders_for(d, release.release_key, None, built)
    out = run_command(section.build, placeholders, ws, logs / "build.log")
    assert built.read_bytes() == build_content(d, release.release_key)
    assert out == f"built {name} for RELEASE-COMMANDS-DEMO from {d.git_url}\n"

    before = built
    for env in d.environments:
        deployed = ws / "environments" / env / name
        run_command(section.deploy, placeholders_for(d, release.release_key, env, deployed), ws, logs / f"{env}.log")
        assert deployed.read_bytes() == before.read_bytes() == build_content(d, release.release_key)
        assert [p.name for p in deployed.parent.iterdir()] == [name]  # no temporary file left beside it
        for check in [*d.checks_in(env), "health"]:
            command = section.for_check(check)
            assert command is not None
            values = placeholders_for(d, release.release_key, env, deployed, check)
            assert run_command(command, values, ws, logs / f"{env}-{check}.log").endswith(f"{check} passed\n")
        before = deployed

    # FAILING_CHECKS, in the simulation's format, fails the example checks too: final, with the reason.
    monkeypatch.setenv("FAILING_CHECKS", "frontend-3.0:qc:security, frontend-3.0:PROD:health")
    qc, prod = ws / "environments" / "QC" / name, ws / "environments" / "PROD" / name
    with pytest.raises(
        CommandFailed, match=r"^command check.sh exited 1: .* \| FAILING_CHECKS names frontend-3.0:QC:security$"
    ):
        command = section.for_check("security")
        assert command is not None
        run_command(command, placeholders_for(d, release.release_key, "QC", qc, "security"), ws, logs / "s.log")
    assert section.for_check("performance") is section.test
    run_command(section.test, placeholders_for(d, release.release_key, "QC", qc, "performance"), ws, logs / "p.log")
    with pytest.raises(CommandFailed, match="FAILING_CHECKS names frontend-3.0:PROD:health"):
        run_command(
            section.health, placeholders_for(d, release.release_key, "PROD", prod, "health"), ws, logs / "h.log"
        )

    # A deploy whose source is missing fails for good, naming it.
    shutil.rmtree(ws / "environments" / "QC")
    with pytest.raises(CommandFailed, match=r"^command deploy.sh exited 1: QC does not hold frontend-3.0$"):
        run_command(section.deploy, placeholders_for(d, release.release_key, "PROD", prod), ws, logs / "d.log")


def test_a_relative_program_is_found_from_the_repository_root_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CommandFailed, match=r"^command health.sh exited 1: DEV does not hold frontend-3.0$"):
        run_command(
            StepCommand(argv=["examples/health.sh", "DEV", "{artifact}"]),
            {"artifact": str(tmp_path.resolve() / "environments" / "DEV" / "frontend-3.0")},
            tmp_path,
            tmp_path / "out.log",
        )


def test_every_command_error_says_if_a_retry_may_help() -> None:
    final = (CommandFailed, CommandRefused)
    retryable = (CommandRetry, CommandTimeout, CommandCancelled)
    assert all(issubclass(c, CommandError) and not c.retryable for c in final)
    assert all(issubclass(c, CommandError) and c.retryable for c in retryable)


# --- the example catalog, run by a release through a worker ---------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "commands.json"


async def test_a_release_runs_the_example_commands_through_a_worker(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    rm = ReleaseManagement(tmp_path, EXAMPLE)
    async with in_process_worker(ts_env, rm) as tq:
        handle = await ts_env.client.start_workflow(
            ReleaseWorkflow.run, ReleaseRequest(release_key="RELEASE-COMMANDS-DEMO", now=True), id="cmd", task_queue=tq
        )
        assert (await handle.result()).status == "SUCCESS"
    [d] = rm.gather_deployments("RELEASE-COMMANDS-DEMO").deploys
    built = build_content(d, "RELEASE-COMMANDS-DEMO")
    assert (rm.artifactory / "frontend-3.0").read_bytes() == built
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert (rm.env_dir(env) / "frontend-3.0").read_bytes() == built
        assert json.loads(rm.config_path(env, "frontend").read_text())["artifact"] == "frontend-3.0"
        for check in [*d.checks_in(env), "health"]:
            report = json.loads(rm.report_path(d, env, check).read_text())
            assert report["passed"] is True
            # The command's own words: all of them beside the report, their end in it.
            log = rm.report_path(d, env, check).with_suffix(".log")
            assert report["log"] == log.name and report["output"] == log.read_text() and check in report["output"]


async def test_a_check_command_that_fails_is_a_gate_failure_with_its_last_lines(
    tmp_path: Path, ts_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAILING_CHECKS", "frontend-3.0:QC:security")  # read by examples/check.sh
    rm = ReleaseManagement(tmp_path, EXAMPLE)
    async with in_process_worker(ts_env, rm) as tq:
        handle = await ts_env.client.start_workflow(
            ReleaseWorkflow.run, ReleaseRequest(release_key="RELEASE-COMMANDS-DEMO", now=True), id="cmd", task_queue=tq
        )
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    message = str(getattr(root_cause(err.value), "message", ""))
    assert message.startswith("frontend-3.0 failed security in QC: command check.sh exited 1: "), message
    assert "FAILING_CHECKS names frontend-3.0:QC:security" in message
    [d] = rm.gather_deployments("RELEASE-COMMANDS-DEMO").deploys
    report = json.loads(rm.report_path(d, "QC", "security").read_text())
    assert report["passed"] is False and "exited 1" in report["findings"][0]
    assert rm.contents("PROD") == []
