"""No step's effect is applied twice, counted from outside the code under test.

The ledger refuses a second applied line for a step, so a count taken from it cannot show a
step applied twice. Here effects are counted as the kernel sees them land (tests/observer.py,
inotify), while steps are made to fail right after their effect is in place (FAILURE_AT=effect)
and after their ledger line (FAILURE_AT=end): every retry then runs a step that is applied.
Also here: a crash in the middle of a write leaves the old version whole and nothing half-written.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import ReleaseActivities
from orchestrator import worker_settings
from orchestrator.settings import Settings
from release_management import ReleaseManagement
from shared import ENVIRONMENTS, HEALTH, ReleaseRequest, StepInput
from tests.conftest import CATALOG, REPO
from tests.observer import LandingObserver
from tests.support import in_process_worker
from utils import EXIT_CODE, FailureInjector, SimulatedFailure
from workflows import ReleaseWorkflow

KEY = "RELEASE-NOV-23-INITIAL"
RUN = "run-1"
ARTIFACTS = ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
# Every folder a step writes into, made before watching so that no landing is missed.
WATCHED = [
    "artifactory",
    "artifactory/reports",
    *(f"environments/{env}" for env in ENVIRONMENTS),
    *(f"environments/{env}/config" for env in ENVIRONMENTS),
]
# 3 containers x (a build, then a deploy and a test in each of the 4 environments).
STEPS = len(ARTIFACTS) * (1 + 2 * len(ENVIRONMENTS))
# The quality gates releases.json sets for each environment: a report per check.
CHECKS = {"DEV": ["unit"], "TEST": ["integration"], "QC": ["performance", "security"], "PROD": ["smoke"]}
# And after them, in every environment, the health check: a report of its own.
REPORTED = {env: [*checks, HEALTH] for env, checks in CHECKS.items()}


def expected_landings() -> dict[str, int]:
    """Each artifact, deployed file, configuration file and check report of KEY, landed exactly once."""
    paths = [f"artifactory/{a}" for a in ARTIFACTS]
    paths += [f"environments/{e}/{a}" for e in ENVIRONMENTS for a in ARTIFACTS]
    paths += [f"environments/{e}/config/{a.rsplit('-', 1)[0]}.json" for e in ENVIRONMENTS for a in ARTIFACTS]
    paths += [f"artifactory/reports/{a}/{e}-{c}.json" for a in ARTIFACTS for e in ENVIRONMENTS for c in REPORTED[e]]
    return dict.fromkeys(paths, 1)


def test_the_expected_checks_are_the_catalogs() -> None:
    catalog = ReleaseManagement(Path("/nonexistent"), CATALOG).catalog()
    assert {env: catalog.checks(env) for env in ENVIRONMENTS} == CHECKS


def watch(workspace: Path, *hidden: str) -> LandingObserver:
    """Watch every folder a step writes into, and the hidden folders named (which must exist)."""
    for folder in WATCHED:
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    return LandingObserver(workspace, [*WATCHED, *hidden])


def landed(observer: LandingObserver) -> dict[str, int]:
    assert observer.problem is None, observer.problem
    return observer.counts()


def step_lines(rm: ReleaseManagement) -> dict[tuple[object, ...], list[tuple[object, object]]]:
    """Per step (deploy, verb, environment): its ledger lines as (attempt, applied), in order."""
    lines: dict[tuple[object, ...], list[tuple[object, object]]] = {}
    for e in rm.ledger.entries():
        lines.setdefault((e["deploy_key"], e["step"], e["env"]), []).append((e["attempt"], e["applied"]))
    return lines


class Crash(Exception):
    """The process dying at this point, as seen by the code that was running."""


def steps_of(rm: ReleaseManagement, key: str = KEY, run_id: str = RUN) -> list[tuple[Callable[..., object], StepInput]]:
    """Each step of a release in an order that works: per deploy, build, then deploy and test per environment."""
    order = []
    for deploy in rm.gather_deployments(key).deploys:
        for env in deploy.environments:
            s = StepInput(release_key=key, run_id=run_id, deploy=deploy, env=env)
            order += ([(rm.build, s)] if env == "DEV" else []) + [(rm.deploy, s), (rm.test, s)]
    return order


# --- steps run again after their effect, on ReleaseManagement alone ----------------------------


def test_a_step_run_again_after_its_effect_or_its_ledger_line_applies_nothing_twice(tmp_path: Path) -> None:
    struck: list[tuple[str, int]] = []

    def crash_once_the_effect_is_in_place(verb: str, step: StepInput, attempt: int) -> None:
        if attempt == 1:
            struck.append((verb, attempt))
            raise Crash(f"{verb} died after its effect")

    rm = ReleaseManagement(tmp_path, CATALOG, after_effect=crash_once_the_effect_is_in_place)
    with watch(tmp_path) as observer:
        for run, s in steps_of(rm):
            with pytest.raises(Crash):
                run(s, attempt=1)  # the effect lands, the ledger line does not
            assert run(s, attempt=2).applied  # finds the effect in place and claims it
            # Died after its ledger line, before returning: Temporal runs it again.
            assert not run(s, attempt=3).applied
    assert len(struck) == STEPS
    assert landed(observer) == expected_landings()
    lines = step_lines(rm)
    assert len(lines) == STEPS
    assert set(map(tuple, lines.values())) == {((2, True), (3, False))}


def test_a_deploy_run_again_after_its_effect_keeps_what_its_environment_held_once(tmp_path: Path) -> None:
    """HOTFIX-STAGE over INITIAL: each deploy keeps the pair it replaces, once, however often it runs."""
    hotfix = "RELEASE-NOV-23-HOTFIX-STAGE"
    rm = ReleaseManagement(tmp_path, CATALOG)
    for run, s in steps_of(rm, KEY, "initial"):
        run(s)
    before = {
        env: {c: ((tmp_path / "environments" / env / a).read_bytes(), rm.config_path(env, c).read_bytes())
              for a in ARTIFACTS for c in [a.rsplit("-", 1)[0]]}
        for env in ("DEV", "TEST", "QC")
    }  # fmt: skip

    def crash_once_the_effect_is_in_place(verb: str, step: StepInput, attempt: int) -> None:
        if attempt == 1:
            raise Crash(f"{verb} died after its effect")

    rm.after_effect = crash_once_the_effect_is_in_place
    kept = [f"environments/{env}/.rollback" for env in ENVIRONMENTS]
    with watch(tmp_path, *kept) as observer:
        for run, s in steps_of(rm, hotfix, RUN):
            with pytest.raises(Crash):
                run(s, attempt=1)
            assert run(s, attempt=2).applied
            assert not run(s, attempt=3).applied
    landings = landed(observer)
    keepsakes = {path: n for path, n in landings.items() if "/.rollback/" in path}
    assert keepsakes == {
        f"environments/{env}/.rollback/{RUN}/{a.rsplit('-', 1)[0]}/{name}": 1
        for env in ("DEV", "TEST", "QC")
        for a in ARTIFACTS
        for name in (a, "config.json")
    }
    for env, pairs in before.items():
        for container, (artifact, config) in pairs.items():
            folder = tmp_path / "environments" / env / ".rollback" / RUN / container
            assert (folder / f"{container}-1.0").read_bytes() == artifact, (env, container)
            assert (folder / "config.json").read_bytes() == config, (env, container)
    # The rest landed once each too; PROD, not in HOTFIX-STAGE, kept nothing.
    assert set(landings.values()) == {1}
    assert not (tmp_path / "environments" / "PROD" / ".rollback" / RUN).exists()


def test_a_clean_run_of_the_steps_lands_each_effect_once(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    with watch(tmp_path) as observer:
        for run, s in steps_of(rm):
            assert run(s).applied
    assert landed(observer) == expected_landings()
    assert set(map(tuple, step_lines(rm).values())) == {((1, True),)}


# --- the fault hook itself: FAILURE_AT, FAILURE_ACTION ----------------------------------------------


def test_failure_at_and_action_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad value is refused in one line naming the setting, as FAILURE_RATE's are."""
    monkeypatch.setenv("FAILURE_AT", "end, Effect")
    monkeypatch.setenv("FAILURE_ACTION", "exit")
    settings = Settings.from_env()
    assert (settings.failure_at, settings.failure_action) == (("effect", "end"), "exit")
    monkeypatch.delenv("FAILURE_AT")
    monkeypatch.delenv("FAILURE_ACTION")
    settings = Settings.from_env()
    assert (settings.failure_at, settings.failure_action) == (("start",), "raise")
    for name, value, message in [
        (
            "FAILURE_AT",
            "effect,middle",
            "FAILURE_AT='effect,middle': 'middle' is not one of start, midway, effect, end",
        ),
        ("FAILURE_ACTION", "kill", "FAILURE_ACTION='kill' is not one of raise, exit"),
    ]:
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(ValueError, match=f"^{message}") as err:
                Settings.from_env()
            assert "\n" not in str(err.value)


