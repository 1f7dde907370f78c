"""The chaos proof: kill workers and the server during a release; nothing is lost, nothing runs twice.

Real dev server, real worker and starter processes. `make chaos` runs this alone; the summary
line is printed at the end of the pytest run. Where in a step each strike lands, and which
attempts fail by injection, come from a seed: fixed (1) in `make test`, so CI runs the same
chaos each time; `make chaos` picks a random one, and CHAOS_SEED=n replays one. Strikes are
aimed at steps at work, never at an idle worker.

Two phases. First the worker dies of its own accord inside steps' effect window
(FAILURE_ACTION=exit), in turn with FAILURE_AT=effect, right after a step's effect is in place
and before its ledger line, and FAILURE_AT=end, right after its ledger line and before the
step completes; the test restarts it each time, CHAOS_EXITS times (default 2). Kills from outside cannot aim
at that window, a few milliseconds wide. Then, with failures raised at the start of steps
(FAILURE_AT=start), the test kills the worker CHAOS_KILLS times (default 3) and restarts the
server once, each strike aimed at steps in flight.

Effects are counted by an inotify observer in this process (tests/observer.py), not by the
ledger the worker writes: only a count taken outside the code under test can show a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
from temporalio.api.enums.v1 import PendingActivityState, TimeoutType
from temporalio.client import Client
from temporalio.service import RPCError

from release_management import build_content, render_config
from shared import ENVIRONMENTS
from tests.conftest import REPO, ProofLines, RestartableServer
from tests.observer import LandingObserver
from tests.support import WorkerProcess, script_env, task_queue
from tests.test_idempotency import REPORTED
from utils import EXIT_CODE

KEY = "RELEASE-NOV-23-INITIAL"
ARTIFACTS = ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
STEPS = ("build", "deploy", "test")
WORKER_KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
# Deaths of the worker inside steps' effect window, in the first phase.
WORKER_EXITS = int(os.environ.get("CHAOS_EXITS", "2"))
# Fixed, so CI runs the same chaos each time; any other value explores other timings.
DEFAULT_SEED = 1
STEP_SECONDS = 1.5
# Created before the worker starts and watched before the release starts, so no landing is missed.
WATCHED = ["artifactory", *(f"environments/{env}" for env in ENVIRONMENTS)]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RestartableServer]:
    srv = RestartableServer(tmp_path / "dev.db")
    await srv.start()
    yield srv
    await srv.stop()


def _write_atomically(path: Path, data: bytes) -> None:
    """As the steps write: a hidden temporary file, then a rename into place."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_observer_sees_a_file_landing_twice(tmp_path: Path) -> None:
    """The observer can see a duplicate, so its "0 landed twice" below means something."""
    out = tmp_path / "out"
    out.mkdir()
    with LandingObserver(tmp_path, ["out"]) as observer:
        _write_atomically(out / "a", b"1")
        _write_atomically(out / "a", b"2")
        (out / ".b.partial").write_bytes(b"a temporary file, never in place")
        (out / "sub").mkdir()  # a folder that appears while watching
        _write_atomically(out / "sub" / "c", b"1")
        (out / "d").write_bytes(b"written in place")
        # A folder filled under a hidden name, then renamed into place (as a deploy keeps what it replaces):
        # its files land once, under their final path.
        (out / ".kept.partial").mkdir()
        _write_atomically(out / ".kept.partial" / "e", b"1")
        (out / ".kept.partial" / "f").write_bytes(b"written in place")
        os.rename(out / ".kept.partial", out / "kept")
    assert observer.problem is None
    assert observer.counts() == {"out/a": 2, "out/sub/c": 1, "out/d": 1, "out/kept/e": 1, "out/kept/f": 1}


