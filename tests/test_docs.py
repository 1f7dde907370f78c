"""The docs' console blocks, run as printed: every documented line must come out of the real command.

Every ```console block of README.md, setup.md and demos.md is checked. A block holds commands,
lines starting with `$ ` (a trailing backslash continues one), each followed by the output the
docs show for it. Only `run_workflow.py` and `run_worker.py` commands go in console blocks; other
commands (make, ls, temporal) go in sh blocks, which are not run. Each doc runs top to bottom
against a fresh Temporal dev server and workspace of its own, with a worker like `make worker`'s
(FAILURE_RATE=never, DEMO_STEP_SECONDS=0 unless a directive says otherwise). Commands run
through bash from the project root, with the repository's interpreter for `.venv/bin/python`.

Stable lines. Before comparing, the test's own place is mapped back to the docs': its server
address becomes localhost:7233, its Web UI port 8233, its temporary folder /tmp, its
interpreter `.venv/bin/python`, and the settings it puts in the environment (address,
workspace, ...) are dropped from the commands the tools print (`... make worker`). Then in both
the docs and the output these match anything: a time (HH:MM:SS), a date with its time, a run id
(`<run id>` in the docs), a pid; and ` (attempt N)` at the end of a step line is optional (the
docs' worker fails steps at random). `...` within a line matches any text; `...` alone on a line
says lines are left out. Every other documented line must equal an output line (trailing spaces
aside). Documented lines are found in order, except that step lines (starting with a time) that
follow one another in the docs may come in any order among themselves: deploys of different
containers run in parallel. Output lines the docs leave out are allowed.

A command that ends by itself starts `run_workflow.py` warm (tests/warm_scripts.py): the same script, arguments,
environment and streams, without the imports. A command that stays running starts plainly.

Directives, as HTML comments in the doc:
- `<!-- docs-test: new session -->`: what follows needs nothing from what comes before; it runs
  against a server, workspace and worker of its own. Docs and sessions run side by side.
- `<!-- docs-test: worker NAME=VALUE ... -->` (re)starts the test's worker with these settings.
- `<!-- docs-test: stays NAME -->` before a block: its one command keeps running (a worker, a
  release waiting for people). The test waits for the documented lines, goes on, and stops it
  (Ctrl+C) when the session ends.
- `<!-- docs-test: continues NAME -->` before a block without commands: more output of NAME.
Heredocs in sh blocks (`cat > /tmp/FILE <<'EOF'`) are written, in the test's folder, where they stand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
from tests.conftest import REPO, installed_binary, target_of
from tests.support import WorkerProcess, script_env
from tests.warm_scripts import WARM_SCRIPTS
from utils import WORKER_VARIABLES, python_command

DOCS = [name for name in ("README.md", "setup.md", "demos.md") if "```console" in (REPO / name).read_text()]
DEFAULT_TASK_QUEUE = "release-task-queue"
LIMIT = 60  # seconds for one command, or for the lines a running one should print

DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
HEREDOC = re.compile(r"^cat > (/tmp/\S+) <<'EOF'$")
DATETIME = re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:[+-]\d{2}:\d{2}| UTC)?")
TIME = re.compile(r"\b\d{2}:\d{2}:\d{2}\b")
RUN_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
PID = re.compile(r"\bpid \d+")
ATTEMPT = re.compile(r" \(attempt \d+\)$")
STEP_LINE = re.compile(r"^  <time> ")


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Step:
    """One thing to do, in the doc's order: run a block, (re)start the worker, or write a file."""

    where: str  # doc:line, for messages
    commands: list[Command] = field(default_factory=list)
    stays: str | None = None
    continues: str | None = None
    expected: list[str] = field(default_factory=list)  # of a block that continues another
    worker: dict[str, str] | None = None
    file: tuple[str, str] | None = None  # (path as the docs say it, content)