def struck_attempts(injector: FailureInjector, point: str, what: str = "build frontend-1.0 → DEV") -> list[int]:
    hits = []
    for attempt in range(1, 101):
        try:
            injector.maybe_fail(what, attempt, key=KEY, point=point)
        except SimulatedFailure:
            hits.append(attempt)
    return hits


def test_each_point_draws_on_its_own_and_a_seed_replays_the_same_faults() -> None:
    every = ("start", "midway", "effect", "end")
    injector = FailureInjector("sometimes", seed=5, at=every)
    hits = {point: struck_attempts(injector, point) for point in every}
    assert hits == {point: struck_attempts(FailureInjector("sometimes", seed=5, at=every), point) for point in every}
    assert all(15 <= len(h) <= 45 for h in hits.values()), hits  # about 30 of 100
    assert len({tuple(h) for h in hits.values()}) == 4, "points that strike together are not drawn on their own"
    # A point not asked for never strikes; the start point draws as it did before FAILURE_AT.
    assert struck_attempts(FailureInjector("sometimes", seed=5, at=("effect",)), "start") == []
    assert struck_attempts(FailureInjector("sometimes", seed=5), "start") == hits["start"]
    assert struck_attempts(FailureInjector("sometimes", seed=6, at=every), "effect") != hits["effect"]


