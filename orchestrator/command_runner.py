"""Running a step command: no shell, inside the workspace, its output to a log, its whole process group stopped.

- No shell: argv runs as given, its placeholders replaced as plain text ({container}, {version}, {env},
  {release}, {check}, {workspace}, {artifact}, {git_url}); the same values are in the command's environment
  as RELEASE_CONTAINER, RELEASE_VERSION, RELEASE_ENV, RELEASE_KEY, RELEASE_CHECK, RELEASE_WORKSPACE,
  RELEASE_ARTIFACT and RELEASE_GIT_URL.
- Paths from commands and placeholders never escape the workspace: the command runs in the workspace (its
  cwd), and an argument that is a path (or the value of an --option=path or -opath) reaching outside it after
  substitution is refused before anything runs. The program, argv[0], is exempt: it may be /bin/sh, sh (from
  PATH) or examples/build.sh, which is relative to the repository root, not to the cwd.
- A command runs in a process group of its own, killed whole (SIGTERM, then SIGKILL after a grace) on timeout,
  on cancel, and when the command ends leaving children behind: no process of a step outlives it.
- Its output (stdout and stderr) goes to a file as it comes, capped; its last lines go in the error.

A worker killed outright (SIGKILL) cannot kill its command, which then runs on; the step's retry runs the
command again. Commands must therefore be idempotent, as the simulated steps are.

Plain Python with no temporalio import: the worker's activities pass heartbeat and cancellation in.
"""

from __future__ import annotations

import errno
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from orchestrator.names import clip
from orchestrator.process_group import KILL_WAIT_SECONDS, exited, stop_group
from orchestrator.step_commands import NAME_PLACEHOLDERS, PLACEHOLDERS, StepCommand
from shared import REPO_ROOT

# What run_command keeps: the output file's head, the tail in memory (for the error, the return value and
# the file's end), the last lines the error quotes, and the error's length.
OUTPUT_MAX = 1024 * 1024
TAIL_MAX = 64 * 1024
LAST_LINES = 5
MESSAGE_MAX = 300
PROGRAM_NAME_MAX = 60

