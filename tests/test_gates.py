"""Quality gates and the health check (orchestrator/gates.py): one report per check, verdicts a retry keeps,
FAILING_CHECKS, and a gate failure end to end (a real dev server, run_worker.py and run_workflow.py)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from orchestrator import worker_settings
from orchestrator.errors import NON_RETRYABLE_ERRORS, GateFailed, NotVerified, VerificationFailed
from orchestrator.settings import Settings, parse_failing_checks
from release_management import ReleaseManagement
from shared import ENVIRONMENTS, HEALTH, StepInput
from tests.conftest import CATALOG, REPO, target_of
from tests.observer import LandingObserver
from tests.steps import catalog_file, lines_of, mismatches, promote, step_of, through
from tests.support import WorkerProcess, run_python, run_script, script_env, stopped_at_the_end, task_queue
from workflows import ReleaseWorkflow

INITIAL = "RELEASE-NOV-23-INITIAL"
HOTFIX = "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"


# --- quality gates ---------------------------------------------------------------------------------------


def gated(tmp_path: Path, qc_checks: list[str], failing: set[tuple[str, str, str]]) -> ReleaseManagement:
    catalog = catalog_file(tmp_path, {"QC": {"checks": qc_checks}})
    return ReleaseManagement(tmp_path / "ws", catalog, failing_checks=frozenset(failing))


def report_files(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each report in folder: its inode, modification time and content (a rewrite changes one of them)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def test_a_gate_failure_is_reported_recorded_and_final_for_the_run(tmp_path: Path) -> None:
    rm = gated(tmp_path, ["performance", "security", "soak"], {("sbstore-1.0", "QC", "security")})
    workspace = tmp_path / "ws"
    qc = through(rm, INITIAL, "sbstore", ["DEV", "TEST"]).model_copy(update={"env": "QC"})
    rm.deploy(qc)
    reports = workspace / "artifactory" / "reports" / "sbstore-1.0"
    message = "^sbstore-1.0 failed security in QC: FAILING_CHECKS names sbstore-1.0:QC:security$"
    with LandingObserver(workspace, ["artifactory/reports/sbstore-1.0"]) as first:
        with pytest.raises(GateFailed, match=message):
            rm.test(qc, attempt=1)
    assert first.problem is None
    landed = {
        "artifactory/reports/sbstore-1.0/QC-performance.json": 1,
        "artifactory/reports/sbstore-1.0/QC-security.json": 1,
    }
    assert first.counts() == landed
    # The check after the failed one was never run, nor the health check: no report of them.
    assert sorted(p.name for p in reports.iterdir()) == [
        "DEV-health.json",
        "DEV-unit.json",
        "QC-performance.json",
        "QC-security.json",
        "TEST-health.json",
        "TEST-integration.json",
    ]
    failed = json.loads((reports / "QC-security.json").read_bytes())
    assert failed.pop("started_at") <= failed.pop("finished_at")
    assert failed == {
        "container": "sbstore",
        "version": "1.0",
        "environment": "QC",
        "check": "security",
        "passed": False,
        "findings": ["FAILING_CHECKS names sbstore-1.0:QC:security"],
        "release_key": INITIAL,
        "run_id": "run-1",
    }
    assert json.loads((reports / "QC-performance.json").read_bytes())["passed"] is True
    before = report_files(reports)

    # A retry of the same run: the verdict stands, even were the check to pass now; nothing is written.
    rm.failing_checks = frozenset()
    with LandingObserver(workspace, ["artifactory/reports/sbstore-1.0"]) as retry:
        with pytest.raises(GateFailed, match=message):
            rm.test(qc, attempt=2)
    assert retry.problem is None and retry.counts() == {}
    assert report_files(reports) == before

    tests = [
        (e["attempt"], e["applied"], e["passed"], e["failed_check"]) for e in lines_of(rm, "test", "QC", "sbstore")
    ]
    assert tests == [(1, True, False, "security"), (2, False, False, "security")]
    assert not rm.ledger.verified("sbstore", "1.0", "QC")
    with pytest.raises(NotVerified, match="^cannot deploy sbstore 1.0 to PROD: it never passed its tests in QC$"):
        rm.deploy(qc.model_copy(update={"env": "PROD"}))

    # Another run checks again, from the first check on, and its verdict replaces the reports.
    again = qc.model_copy(update={"run_id": "run-2"})
    assert rm.test(again).applied
    for name in ("QC-performance.json", "QC-security.json", "QC-soak.json", "QC-health.json"):
        body = json.loads((reports / name).read_bytes())
        assert (body["run_id"], body["passed"], body["findings"]) == ("run-2", True, [])
    last = lines_of(rm, "test", "QC", "sbstore")[-1]
    assert (last["run_id"], last["passed"], last["checks"]) == ("run-2", True, ["performance", "security", "soak"])
    assert "failed_check" not in last
    assert rm.deploy(again.model_copy(update={"env": "PROD"})).applied


def test_the_first_check_failing_runs_no_other(tmp_path: Path) -> None:
    rm = gated(tmp_path, ["performance", "security"], {("sbstore-1.0", "QC", "performance")})
    qc = through(rm, INITIAL, "sbstore", ["DEV", "TEST"]).model_copy(update={"env": "QC"})
    rm.deploy(qc)
    with pytest.raises(GateFailed, match="^sbstore-1.0 failed performance in QC: FAILING_CHECKS names "):
        rm.test(qc)
    reports = tmp_path / "ws" / "artifactory" / "reports" / "sbstore-1.0"
    assert sorted(p.name for p in reports.glob("QC-*")) == ["QC-performance.json"]


def test_a_passing_test_records_its_checks_and_a_retry_runs_none_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm = gated(tmp_path, ["performance", "security"], set())
    qc = through(rm, INITIAL, "frontend", ["DEV", "TEST"]).model_copy(update={"env": "QC"})
    rm.deploy(qc)
    ran: list[str] = []
    real = rm._simulated_check

    def counted(step: StepInput, check: str) -> tuple[bool, list[str]]:
        ran.append(check)
        return real(step, check)

    monkeypatch.setattr(rm, "_simulated_check", counted)
    assert rm.test(qc, attempt=1).applied
    assert not rm.test(qc, attempt=2).applied
    assert ran == ["performance", "security", "health"]
    lines = [(e["attempt"], e["applied"], e["passed"], e["checks"]) for e in lines_of(rm, "test", "QC", "frontend")]
    assert lines == [(1, True, True, ["performance", "security"]), (2, False, True, ["performance", "security"])]
    assert rm.ledger.verified("frontend", "1.0", "QC")


def test_an_environment_without_checks_runs_only_its_health_check_and_passes(tmp_path: Path) -> None:
    rm = gated(tmp_path, [], set())
    qc = through(rm, INITIAL, "frontend", ["DEV", "TEST", "QC"])
    reports = tmp_path / "ws" / "artifactory" / "reports" / "frontend-1.0"
    assert [p.name for p in reports.glob("QC-*")] == ["QC-health.json"]
    assert json.loads((reports / "QC-health.json").read_bytes())["passed"] is True
    (line,) = lines_of(rm, "test", "QC", "frontend")
    assert (line["passed"], line["checks"]) == (True, [])
    assert rm.deploy(qc.model_copy(update={"env": "PROD"})).applied


# --- the health check that follows every environment's checks -----------------------------------------------


def test_every_environment_runs_its_health_check_after_its_checks(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert HEALTH == "health"
    s = step_of(rm, INITIAL, "frontend", "DEV")
    ran: list[tuple[str, str]] = []
    real = rm._simulated_check

    def counted(step: StepInput, check: str) -> tuple[bool, list[str]]:
        ran.append((step.env, check))
        return real(step, check)

    monkeypatch.setattr(rm, "_simulated_check", counted)
    through(rm, INITIAL, "frontend", list(ENVIRONMENTS))
    assert ran == [
        ("DEV", "unit"),
        ("DEV", "health"),
        ("TEST", "integration"),
        ("TEST", "health"),
        ("QC", "performance"),
        ("QC", "security"),
        ("QC", "health"),
        ("PROD", "smoke"),
        ("PROD", "health"),
    ]
    reports = tmp_path / "artifactory" / "reports" / "frontend-1.0"
    for env in ENVIRONMENTS:
        health = json.loads((reports / f"{env}-health.json").read_bytes())
        assert health.pop("started_at") <= health.pop("finished_at")
        assert health == {
            "container": "frontend",
            "version": "1.0",
            "environment": env,
            "check": "health",
            "passed": True,
            "findings": [],
            "release_key": INITIAL,
            "run_id": s.run_id,
        }
    # The ledger's test lines name the catalog's checks; the health check follows them all.
    lines = [(e["env"], e["passed"], e["checks"]) for e in rm.ledger.entries() if e["step"] == "test"]
    assert lines == [
        ("DEV", True, ["unit"]),
        ("TEST", True, ["integration"]),
        ("QC", True, ["performance", "security"]),
        ("PROD", True, ["smoke"]),
    ]


def test_a_health_failure_is_reported_recorded_and_final_for_the_run(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG, failing_checks=frozenset({("sbstore-1.8", "QC", "health")}))
    promote(rm, ALPHA_DEV)
    qc = step_of(rm, ALPHA_QC, "sbstore", "TEST")
    rm.deploy(qc)
    rm.test(qc)
    qc = qc.model_copy(update={"env": "QC"})
    rm.deploy(qc)
    reports = tmp_path / "artifactory" / "reports" / "sbstore-1.8"
    message = "^sbstore-1.8 failed health in QC: FAILING_CHECKS names sbstore-1.8:QC:health$"
    with LandingObserver(tmp_path, ["artifactory/reports/sbstore-1.8"]) as first:
        with pytest.raises(VerificationFailed, match=message) as err:
            rm.test(qc, attempt=1)
    assert type(err.value).__name__ == "VerificationFailed" and "VerificationFailed" in NON_RETRYABLE_ERRORS
    assert not isinstance(err.value, GateFailed)
    # The quality gates ran and passed first; the health check after them, once.
    assert first.problem is None
    assert first.counts() == {
        f"artifactory/reports/sbstore-1.8/QC-{c}.json": 1 for c in ("performance", "security")
    } | {"artifactory/reports/sbstore-1.8/QC-health.json": 1}
    for check in ("performance", "security"):
        assert json.loads((reports / f"QC-{check}.json").read_bytes())["passed"] is True
    failed = json.loads((reports / "QC-health.json").read_bytes())
    assert failed.pop("started_at") <= failed.pop("finished_at")
    assert failed == {
        "container": "sbstore",
        "version": "1.8",
        "environment": "QC",
        "check": "health",
        "passed": False,
        "findings": ["FAILING_CHECKS names sbstore-1.8:QC:health"],
        "release_key": ALPHA_QC,
        "run_id": "run-1",
    }
    (line,) = lines_of(rm, "test", "QC", "sbstore")
    assert (line["attempt"], line["applied"], line["passed"], line["failed_check"]) == (1, True, False, "health")
    assert "checks" not in line and "retry" not in line
    before = report_files(reports)

    # A retry of the same run: the verdict stands, even were the check to pass now; nothing is written.
    rm.failing_checks = frozenset()
    with LandingObserver(tmp_path, ["artifactory/reports/sbstore-1.8"]) as retry:
        with pytest.raises(VerificationFailed, match=message):
            rm.test(qc, attempt=2)
    assert retry.problem is None and retry.counts() == {}
    assert report_files(reports) == before
    tests = [
        (e["attempt"], e["applied"], e["passed"], e["failed_check"]) for e in lines_of(rm, "test", "QC", "sbstore")
    ]
    assert tests == [(1, True, False, "health"), (2, False, False, "health")]
    # Not verified in QC: PROD refuses it; QC keeps what failed there (rolling back is the workflow's to decide).
    assert not rm.ledger.verified("sbstore", "1.8", "QC")
    prod = step_of(rm, ALPHA_PROD, "sbstore", "PROD")
    with pytest.raises(NotVerified, match="^cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC$"):
        rm.deploy(prod)
    assert "sbstore-1.8" in rm.contents("QC") and "sbstore-1.8" not in rm.contents("PROD")


def test_a_person_asked_retry_runs_every_check_anew_and_is_a_step_of_its_own(tmp_path: Path) -> None:
    rm = gated(tmp_path, ["performance", "security"], {("sbstore-1.0", "QC", "health")})
    reports = tmp_path / "ws" / "artifactory" / "reports" / "sbstore-1.0"
    qc = through(rm, INITIAL, "sbstore", ["DEV", "TEST"]).model_copy(update={"env": "QC"})
    rm.deploy(qc)
    with pytest.raises(VerificationFailed):
        rm.test(qc)
    first = report_files(reports)
    # A fix made outside, then a person's retry: the same run, a new try; every check of QC runs again.
    rm.failing_checks = frozenset()
    again = qc.model_copy(update={"retry": 1})
    assert rm.test(again, attempt=1).applied
    for check in ("performance", "security", "health"):
        body = json.loads((reports / f"QC-{check}.retry1.json").read_bytes())
        assert (body["run_id"], body["retry"], body["passed"]) == ("run-1", 1, True), check
        # The failed try's reports stay as they were, beside the new ones.
        assert report_files(reports)[f"QC-{check}.json"] == first[f"QC-{check}.json"], check
    # Temporal's retry of that try keeps its verdicts, and the try before keeps its own line.
    rm.failing_checks = frozenset({("sbstore-1.0", "QC", "security")})
    assert not rm.test(again, attempt=2).applied
    tests = [(e.get("retry"), e["attempt"], e["applied"], e["passed"]) for e in lines_of(rm, "test", "QC", "sbstore")]
    assert tests == [(None, 1, True, False), (1, 1, True, True), (1, 2, False, True)]
    assert rm.ledger.verified("sbstore", "1.0", "QC")
    # Each try keeps its own verdicts: the first try, run again by Temporal, still failed its health check.
    with pytest.raises(VerificationFailed, match="^sbstore-1.0 failed health in QC: "):
        rm.test(qc, attempt=3)


# --- FAILING_CHECKS ----------------------------------------------------------------------------------------


def test_failing_checks_are_parsed() -> None:
    assert parse_failing_checks("") == frozenset()
    assert parse_failing_checks(" , ,") == frozenset()
    assert parse_failing_checks(" sbstore-1.8:QC:security, frontend-1.0:dev:unit ,sbstore-1.8:QC:security,") == {
        ("sbstore-1.8", "QC", "security"),
        ("frontend-1.0", "DEV", "unit"),
    }
    # A container id may hold dashes: the version is what follows the last one.
    assert parse_failing_checks("back-end-2.0:PROD:smoke") == {("back-end-2.0", "PROD", "smoke")}
    # The health check after every environment's checks is named like one.
    assert parse_failing_checks("sbstore-1.8:qc:health, sbstore-1.8:QC:security") == {
        ("sbstore-1.8", "QC", "health"),
        ("sbstore-1.8", "QC", "security"),
    }


FORM = "is not <container>-<version>:<ENV>:<check> (say sbstore-1.8:QC:security)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sbstore-1.8:QC", f"FAILING_CHECKS: 'sbstore-1.8:QC' {FORM}"),
        ("sbstore-1.8:QC:security:x", f"FAILING_CHECKS: 'sbstore-1.8:QC:security:x' {FORM}"),
        ("sbstore:QC:security", f"FAILING_CHECKS: 'sbstore:QC:security' {FORM}"),
        (
            "Sb-1.8:QC:security",
            "FAILING_CHECKS: 'Sb-1.8:QC:security': container id 'Sb' is invalid: "
            "use lowercase letters, digits, '.', '_' and '-'",
        ),
        (
            "sbstore-x1:QC:security",
            "FAILING_CHECKS: 'sbstore-x1:QC:security': version 'x1' is invalid: "
            "start with a digit; letters, digits, '.', '_', '+'",
        ),
        (
            "sbstore-1.8:QC:Security",
            "FAILING_CHECKS: 'sbstore-1.8:QC:Security': check 'Security' is invalid: "
            "lowercase letters, digits, '_' and '-', at most 40, first a letter",
        ),
        ("sbstore-1.8:QC:", "FAILING_CHECKS: 'sbstore-1.8:QC:': a check needs a name"),
        (
            "sbstore-1.8:STAGE:security",
            "FAILING_CHECKS: 'sbstore-1.8:STAGE:security': no environment 'STAGE'; use DEV, TEST, QC, PROD",
        ),
        (",".join(f"a-1.{i}:QC:x" for i in range(101)), "FAILING_CHECKS names 101 checks; the limit is 100"),
    ],
    ids=[
        "two-parts",
        "four-parts",
        "no-version",
        "container",
        "version",
        "check",
        "no-check",
        "environment",
        "too-many",
    ],
)
def test_bad_failing_checks_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_failing_checks(value)
    assert str(err.value) == message
    monkeypatch.setenv("FAILING_CHECKS", value)
    with pytest.raises(ValueError) as err:
        Settings.from_env()
    assert str(err.value) == message


def test_a_long_bad_item_is_quoted_clipped() -> None:
    with pytest.raises(ValueError) as err:
        parse_failing_checks("x" * 5000 + "\n:QC:security")
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)


async def test_a_worker_with_bad_failing_checks_exits_2_with_one_line(tmp_path: Path) -> None:
    # Settings are checked before the worker connects: no server needed.
    base = script_env("127.0.0.1:1", tmp_path, task_queue())
    cases = {
        "sbstore-1.8:QC": f"error: FAILING_CHECKS: 'sbstore-1.8:QC' {FORM}\n",
        "sbstore-1.8:STAGE:security": (
            "error: FAILING_CHECKS: 'sbstore-1.8:STAGE:security': no environment 'STAGE'; use DEV, TEST, QC, PROD\n"
        ),
    }
    results = await asyncio.gather(
        *(run_python([str(REPO / "run_worker.py")], base | {"FAILING_CHECKS": bad}, 60, merge=False) for bad in cases)
    )
    for (bad, message), (code, out, err) in zip(cases.items(), results, strict=True):
        assert (code, out, err) == (2, "", message), bad


def test_failing_checks_show_in_a_workers_settings_only_when_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("FAILING_CHECKS", raising=False)
    plain = Settings.from_env()
    monkeypatch.setenv("FAILING_CHECKS", "sbstore-1.8:qc:security,frontend-1.0:DEV:unit")
    failing = Settings.from_env()
    assert failing.failing_checks == {("sbstore-1.8", "QC", "security"), ("frontend-1.0", "DEV", "unit")}
    target = {"target_host": "localhost:7233", "namespace": "default"}
    assert "FAILING_CHECKS" not in worker_settings.settings_line(worker_settings.settings_of(plain, target, "b1"))
    line = worker_settings.settings_line(worker_settings.settings_of(failing, target, "b1"))
    assert line.endswith(" FAILING_CHECKS=frontend-1.0:DEV:unit,sbstore-1.8:QC:security")
    (tmp_path / "worker.settings").write_text(line)
    (tmp_path / "worker.pid").write_text(str(os.getpid()))
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(plain, target, "b1")) == 1
    assert "with FAILING_CHECKS=frontend-1.0:DEV:unit,sbstore-1.8:QC:security, not" in capsys.readouterr().out
    assert worker_settings.check_running(str(tmp_path), worker_settings.settings_of(failing, target, "b1")) == 0


# --- end to end: a real dev server, run_worker.py and run_workflow.py ---------------------------------------


async def step_attempts(env: WorkflowEnvironment, workflow_id: str) -> dict[str, int]:
    """Each activity of a workflow by its id (`test sbstore-1.0 in QC`): the attempt of its last start."""
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    ids: dict[int, str] = {}
    attempts: dict[str, int] = {}
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            ids[event.event_id] = event.activity_task_scheduled_event_attributes.activity_id
        if event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            attempts[ids[started.scheduled_event_id]] = started.attempt
    return attempts


# Seed 13 (FAILURE_RATE=sometimes) strikes the first attempts of `test sbstore-1.0 in TEST` and
# `deploy sbstore-1.0 → QC`, not that of `test sbstore-1.0 in QC`: transient faults just before the gate.
GATE_SEED = "13"


@pytest.mark.slow(20)
async def test_a_gate_failure_fails_the_release_naming_the_check(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(
        target_of(dev_server),
        tmp_path,
        task_queue(),
        FAILING_CHECKS="sbstore-1.0:QC:security",
        FAILURE_RATE="sometimes",
        FAILURE_SEED=GATE_SEED,
    )
    with stopped_at_the_end([WorkerProcess(env, tmp_path / "worker.log").start()]):
        code, out = await run_script(["--release-key", INITIAL], env)
        state = await dev_server.client.get_workflow_handle(f"release-{INITIAL}").query(ReleaseWorkflow.progress)
    assert code == 1, out
    gate = "sbstore-1.0 failed security in QC: FAILING_CHECKS names sbstore-1.0:QC:security"
    result = out.strip().splitlines()[-1]
    assert result.startswith(f"Result: Release {INITIAL}: FAILED: GateFailed: {gate}; "), out
    assert state.status == "FAILED" and state.error is not None and state.error.startswith(gate)
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    assert (sbstore.cells["QC"].status, sbstore.cells["QC"].step) == ("failed", "test")
    # Not promoted any further: PROD saw no step of sbstore.
    assert sbstore.cells["PROD"].status in ("pending", "cancelled") and not sbstore.cells["PROD"].deployed
    assert sbstore.cells["PROD"].steps_done == 0

    # The transient faults were retried; the gate's verdict was not: one attempt, one ledger line.
    attempts = await step_attempts(dev_server, f"release-{INITIAL}")
    assert attempts["test sbstore-1.0 in TEST"] >= 2 and attempts["deploy sbstore-1.0 → QC"] >= 2, attempts
    assert attempts["test sbstore-1.0 in QC"] == 1, attempts
    assert "deploy sbstore-1.0 → PROD" not in attempts
    rm = ReleaseManagement(tmp_path, CATALOG)
    qc_tests = [(e["attempt"], e["passed"], e["failed_check"]) for e in lines_of(rm, "test", "QC", "sbstore")]
    assert qc_tests == [(1, False, "security")]
    assert lines_of(rm, "deploy", "PROD", "sbstore") == []

    # The failed report is there; PROD's smoke check never ran.
    reports = tmp_path / "artifactory" / "reports" / "sbstore-1.0"
    failed = json.loads((reports / "QC-security.json").read_bytes())
    assert (failed["passed"], failed["findings"]) == (False, ["FAILING_CHECKS names sbstore-1.0:QC:security"])
    assert not (reports / "PROD-smoke.json").exists()
    # PROD never saw sbstore; what each environment holds goes with its configuration.
    assert "sbstore-1.0" not in rm.contents("PROD")
    assert not (tmp_path / "environments" / "PROD" / "config" / "sbstore.json").exists()
    assert "sbstore-1.0" in rm.contents("QC")
    assert mismatches(tmp_path) == []