def parse(doc: Path) -> list[list[Step]]:
    """The doc's sessions, each a list of steps."""
    lines = doc.read_text().splitlines()
    sessions: list[list[Step]] = [[]]
    steps = sessions[0]
    pending: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        where = f"{doc.name}:{i + 1}"
        if lines[i].startswith("```"):
            info, end = lines[i][3:].strip(), i + 1
            while not lines[end].startswith("```"):
                end += 1
            body = lines[i + 1 : end]
            if info == "console":
                steps.append(console_block(body, where, pending))
                pending = None
            elif pending:
                raise AssertionError(f"{where}: `{' '.join(pending)}` is not followed by a console block")
            elif info in ("sh", "bash"):
                steps.extend(heredocs(body, where))
            i = end + 1
            continue
        if match := DIRECTIVE.search(lines[i]):
            word, *args = match[1].split()
            if word == "new" and args == ["session"]:
                steps = []
                sessions.append(steps)
            elif word == "worker":
                steps.append(Step(where, worker=dict(arg.split("=", 1) for arg in args)))
            elif word in ("stays", "continues") and len(args) == 1:
                pending = (word, args[0])
            else:
                raise AssertionError(f"{where}: unknown directive {match[0]}")
        i += 1
    return sessions


def console_block(body: list[str], where: str, pending: tuple[str, str] | None) -> Step:
    step, before = Step(where), []
    k = 0
    while k < len(body):
        if body[k].startswith("$ "):
            text = body[k][2:]
            while text.endswith("\\"):
                k += 1
                text += "\n" + body[k]
            assert "run_workflow.py" in text or "run_worker.py" in text, (
                f"{where}: `{text}`: console blocks are for run_workflow.py and run_worker.py; use an sh block"
            )
            step.commands.append(Command(text))
        elif step.commands:
            step.commands[-1].expected.append(body[k])
        else:
            before.append(body[k])
        k += 1
    kind, name = pending or ("", "")
    if kind == "continues":
        assert not step.commands, f"{where}: a block that continues {name} runs no command"
        step.continues, step.expected = name, before
    else:
        assert step.commands and not before, f"{where}: a console block starts with `$ command`"
    if kind == "stays":
        assert len(step.commands) == 1, f"{where}: a block that stays running has one command"
        step.stays = name
    return step


def heredocs(body: list[str], where: str) -> list[Step]:
    found = []
    for k, line in enumerate(body):
        if match := HEREDOC.match(line):
            end = body.index("EOF", k)
            found.append(Step(where, file=(match[1], "\n".join(body[k + 1 : end]) + "\n")))
    return found


def normal(line: str) -> str:
    """A line with its variable parts replaced by placeholders (see the module docstring)."""
    line = DATETIME.sub("<date>", line.rstrip())
    line = TIME.sub("<time>", line)
    line = RUN_ID.sub("<run id>", line)
    line = PID.sub("pid <pid>", line)
    return ATTEMPT.sub("", line)


def fits(documented: str, actual: str) -> bool:
    if "..." not in documented:
        return documented == actual
    return re.fullmatch(".*".join(re.escape(part) for part in documented.split("...")), actual) is not None


def first_missing(expected: list[str], actual: list[str]) -> str | None:
    """The first documented line not found in the output, or None when all are (see the module docstring)."""
    got = [normal(line) for line in actual]
    groups: list[list[str]] = []
    for line in expected:
        if not line.strip():
            continue
        if line.strip() == "...":
            groups.append([])
            continue
        documented = normal(line)
        if STEP_LINE.match(documented) and groups and groups[-1] and STEP_LINE.match(groups[-1][-1]):
            groups[-1].append(documented)
        else:
            groups.append([documented])
    position = -1
    for group in groups:
        used: set[int] = set()
        for documented in group:
            found = next((k for k in range(position + 1, len(got)) if k not in used and fits(documented, got[k])), None)
            if found is None:
                return documented
            used.add(found)
        position = max(used, default=position)
    return None


class Terminal:
    """One command run through bash, as a person pastes it; its output lines as they come."""

    def __init__(self, text: str, run: str, env: dict[str, str], place: Callable[[str], str]) -> None:
        self.text, self.run, self.env, self.place = text, run, env, place  # as the docs say it; as run here
        self.lines: list[str] = []

    async def start(self) -> Terminal:
        self.proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            self.run,
            cwd=REPO,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(self.place(raw.decode().rstrip("\n")))

    async def shows(self, expected: list[str], where: str, to_the_end: bool) -> None:
        """Wait until the documented lines are out (or the command has ended, if to_the_end); check them."""
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline and not self.reader.done():
            if not to_the_end and first_missing(expected, self.lines) is None:
                break
            await asyncio.sleep(0.1)
        missing = first_missing(expected, self.lines)
        output = "\n".join(self.lines)
        if missing is not None:
            raise AssertionError(f"{where}: `{self.text}` did not print\n  {missing}\nIt printed:\n{output}")
        if "Traceback" in output:
            raise AssertionError(f"{where}: `{self.text}` printed a traceback:\n{output}")

    async def stop(self) -> None:
        if self.reader.done():  # it has closed its output: about to end, if not ended
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl+C
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        await self.reader