def test_failure_at_effect_strikes_an_activity_with_its_effect_in_place(rm: ReleaseManagement, tmp_path: Path) -> None:
    injector = FailureInjector("alot", seed=1, at=("effect",))
    acts, env = ReleaseActivities(rm, injector), ActivityEnvironment()
    s = steps_of(rm)[0][1]
    artifact = tmp_path / "artifactory" / "frontend-1.0"
    failed = 0
    with watch(tmp_path) as observer:
        for attempt in range(1, 50):
            env.info = dataclasses.replace(env.info, attempt=attempt)
            try:
                result = env.run(acts.build, s)
                break
            except SimulatedFailure as err:
                assert "after the effect, before the ledger line" in str(err)
                assert artifact.is_file() and step_lines(rm) == {}, "struck before the effect, or after its line"
                failed += 1
        else:
            pytest.fail("the build never passed")
    assert failed >= 1, "seed 1 strikes the first attempt: the hook never struck"
    assert (result.attempt, result.applied) == (failed + 1, True)
    assert landed(observer) == {"artifactory/frontend-1.0": 1}


def test_failure_action_exit_ends_the_process_at_once() -> None:
    script = (
        "from utils import FailureInjector\n"
        "injector = FailureInjector('alot', seed=1, at=('end',), action='exit')\n"
        "for attempt in range(1, 100):\n"
        "    injector.maybe_fail('test frontend-1.0 in QC', attempt, key='K', point='end')\n"
        "print('still alive')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_CODE, run.stderr
    assert "still alive" not in run.stdout
    assert "simulated failure (alot) after the ledger line: test frontend-1.0 in QC, attempt" in run.stderr
    assert f"the worker exits ({EXIT_CODE}), as if killed" in run.stderr


def test_a_worker_with_other_fault_hooks_is_named_by_make_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hooks appear in a worker's settings line only when set, and count when make compares settings."""
    monkeypatch.delenv("FAILURE_AT", raising=False)
    monkeypatch.delenv("FAILURE_ACTION", raising=False)
    plain = Settings.from_env()
    hooked = dataclasses.replace(plain, failure_at=("effect", "end"), failure_action="exit")
    target = {"target_host": "localhost:7233", "namespace": "default"}
    assert "FAILURE_AT" not in worker_settings.settings_line(worker_settings.settings_of(plain, target, "b1"))
    line = worker_settings.settings_line(worker_settings.settings_of(hooked, target, "b1"))
    assert line.endswith(" FAILURE_AT=effect,end FAILURE_ACTION=exit")
    (tmp_path / "worker.settings").write_text(line)
    (tmp_path / "worker.pid").write_text("42")
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(plain, target, "b1")) == 1
    assert "with FAILURE_AT=effect,end FAILURE_ACTION=exit, not FAILURE_AT=start FAILURE_ACTION=raise" in (
        capsys.readouterr().out
    )
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(hooked, target, "b1")) == 0


# --- whole releases on the time-skipping server -----------------------------------------------------