@pytest.mark.slow(90)
async def test_release_survives_worker_kills_and_a_server_restart(
    server: RestartableServer, tmp_path: Path, proof_lines: ProofLines
) -> None:
    asked = os.environ.get("CHAOS_SEED") or str(DEFAULT_SEED)
    seed = random.randrange(1, 1_000_000) if asked == "random" else int(asked)
    rng = random.Random(seed)
    workspace = tmp_path / "ws"
    for folder in [*WATCHED, "artifactory/reports"]:
        (workspace / folder).mkdir(parents=True)
    ledger = workspace / "ledger.jsonl"
    env = script_env(
        server.target,
        workspace,
        task_queue(),
        FAILURE_RATE="sometimes",
        FAILURE_SEED=str(seed),
        DEMO_STEP_SECONDS=str(STEP_SECONDS),
    )
    # The first phase's workers end themselves with os._exit between a step's effect and its
    # completion: in turn right after an effect (no ledger line yet), then right after a ledger line.
    points = ["effect", "end"]

    def exiting(n: int) -> dict[str, str]:
        return {**env, "FAILURE_AT": points[n % 2], "FAILURE_ACTION": "exit"}

    log = tmp_path / "worker.log"

    observer = LandingObserver(workspace, WATCHED).start()
    worker: WorkerProcess | None = None
    starter: asyncio.subprocess.Process | None = None
    exits = kills = restarts = in_flight = 0
    try:
        worker = await asyncio.to_thread(WorkerProcess(exiting(0) if WORKER_EXITS else env, log).start)
        started = time.monotonic()
        starter = await _start_release(env)
        release = asyncio.create_task(starter.communicate())
        while exits < WORKER_EXITS:
            code = await _death(worker, release)
            if code is None:
                break  # the release ended first
            assert code == EXIT_CODE, f"the worker died with {code}, not by FAILURE_ACTION=exit:\n{_tail(log)}"
            exits += 1
            worker = await asyncio.to_thread(WorkerProcess(exiting(exits) if exits < WORKER_EXITS else env, log).start)
        worker_up = datetime.now(UTC)
        while kills < WORKER_KILLS or restarts < 1:
            # Strike only while work is in flight: once the release has moved on since the last
            # strike (the ledger grew), aim part-way into a step this worker is working on.
            if not await _ledger_grows(ledger, release):
                break
            struck = await _aim(server, worker_up, release, rng)
            if not struck:
                break
            in_flight += struck
            if kills == WORKER_KILLS // 2 and restarts == 0:
                await server.stop()
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                await server.start()
                restarts += 1
            else:
                worker.kill()
                kills += 1
                worker_up = datetime.now(UTC)
                worker = await asyncio.to_thread(WorkerProcess(env, log).start)
        async with asyncio.timeout(900):
            raw, _ = await release
        wall = time.monotonic() - started
    finally:
        # Clean up without asserting, so a failure above is the one reported.
        if starter is not None and starter.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                starter.kill()
        worker_exit = worker.stop_quietly() if worker is not None else None
        observer.stop()

    out = raw.decode()
    assert starter is not None
    assert starter.returncode == 0, out
    assert f"Result: Release {KEY}: SUCCESS" in out
    assert exits == WORKER_EXITS, f"the release ended after {exits} of {WORKER_EXITS} exits (seed {seed})"
    assert kills >= WORKER_KILLS and restarts == 1, f"the release ended before the chaos did (seed {seed})"
    # Where each exit struck, as the dying worker said: after an effect, or after a ledger line.
    text = log.read_text()
    after_effect = text.count("after the effect, before the ledger line: ")
    after_line = text.count("after the ledger line: ")
    assert (after_effect, after_line) == ((exits + 1) // 2, exits // 2), _tail(log)
    assert worker_exit == 0, f"the last worker did not stop cleanly on Ctrl+C:\n{log.read_text()[-3000:]}"

    # Effects, as the kernel saw them land: each exactly once.
    assert observer.problem is None, observer.problem
    landed = observer.counts()
    artifacts = [f"artifactory/{a}" for a in ARTIFACTS]
    artifacts += [f"environments/{e}/{a}" for e in ENVIRONMENTS for a in ARTIFACTS]
    # A report per quality gate of each environment, and one of the health check that follows them.
    reports = [f"artifactory/reports/{a}/{e}-{c}.json" for a in ARTIFACTS for e in ENVIRONMENTS for c in REPORTED[e]]
    configs = [f"environments/{e}/config/{a.rsplit('-', 1)[0]}.json" for e in ENVIRONMENTS for a in ARTIFACTS]
    twice = {path: n for path, n in sorted(landed.items()) if n > 1}
    never = [path for path in artifacts + reports + configs if path not in landed]
    assert sorted(landed) == sorted(artifacts + reports + configs), f"unexpected landings (seed {seed})"
    assert not twice, f"landed more than once: {twice} (seed {seed})"
    assert not never, f"never landed: {never} (seed {seed})"
    duplicates = sum(n - 1 for n in landed.values())

    # What is left in place is whole and holds the right content.
    release_info = {d.container_id: d for d in _catalog_deploys(workspace)}
    for name in ENVIRONMENTS:
        folder = workspace / "environments" / name
        # A worker that dies mid-write leaves its hidden temporary file; what is in place is what counts.
        placed = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name != "config")
        assert placed == ARTIFACTS, f"{name} (seed {seed})"
        for artifact in ARTIFACTS:
            container = artifact.rsplit("-", 1)[0]
            expected = build_content(release_info[container], KEY)
            assert (folder / artifact).read_bytes() == expected, f"partial {name}/{artifact} (seed {seed})"
            config = folder / "config" / f"{container}.json"
            assert config.read_bytes() == render_config(release_info[container], name, KEY), f"{config} (seed {seed})"

    # The ledger's own claim: every execution recorded, exactly one of them applied per step.
    lines = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    executions = [e for e in lines if e["step"] in STEPS]
    (run_id,) = {e["run_id"] for e in executions}
    # Each deploy kept what its environment held before it, once: nothing, since they were empty
    # (a worker dying mid-keep may leave a hidden partial folder; what was renamed into place counts).
    for name in ENVIRONMENTS:
        kept = workspace / "environments" / name / ".rollback" / run_id
        containers = sorted(p.name for p in kept.iterdir() if not p.name.startswith("."))
        assert containers == [a.rsplit("-", 1)[0] for a in ARTIFACTS], f"{name} (seed {seed})"
        assert [p for c in containers for p in (kept / c).iterdir()] == [], f"{name} (seed {seed})"
    applied = Counter(_identity(e) for e in executions if e.get("applied") is True)
    # One build per container, one deploy and one test per container and environment.
    steps = len(ARTIFACTS) * (1 + 2 * len(ENVIRONMENTS))
    not_once = {i: n for i, n in applied.items() if n != 1}
    unapplied = {_identity(e) for e in executions} - set(applied)
    assert not not_once, f"applied more than once, says the ledger: {not_once} (seed {seed})"
    assert not unapplied, f"executed but never applied, says the ledger: {sorted(unapplied)} (seed {seed})"
    assert len(applied) == steps, f"{len(applied)} steps applied, expected {steps} (seed {seed})"
    # Each exit after a ledger line left an applied, recorded step that ran again and found its work done.
    assert len(executions) - len(applied) >= after_line, (
        f"a step run again after its ledger line was not recorded (seed {seed})"
    )

    history = await _step_attempts(server.client, f"release-{KEY}")
    assert len(history) == steps, f"{len(history)} step activities in history, expected {steps}"
    attempts = sum(s.attempts for s in history)
    cut_off = sum(s.cut_off for s in history)
    # Temporal's side of the strikes: some step's attempt ended in a heartbeat timeout, its worker dead under it.
    assert cut_off >= 1, f"no step was cut off by a kill or the restart (seed {seed})"
    proof_lines.append(
        f"chaos proof: {exits} worker exits inside a step's effect window ({after_effect} after the effect, "
        f"{after_line} after the ledger line), "
        f"{kills} worker kills, {restarts} server restart survived, striking {in_flight} steps in flight; "
        f"{len(applied)} steps executed in {attempts} attempts ({attempts - steps} retries), "
        f"{len(executions)} executions in the ledger ({len(executions) - len(applied)} found their work done); "
        f"{len(artifacts)} artifacts + {len(reports)} reports + {len(configs)} configurations landed once each, "
        f"{duplicates} landed twice "
        f"(observed with inotify); wall {wall:.1f}s (CHAOS_SEED={seed})"
    )