class Session:
    """A doc, or a session of it, run top to bottom against its own server, workspace and worker."""

    def __init__(self, env: WorkflowEnvironment, tmp: Path) -> None:
        self.tmp = tmp
        target = target_of(env)
        self.env = script_env(target, tmp / "workspace", DEFAULT_TASK_QUEUE)
        (tmp / "workspace").mkdir()
        port = int(target.rpartition(":")[2])
        # What the tools print about the test's own place, mapped back to what the docs show.
        self.mapping = [
            (f"{name}={shlex.quote(self.env[name])} ", "") for name in WORKER_VARIABLES if name in self.env
        ] + [(f"http://localhost:{port + 1000}", "http://localhost:8233"), (target, "localhost:7233")]
        self.mapping.append((f"{tmp}/", "/tmp/"))
        if python_command() != ".venv/bin/python":
            self.mapping += [(f"{python_command()} run_", ".venv/bin/python run_")]
        self.worker: WorkerProcess | None = None
        self.running: dict[str, Terminal] = {}

    def place(self, line: str) -> str:
        for theirs, ours in self.mapping:
            line = line.replace(theirs, ours)
        return line

    def command(self, text: str, warm: bool) -> str:
        """The command as run here: in the test's folder, with this interpreter; `run_workflow.py` warm if asked."""
        python = shlex.quote(sys.executable)
        text = text.replace("/tmp/", f"{self.tmp}/").replace(".venv/bin/python", python)
        if warm:
            text = text.replace(f"{python} run_workflow.py", shlex.join(WARM_SCRIPTS.command("run_workflow.py")))
        return text

    async def restart_worker(self, settings: dict[str, str]) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        env = {**self.env, **settings}
        self.worker = await asyncio.to_thread(WorkerProcess(env, self.tmp / "worker.log").start)

    async def run(self, step: Step) -> None:
        if step.file is not None:
            path, content = step.file
            target = Path(self.command(path, warm=False))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        elif step.worker is not None:
            await self.restart_worker(step.worker)
        elif step.continues is not None:
            assert step.continues in self.running, f"{step.where}: nothing named {step.continues} runs"
            await self.running[step.continues].shows(step.expected, step.where, to_the_end=False)
        for command in step.commands:
            # A command that stays running starts plainly: Ctrl+C to its process group then reaches it itself.
            run = await asyncio.to_thread(self.command, command.text, warm=step.stays is None)
            terminal = await Terminal(command.text, run, self.env, self.place).start()
            if step.stays is not None:
                self.running[step.stays] = terminal
                await terminal.shows(command.expected, step.where, to_the_end=False)
            else:
                try:
                    await terminal.shows(command.expected, step.where, to_the_end=True)
                finally:
                    await terminal.stop()

    async def close(self) -> None:
        for terminal in self.running.values():
            await terminal.stop()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)


async def check(steps: list[Step], tmp: Path) -> None:
    tmp.mkdir()
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=[RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE],
    )
    session = Session(env, tmp)
    # A worker directive at the very start sets the first worker's settings.
    settings = steps[0].worker if steps and steps[0].worker is not None else None
    try:
        await session.restart_worker(settings or {})
        for step in steps[1:] if settings is not None else steps:
            await session.run(step)
    finally:
        await session.close()
        await env.shutdown()


def sessions() -> list[tuple[str, list[Step]]]:
    return [
        (f"{doc.removesuffix('.md')}-{n}", steps) for doc in DOCS for n, steps in enumerate(parse(REPO / doc), start=1)
    ]


def test_the_docs_have_console_blocks() -> None:
    assert DOCS and sessions(), "no doc has a console block"


# One test per session: each has a server of its own, so the sessions run side by side (pytest -n).
# A session's commands each take a second or two (a Python process and its Temporal calls).
@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(steps, id=name, marks=pytest.mark.slow(2 * sum(len(step.commands) for step in steps)))
        for name, steps in sessions()
    ],
)
async def test_documented_commands_print_what_the_docs_show(steps: list[Step], tmp_path: Path) -> None:
    await check(steps, tmp_path / "session")