class AfterEveryEffect(FailureInjector):
    """Every step fails twice after its effect: attempt 1 once the effect is in place (no ledger
    line yet), attempt 2 once its ledger line is written; attempt 3 passes."""

    def __init__(self) -> None:
        super().__init__("alot", at=("effect", "end"))
        self.struck: Counter[str] = Counter()

    def maybe_fail(self, what: str, attempt: int, key: str = "", point: str = "start") -> None:
        if (point, attempt) in (("effect", 1), ("end", 2)):
            self.struck[point] += 1
            self.strike(f"simulated failure after {point}: {what}, attempt {attempt}")


async def run_release(env: WorkflowEnvironment, rm: ReleaseManagement, failures: FailureInjector | None) -> str:
    async with in_process_worker(env, rm, failures) as task_queue:
        result = await env.client.execute_workflow(
            ReleaseWorkflow.run,
            ReleaseRequest(release_key=KEY),
            id=f"release-{KEY}-{uuid.uuid4()}",
            task_queue=task_queue,
        )
    return result.status


async def test_a_clean_release_runs_each_step_once(
    ts_env: WorkflowEnvironment, rm: ReleaseManagement, tmp_path: Path
) -> None:
    with watch(tmp_path) as observer:
        assert await run_release(ts_env, rm, None) == "SUCCESS"
    assert landed(observer) == expected_landings()
    lines = step_lines(rm)
    # One line per step, from its first attempt: a step run twice by its activity shows here.
    assert len(lines) == STEPS
    assert {k: v for k, v in lines.items() if v != [(1, True)]} == {}


async def test_a_release_whose_steps_all_fail_after_their_effect_applies_each_once(
    ts_env: WorkflowEnvironment, rm: ReleaseManagement, tmp_path: Path
) -> None:
    failures = AfterEveryEffect()
    with watch(tmp_path) as observer:
        assert await run_release(ts_env, rm, failures) == "SUCCESS"
    assert failures.struck == {"effect": STEPS, "end": STEPS}
    # Every step ran three times, twice with its effect in place, yet landed once.
    assert landed(observer) == expected_landings()
    lines = step_lines(rm)
    assert len(lines) == STEPS
    assert {k: v for k, v in lines.items() if v != [(2, True), (3, False)]} == {}
    for env in ENVIRONMENTS:
        assert rm.contents(env) == ARTIFACTS


# --- a crash in the middle of a write ---------------------------------------------------------------


def crash(*args: object) -> None:
    raise OSError(errno.EIO, "simulated crash")


def crash_writing(at: str, folder: str, name: str) -> Callable[..., object]:
    """os.fsync or os.replace (at) failing only for the write of `name` into a folder whose path ends with folder:
    a crash or a full disk striking that write, the writes before it done."""
    real = getattr(os, at)

    def written(path: str) -> bool:
        tmp = Path(path)
        return tmp.parent.as_posix().endswith(folder) and tmp.name.startswith(f".{name}.")

    def struck(*args: object, **kwargs: object) -> object:
        fd_or_src = args[0]
        path = os.readlink(f"/proc/self/fd/{fd_or_src}") if isinstance(fd_or_src, int) else os.fspath(fd_or_src)
        if written(str(path)):
            crash()
        return real(*args, **kwargs)

    return struck


def upgrade(rm: ReleaseManagement) -> StepInput:
    """frontend 1.0 built, deployed to DEV and tested there; ALPHA-DEV's frontend 1.2 built, by another run."""
    for run, s in steps_of(rm)[:3]:
        run(s)
    new = next(d for d in rm.gather_deployments("RELEASE-JAN-24-ALPHA-DEV").deploys if d.container_id == "frontend")
    s = StepInput(release_key="RELEASE-JAN-24-ALPHA-DEV", run_id="run-2", deploy=new, env="DEV")
    rm.build(s)
    return s


def kept(dev: Path) -> dict[str, bytes]:
    """What run-2's deploy of frontend kept of DEV: what a rollback would give back."""
    return {p.name: p.read_bytes() for p in sorted((dev / ".rollback" / "run-2" / "frontend").iterdir())}


