"""Test infrastructure: run_workflow.py and run_worker.py as forks of a process that has imported them, as Rails'
Spring does.

A Python process that talks to Temporal spends 0.6 to 0.8 CPU-seconds importing before it does anything, and the
suite starts about 300 commands and workers: that was a third of its time. Here each pytest process keeps one
*warm* process that has imported what the scripts need and waits on a Unix socket. A command is a small launcher
(`python -S -I`, a few milliseconds) that hands the warm process its argv, environment, folder and its stdin,
stdout and stderr; a fork of the warm process runs the script in them, `__main__` as usual, and the launcher ends
with the command's exit code, or by its signal. A signal sent to the launcher goes on to the command (the tests'
workers are stopped that way, with Ctrl+C); a launcher killed outright takes its command with it. The warm
process records each command's pid under its launcher's, so a test can SIGKILL the command itself (`pid_of`).

What a test sees is what it saw of a plain process: the same script, arguments, environment, output and exit code.
What the warm start leaves out is only the imports, so a test of what happens during them (Ctrl+C while a script
imports, a broken installation) starts plain processes. WARM_SCRIPTS=off starts every command plainly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The launcher: hands over what the command runs with, forwards signals, ends as the command ended.
LAUNCHER = r"""
import json, os, signal, socket, struct, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.connect(sys.argv[1])
header = json.dumps({"argv": sys.argv[2:], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
socket.send_fds(conn, [struct.pack("!I", len(header))], [0, 1, 2])
conn.sendall(header)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(sig, lambda number, _: conn.sendall(struct.pack("!i", number)))
answer = b""
while len(answer) < 4:
    chunk = conn.recv(4 - len(answer))
    if not chunk:
        os._exit(70)
    answer += chunk
code = struct.unpack("!i", answer)[0]
if code < 0:
    if -code != signal.SIGKILL:  # whose handling cannot be set
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code)
"""

# The warm process: imports, then forks a manager per launcher; the manager forks the command and waits for it.
WARM = r"""
import json, os, runpy, select, signal, socket, struct, sys, threading, traceback
import run_workflow, run_worker, utils, temporalio.client, temporalio.contrib.pydantic, temporalio.worker
import orchestrator.cli.actions, orchestrator.cli.diagnostics, orchestrator.cli.follower, orchestrator.cli.waits
assert threading.active_count() == 1, "imports started a thread: a fork would not be safe"

def run(header, fds, conn):
    conn.close()
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(header["cwd"])
    os.environ.clear()
    os.environ.update(header["env"])
    sys.argv = header["argv"]
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python script.py` sets it
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

def manage(conn):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    length, fds, _, _ = socket.recv_fds(conn, 4, 3)
    size, data = struct.unpack("!I", length)[0], b""
    while len(data) < size:
        data += conn.recv(size - len(data))
    header = json.loads(data)
    pid = os.fork()
    if pid == 0:
        run(header, fds, conn)
    for fd in fds:
        os.close(fd)
    # Which command a launcher stands for, by the launcher's pid (the peer of its socket): for a test to kill it.
    launcher = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    record = os.path.join(os.path.dirname(sys.argv[1]), f"{launcher}.pid")
    with open(record + ".new", "w") as out:
        out.write(str(pid))
    os.rename(record + ".new", record)
    ended = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, ended], [], [])
        if ended in ready:
            _, status = os.waitpid(pid, 0)
            conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
            return
        asked = conn.recv(4)
        if len(asked) < 4:  # the launcher is gone: so is its command
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        os.kill(pid, struct.unpack("!i", asked)[0])

server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(64)
server.settimeout(1)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # managers are reaped by the kernel
parent = os.getppid()
print("ready", flush=True)
while os.getppid() == parent:  # the pytest process that started it ends without telling anyone
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    conn.settimeout(None)
    if os.fork() == 0:
        server.close()
        try:
            manage(conn)
        finally:
            os._exit(0)
    conn.close()
import shutil
shutil.rmtree(os.path.dirname(sys.argv[1]), ignore_errors=True)  # the socket and the pid records
"""


class WarmScripts:
    """The warm process of this pytest process, started at its first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.socket: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def on(self) -> bool:
        return os.environ.get("WARM_SCRIPTS", "on") != "off"

    def command(self, script: str) -> list[str]:
        """How to start REPO/script: warm, or plainly where WARM_SCRIPTS=off."""
        if not self.on:
            return [sys.executable, str(REPO / script)]
        return [sys.executable, "-S", "-I", "-c", LAUNCHER, self._started(), str(REPO / script)]

    def pid_of(self, launcher: int, limit: float = 10) -> int:
        """The pid of the command that a launcher (by its pid) started warm."""
        assert self.socket is not None
        record = Path(self.socket).parent / f"{launcher}.pid"
        deadline = time.monotonic() + limit
        while not record.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no warm command for launcher {launcher}")
            time.sleep(0.01)
        return int(record.read_text())

    def _started(self) -> str:
        with self.lock:
            if self.socket is None or self.proc is None or self.proc.poll() is not None:
                folder = tempfile.mkdtemp(prefix="warm-scripts-")
                path = str(Path(folder) / "socket")
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", WARM, path], cwd=REPO, env=env, stdout=subprocess.PIPE
                )
                assert self.proc.stdout is not None
                ready = self.proc.stdout.readline()
                if ready != b"ready\n":
                    raise RuntimeError(f"the warm process for run_workflow.py did not start ({self.proc.wait()})")
                self.socket = path
            return self.socket


WARM_SCRIPTS = WarmScripts()