async def _start_release(env: dict[str, str]) -> asyncio.subprocess.Process:
    """run_workflow.py for the release, its process kept so a failed test can end it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "run_workflow.py"),
        "--release-key",
        KEY,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _death(worker: WorkerProcess, release: asyncio.Task[tuple[bytes, bytes]], limit: float = 120) -> int | None:
    """Wait for the worker to end by itself; its exit code, or None if the release ended first."""
    assert worker.proc is not None
    ended = asyncio.create_task(asyncio.to_thread(worker.proc.wait))
    async with asyncio.timeout(limit):
        await asyncio.wait({ended, release}, return_when=asyncio.FIRST_COMPLETED)
    # Ended wins a tie: a worker that died as the release ended did die.
    return ended.result() if ended.done() else None


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _identity(entry: dict[str, object]) -> tuple[object, ...]:
    """What the ledger claims happened once: a step of a deploy in an environment, in one run."""
    return entry["run_id"], entry["deploy_key"], entry["step"], entry["env"]


def _ledger_lines(ledger: Path) -> int:
    try:
        return ledger.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def _ledger_grows(ledger: Path, release: asyncio.Task[tuple[bytes, bytes]], limit: float = 120) -> bool:
    """Wait until a step completes (a ledger line is added); False if the release ended first."""
    before = _ledger_lines(ledger)
    async with asyncio.timeout(limit):
        while _ledger_lines(ledger) == before:
            if release.done():
                return False
            await asyncio.sleep(0.05)
    return not release.done()


async def _aim(
    server: RestartableServer, since: datetime, release: asyncio.Task[tuple[bytes, bytes]], rng: random.Random
) -> int:
    """Wait for the moment to strike: part-way into a step that a worker up since `since` works on.

    Returns how many steps are in flight at that moment (never 0), or 0 if the release ended first.
    """
    async with asyncio.timeout(120):
        while not release.done():
            starts = await _working_steps(server.client, since)
            if not starts:
                await asyncio.sleep(0.05)
                continue
            # Part-way into the latest step; if that moment has passed (a slow, busy machine),
            # now: the step is still pending, so still at work.
            strike = max(starts) + timedelta(seconds=rng.uniform(0.3, 0.7) * STEP_SECONDS)
            await asyncio.sleep(max(0.0, (strike - datetime.now(UTC)).total_seconds()))
            # Looked at again just before striking: a step may have ended meanwhile.
            if in_flight := len(await _working_steps(server.client, since)):
                return in_flight
    return 0


async def _working_steps(client: Client, since: datetime) -> list[datetime]:
    """When each build, deploy and test at work started, for those started since `since`.

    At work means started and heartbeating: a step heartbeats once past its injected
    failure, as it begins its work. Read from the pending activities of the release and its deploys.
    """
    try:
        root = await client.get_workflow_handle(f"release-{KEY}").describe()
    except RPCError:
        return []  # not started yet
    descriptions = [root.raw_description]
    for child in root.raw_description.pending_children:
        try:
            descriptions.append((await client.get_workflow_handle(child.workflow_id).describe()).raw_description)
        except RPCError:
            continue  # ended meanwhile
    starts = []
    for description in descriptions:
        for a in description.pending_activities:
            if a.activity_type.name not in STEPS or a.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                continue
            started = a.last_started_time.ToDatetime(tzinfo=UTC)
            if started >= since and a.last_heartbeat_time.ToDatetime(tzinfo=UTC) >= started:
                starts.append(started)
    return starts


class StepAttempts(NamedTuple):
    attempts: int  # how many attempts the step took
    cut_off: bool  # its attempt before the last ended by a heartbeat timeout: its worker died under it


async def _step_attempts(client: Client, workflow_id: str) -> list[StepAttempts]:
    """Each build, deploy and test in the release's and its children's histories.

    History keeps only the last attempt of each activity, with the failure of the one before:
    so `attempts` is exact, and `cut_off` undercounts (a later failure hides an earlier timeout).
    """
    ids, steps = [workflow_id], []
    while ids:
        history = await client.get_workflow_handle(ids.pop()).fetch_history()
        kinds: dict[int, str] = {}
        for event in history.events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                kinds[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
            if event.HasField("activity_task_started_event_attributes"):
                started = event.activity_task_started_event_attributes
                if kinds.get(started.scheduled_event_id) in STEPS:
                    timeout = started.last_failure.timeout_failure_info
                    cut_off = started.last_failure.HasField("timeout_failure_info") and (
                        timeout.timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
                    )
                    steps.append(StepAttempts(started.attempt, cut_off))
            if event.HasField("child_workflow_execution_started_event_attributes"):
                ids.append(event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id)
    return steps


def _catalog_deploys(workspace: Path) -> list:
    from release_management import ReleaseManagement
    from tests.conftest import CATALOG

    return ReleaseManagement(workspace, CATALOG).gather_deployments(KEY).deploys