HEARTBEAT_SECONDS = 1.0
# How often cancelled() and the process are looked at while the command is silent.
POLL_SECONDS = 0.1
# SIGTERM, then this long for the group to go, then SIGKILL.
# Output still in the pipe once the group is gone; bounded, in case a process left the group holding it.
DRAIN_SECONDS = 2.0
# One pass over the text: a value that holds "{version}" (a git URL may) is not replaced again.
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class CommandError(Exception):
    """A command that did not succeed; retryable says whether running it again may help.

    The message is one line: "command <program> <what happened>: <its last lines, joined by ' | '>".
    """

    retryable: ClassVar[bool] = False

    def __init__(
        self, message: str, program: str = "", exit_code: int | None = None, last_lines: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.program = program
        self.exit_code = exit_code
        self.last_lines = list(last_lines or [])


class CommandFailed(CommandError):
    """Final: a non-zero exit not listed in retry_exit_codes, or a program that cannot start."""


class CommandRefused(CommandFailed):
    """Final, and nothing ran: an argument or placeholder that would reach outside the workspace, or a
    placeholder the step has no value for."""


class CommandRetry(CommandError):
    """Transient: an exit code listed in retry_exit_codes (default 75), or a fork the system refused."""

    retryable = True


class CommandTimeout(CommandRetry):
    """The command ran past its timeout and was killed, with its children.

    Retryable: a step that overran this time was most often kept waiting (a slow network, a busy registry,
    a lock taken elsewhere), not told it is wrong; the kill leaves nothing of it running, and steps are
    idempotent, so a new attempt is safe. One that always hangs is retried like any transient failure, each
    attempt visible with this message, until a person cancels the release. To make a hang final, a command
    can time itself out and exit with a code that is not in retry_exit_codes.
    """


class CommandCancelled(CommandError):
    """cancelled() said so while the command ran; it was killed, with its children.

    Not a verdict on the command, so retryable: the caller turns it into its own cancellation (or, on a
    worker shutting down, lets another worker try the step again).
    """

    retryable = True


# --- running --------------------------------------------------------------------------------------------------


def _noop() -> None:
    pass


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Liveness:
    """How a step that works a while says it is alive (heartbeat), and learns that it should stop (cancelled).

    The worker's activities pass Temporal's heartbeat and cancellation; a step run on its own needs neither.
    """

    heartbeat: Callable[[], None] = _noop
    cancelled: Callable[[], bool] = _never


ALONE = Liveness()


def run_command(
    command: StepCommand,
    placeholders: Mapping[str, str],
    workspace: Path,
    output: Path,
    heartbeat: Callable[[], None] = _noop,
    cancelled: Callable[[], bool] = _never,
) -> str:
    """Run command in workspace; return the tail of its output (at most TAIL_MAX bytes, decoded).

    placeholders: values for the names in PLACEHOLDERS; workspace is added (the absolute workspace).
    output: the file, inside the workspace, that gets the command's stdout and stderr as they come (at most
    OUTPUT_MAX bytes, then a mark and the last TAIL_MAX bytes); replaced if it exists.
    heartbeat() is called at the start and about every second; cancelled() is polled about ten times a second.

    Raises CommandRefused before running anything, CommandFailed (final), CommandRetry or CommandTimeout
    (retryable), CommandCancelled; ValueError for a placeholder name it does not know or an output file
    outside the workspace (the caller's mistake); OSError if the workspace or the output file cannot be used.
    """
    ws = workspace.resolve()
    if not ws.is_dir():
        raise FileNotFoundError(2, "the workspace is not a folder", str(ws))
    argv, values = _argv(command, placeholders, ws)
    program = _program_name(argv[0])
    log = _log_file(output, ws)
    with open(log, "wb") as file:
        sink = _Output(file)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=ws,
                env=_environment(values),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Its own session and process group: the whole group can be killed, and a terminal's ^C
                # aimed at the worker does not reach it.
                start_new_session=True,
            )
        except OSError as e:
            error = _cannot_start(program, e)
            file.write(f"{error}\n".encode())  # the log says why it holds nothing else
            raise error from None
        stopped = _run_to_its_end(proc, sink, command.timeout_seconds, Liveness(heartbeat, cancelled))
        sink.finish()
    return _outcome(command, program, proc.returncode, stopped, sink)


def _argv(command: StepCommand, placeholders: Mapping[str, str], ws: Path) -> tuple[list[str], dict[str, str]]:
    """The command's argv with its placeholders replaced, and their values; CommandRefused for a path outside ws."""
    values = _values(placeholders, ws, command.argv[0])
    argv = _substituted(command.argv, values)
    program = _program_name(argv[0])
    if not argv[0]:
        raise CommandRefused(f"command {program}: argv[0], the program, is empty", program)
    if "/" in argv[0] and not os.path.isabs(argv[0]):
        argv[0] = str(REPO_ROOT / argv[0])
    for arg in argv[1:]:
        if _escapes(arg, ws):
            raise CommandRefused(
                f"command {program}: argument {clip(arg, 120)!r} reaches outside the workspace", program
            )
    return argv, values