@pytest.mark.parametrize("at", ["fsync", "replace"])
def test_a_crash_while_deploying_a_new_version_leaves_the_old_one_whole(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    s = upgrade(rm)
    dev = tmp_path / "environments" / "DEV"
    old = (dev / "frontend-1.0").read_bytes()
    old_config = (dev / "config" / "frontend.json").read_bytes()
    lines = len(rm.ledger.entries())
    # Counted once the writer is done (stop() reads every event queued): an observer per attempt.
    with watch(tmp_path, "environments/DEV/.rollback") as crashed:
        with monkeypatch.context() as m:
            # The write of frontend-1.2 fails before it is in place, as a crash or a full disk would.
            m.setattr(os, at, crash_writing(at, "/environments/DEV", "frontend-1.2"))
            with pytest.raises(OSError, match="simulated crash"):
                rm.deploy(s)
    assert sorted(p.name for p in dev.iterdir()) == [".rollback", "config", "frontend-1.0"], (
        "half-written, or a temporary file"
    )
    assert (dev / "frontend-1.0").read_bytes() == old
    # The configuration still goes with the version in place, and nothing else is in its folder.
    assert [p.name for p in (dev / "config").iterdir()] == ["frontend.json"]
    assert json.loads((dev / "config" / "frontend.json").read_bytes())["artifact"] == "frontend-1.0"
    assert len(rm.ledger.entries()) == lines
    # What DEV held was kept first, whole; nothing landed under the target's name, even for a moment.
    assert kept(dev) == {"config.json": old_config, "frontend-1.0": old}
    assert landed(crashed) == {
        f"environments/DEV/.rollback/run-2/frontend/{n}": 1 for n in ("config.json", "frontend-1.0")
    }
    with watch(tmp_path, "environments/DEV/.rollback") as retried:
        assert rm.deploy(s, attempt=2).applied  # the retry, once the fault has passed
    assert rm.contents("DEV") == ["frontend-1.2"]
    assert json.loads((dev / "config" / "frontend.json").read_bytes())["artifact"] == "frontend-1.2"
    # The retry kept nothing again: what DEV held before the run, not what a first attempt left.
    assert kept(dev) == {"config.json": old_config, "frontend-1.0": old}
    assert landed(retried) == {"environments/DEV/frontend-1.2": 1, "environments/DEV/config/frontend.json": 1}


@pytest.mark.parametrize("at", ["fsync", "replace"])
@pytest.mark.parametrize("name", ["frontend-1.0", "config.json"])
def test_a_crash_while_keeping_what_the_environment_held_changes_nothing_and_the_retry_keeps_it_whole(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str, name: str
) -> None:
    s = upgrade(rm)
    dev = tmp_path / "environments" / "DEV"
    before = {p.name: p.read_bytes() for p in dev.iterdir() if p.is_file()}
    old_config = (dev / "config" / "frontend.json").read_bytes()
    lines = len(rm.ledger.entries())
    with watch(tmp_path, "environments/DEV/.rollback") as crashed:
        with monkeypatch.context() as m:
            m.setattr(os, at, crash_writing(at, ".partial", name))
            with pytest.raises(OSError, match="simulated crash"):
                rm.deploy(s)
    # DEV untouched; nothing kept under its final name (a hidden partial folder may stay behind).
    assert {p.name: p.read_bytes() for p in dev.iterdir() if p.is_file()} == before
    assert (dev / "config" / "frontend.json").read_bytes() == old_config
    assert [p.name for p in (dev / ".rollback" / "run-2").iterdir() if not p.name.startswith(".")] == []
    assert len(rm.ledger.entries()) == lines
    assert landed(crashed) == {}
    with watch(tmp_path, "environments/DEV/.rollback") as retried:
        assert rm.deploy(s, attempt=2).applied
    assert kept(dev) == {"config.json": old_config, "frontend-1.0": before["frontend-1.0"]}
    assert rm.contents("DEV") == ["frontend-1.2"]
    assert landed(retried) == {
        "environments/DEV/.rollback/run-2/frontend/config.json": 1,
        "environments/DEV/.rollback/run-2/frontend/frontend-1.0": 1,
        "environments/DEV/frontend-1.2": 1,
        "environments/DEV/config/frontend.json": 1,
    }


def test_a_crash_while_replacing_a_report_leaves_the_old_report_whole(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for run, s in steps_of(rm)[:3]:
        run(s)
    report = tmp_path / "artifactory" / "reports" / "frontend-1.0" / "DEV-unit.json"
    old = report.read_bytes()
    again = steps_of(rm)[2][1].model_copy(update={"run_id": "run-2"})  # another run replaces the report
    with monkeypatch.context() as m:
        m.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="simulated crash"):
            rm.test(again)
    assert report.read_bytes() == old
    assert sorted(p.name for p in report.parent.iterdir()) == ["DEV-health.json", "DEV-unit.json"]