def _log_file(output: Path, ws: Path) -> Path:
    """Where the command's output goes: output, resolved inside the workspace, its folder made."""
    log = output if output.is_absolute() else ws / output
    log = log.parent.resolve() / log.name
    if not log.parent.is_relative_to(ws):
        raise ValueError(f"the output file {log} is not inside the workspace {ws}")
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def _environment(values: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment with the step's RELEASE_* values, one per placeholder."""
    env = dict(os.environ)
    for name, variable in PLACEHOLDERS.items():
        # The worker's own RELEASE_* (RELEASE_WORKSPACE is a worker setting) must not pass for the step's.
        env.pop(variable, None)
        if name in values:
            env[variable] = values[name]
    return env


def _run_to_its_end(proc: subprocess.Popen[bytes], sink: _Output, timeout: float, live: Liveness) -> str | None:
    """Watch the command to its end (None), timeout or cancel; then nothing of its process group is left."""
    assert proc.stdout is not None
    try:
        return _watch(proc, sink, timeout, live)
    finally:
        # Every way out, heartbeat() or cancelled() raising included: nothing of the command outlives
        # this call. Whatever of its group still runs (the command itself on timeout or cancel, the
        # children it left behind otherwise) is killed before the command is reaped.
        try:
            stop_group(proc.pid)
            _drain(proc.stdout.fileno(), sink)
        finally:
            proc.stdout.close()
            try:
                proc.wait(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel; Popen reaps it later


def _outcome(command: StepCommand, program: str, code: int | None, stopped: str | None, sink: _Output) -> str:
    """The tail of the output of a command that exited 0; else the CommandError that says how it ended."""
    lines = sink.last_lines()
    if stopped == "timeout":
        raise CommandTimeout(
            _message(f"command {program} timed out after {command.timeout_seconds:g} s", lines),
            program,
            last_lines=lines,
        )
    if stopped == "cancel":
        raise CommandCancelled(_message(f"command {program} was cancelled", lines), program, last_lines=lines)
    if code is None:
        raise CommandRetry(_message(f"command {program} did not end when killed", lines), program, last_lines=lines)
    if code == 0:
        return sink.tail_text()
    what = f"exited {code}"
    if code < 0:
        # As a shell reports it, so retry_exit_codes can name it.
        what = f"exited {128 - code} ({_signal_name(-code)})"
        code = 128 - code
    error = CommandRetry if code in command.retry_exit_codes else CommandFailed
    raise error(_message(f"command {program} {what}", lines), program, exit_code=code, last_lines=lines)


def _cannot_start(program: str, e: OSError) -> CommandError:
    message = f"command {program} cannot start: {e.strerror or e}"
    if e.errno == errno.ENOEXEC:
        return CommandFailed(f"{message} (a script needs a #! line)", program)
    if isinstance(e, FileNotFoundError | PermissionError | NotADirectoryError | IsADirectoryError):
        return CommandFailed(message, program)  # the catalog names a program that is not there to run
    # Out of processes or memory: the system's state, not the command's fault.
    return CommandRetry(message, program)


def _values(placeholders: Mapping[str, str], ws: Path, program: str) -> dict[str, str]:
    """The placeholder values with workspace, checked: names hold no path, the artifact is in the workspace."""
    name = _program_name(program)
    unknown = sorted(set(placeholders) - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(f"unknown placeholder {unknown[0]!r}; the placeholders are {', '.join(PLACEHOLDERS)}")
    values = dict(placeholders)
    if "workspace" in values and Path(values["workspace"]).resolve() != ws:
        raise ValueError(f"placeholder workspace {values['workspace']!r} is not the workspace {ws}")
    values["workspace"] = str(ws)
    for key, value in values.items():
        if "\0" in value:
            raise CommandRefused(f"command {name}: placeholder {{{key}}} holds a NUL character", name)
    for key in NAME_PLACEHOLDERS:
        value = values.get(key)
        if value is not None and (not value or "/" in value or ".." in value):
            raise CommandRefused(f"command {name}: placeholder {{{key}}} = {clip(value)!r} is not a plain name", name)
    artifact = values.get("artifact")
    if artifact is not None and (not os.path.isabs(artifact) or _escapes(artifact, ws)):
        raise CommandRefused(
            f"command {name}: placeholder {{artifact}} = {clip(artifact, 120)!r} is not a path inside the workspace",
            name,
        )
    return values


def _substituted(argv: list[str], values: Mapping[str, str]) -> list[str]:
    """argv with its placeholders replaced; other braces ({print $1}, ${HOME}) are left as they are."""
    missing = sorted({m.group(1) for arg in argv for m in _PLACEHOLDER.finditer(arg)} - set(values))
    if missing:
        program = _program_name(argv[0])
        # Left as text, "{env}" would silently become a literal argument.
        raise CommandRefused(f"command {program}: placeholder {{{missing[0]}}} has no value in this step", program)
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in argv]


def _escapes(arg: str, ws: Path) -> bool:
    """Whether arg, as a path (or the value of --option=path, or of a short option -opath), reaches outside ws;
    relative ones are from ws. A path inside a longer text ("a:/b") is not looked for.

    Symbolic links are followed: a link in the workspace to elsewhere is elsewhere.
    """
    candidates = [arg]
    if "=" in arg:
        candidates.append(arg.split("=", 1)[1])
    if arg.startswith("-") and not arg.startswith("--"):
        candidates.append(arg[2:])  # -t/outside: the option's value follows its letter
    for candidate in candidates:
        if not candidate:
            continue
        try:
            where = (ws / candidate).resolve()  # an absolute candidate replaces ws
        except (OSError, RuntimeError):
            return True  # a symlink loop, say: not a place anyone can vouch for
        if not where.is_relative_to(ws):
            return True
    return False


def _program_name(program: str) -> str:
    return clip(os.path.basename(program.rstrip("/")) or program, PROGRAM_NAME_MAX)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _message(head: str, lines: list[str]) -> str:
    """One line of at most MESSAGE_MAX characters; the end of the output is what it keeps."""
    if not lines:
        return clip(f"{head} (no output)", MESSAGE_MAX)
    text = " | ".join(lines)
    room = MESSAGE_MAX - len(head) - 2
    if len(text) > room:
        text = "…" + text[len(text) - room + 1 :]
    return f"{head}: {text}"


class _Output:
    """The command's output: the file's first OUTPUT_MAX bytes, as they come, and the last TAIL_MAX in memory."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.written = 0
        self.total = 0
        self.tail = bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = OUTPUT_MAX - self.written
        if room > 0:
            chunk = data[:room]
            self.file.write(chunk)
            self.file.flush()  # the file is the log: as it comes
            self.written += len(chunk)
        self.tail += data
        if len(self.tail) > TAIL_MAX:
            del self.tail[: len(self.tail) - TAIL_MAX]

    def finish(self) -> None:
        """Past the cap, the file ends with a mark and the output's last bytes that it does not hold yet."""
        beyond = self.total - self.written
        if beyond <= 0:
            return
        kept = bytes(self.tail[-min(beyond, TAIL_MAX) :])
        dropped = beyond - len(kept)
        mark = f"\n[output capped at {OUTPUT_MAX} bytes: {dropped} bytes dropped; its last {len(kept)} follow]\n"
        self.file.write(mark.encode() + kept)

    def tail_text(self) -> str:
        return self.tail.decode("utf-8", errors="replace")

    def last_lines(self) -> list[str]:
        """The last LAST_LINES lines that say something, printable, each clipped."""
        lines = []
        for raw in self.tail_text().splitlines():
            line = "".join(c if c.isprintable() else " " for c in raw).strip()
            if line:
                lines.append(clip(line, MESSAGE_MAX))
        return lines[-LAST_LINES:]


def _watch(proc: subprocess.Popen[bytes], sink: _Output, timeout: float, live: Liveness) -> str | None:
    """Copy the output until the command ends (None), runs past its timeout ("timeout") or is cancelled ("cancel").

    The command is not reaped here: until it is, its pid, hence its process group's id, cannot be reused, so
    killing the group afterwards can never strike someone else's processes.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    started = time.monotonic()
    deadline = started + timeout
    next_beat = started
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        reading = True
        while True:
            now = time.monotonic()
            if now >= next_beat:
                live.heartbeat()
                next_beat = now + HEARTBEAT_SECONDS
            if exited(proc.pid):
                return None
            if live.cancelled():
                return "cancel"
            if now >= deadline:
                return "timeout"
            wait = max(0.0, min(POLL_SECONDS, next_beat - now, deadline - now))
            if reading:
                if selector.select(wait):
                    reading = _read(fd, sink)
            else:
                time.sleep(wait)  # the pipe is closed: nothing to wake on but the clock


def _read(fd: int, sink: _Output) -> bool:
    """Read what the pipe holds into sink; False at its end (every writer closed it)."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return True
    if not data:
        return False
    sink.add(data)
    return True


def _drain(fd: int, sink: _Output) -> None:
    """What the group wrote before it ended, up to the pipe's end or DRAIN_SECONDS."""
    deadline = time.monotonic() + DRAIN_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left) and not _read(fd, sink):
                return
