"""Safe promotions: versions verified upstream, quality gates, configuration deployed with the artifact.

Plain Python against ReleaseManagement on a temporary workspace, except where a test says it runs
a release end to end: a real dev server, run_worker.py and run_workflow.py as subprocesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import ReleaseActivities
from orchestrator import ledger_index, worker_settings
from orchestrator.errors import NON_RETRYABLE_ERRORS, CatalogError, GateFailed, NotVerified, VerificationFailed
from orchestrator.ledger import Ledger
from orchestrator.settings import Settings, parse_failing_checks
from release_management import ReleaseManagement, render_config
from shared import ENVIRONMENTS, HEALTH, StepInput
from tests.conftest import CATALOG, REPO, target_of
from tests.observer import LandingObserver
from tests.support import WorkerProcess, run_python, run_script, script_env, stopped_at_the_end, task_queue
from tests.test_release_management import promote
from utils import EXIT_CODE, FailureInjector, SimulatedFailure
from workflows import ReleaseWorkflow

INITIAL = "RELEASE-NOV-23-INITIAL"
HOTFIX = "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"


def step_of(rm: ReleaseManagement, key: str, container: str, env: str, run: str = "run-1") -> StepInput:
    deploy = next(d for d in rm.gather_deployments(key).deploys if d.container_id == container)
    return StepInput(release_key=key, run_id=run, deploy=deploy, env=env)


def through(rm: ReleaseManagement, key: str, container: str, envs: list[str], run: str = "run-1") -> StepInput:
    """Run container's steps of release key in envs (build first if DEV is one); the last step input."""
    s = step_of(rm, key, container, envs[0], run)
    for env in envs:
        s = s.model_copy(update={"env": env})
        if env == "DEV":
            rm.build(s)
        rm.deploy(s)
        rm.test(s)
    return s


def catalog_file(tmp_path: Path, environments: dict[str, Any]) -> Path:
    """The real catalog with another environments section (its gates, configuration and freezes)."""
    catalog = json.loads(CATALOG.read_text())
    catalog["environments"] = environments
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def lines_of(rm: ReleaseManagement, step: str, env: str, container: str) -> list[dict[str, object]]:
    return [e for e in rm.ledger.entries() if (e["step"], e["env"], e["container"]) == (step, env, container)]


# --- refusals: a version is promoted only from where it passed its tests ---------------------------------


def test_prod_refuses_a_version_never_tested_in_qc_even_copied_there_by_hand(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    promote(rm, ALPHA_DEV)
    qc = step_of(rm, ALPHA_QC, "sbstore", "TEST")
    rm.deploy(qc)
    rm.test(qc)
    # Passed DEV and TEST; put into QC by hand, with a report that says it passed there.
    (tmp_path / "environments" / "QC").mkdir(parents=True)
    test_copy = (tmp_path / "environments" / "TEST" / "sbstore-1.8").read_bytes()
    (tmp_path / "environments" / "QC" / "sbstore-1.8").write_bytes(test_copy)
    forged = tmp_path / "artifactory" / "reports" / "sbstore-1.8" / "QC-security.json"
    forged.write_text(json.dumps({"passed": True, "run_id": "by-hand", "check": "security"}))
    prod = step_of(rm, ALPHA_PROD, "sbstore", "PROD")
    lines = len(rm.ledger.entries())
    with pytest.raises(NotVerified) as err:
        rm.deploy(prod)
    assert str(err.value) == "cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC"
    assert type(err.value).__name__ in NON_RETRYABLE_ERRORS
    assert not (tmp_path / "environments" / "PROD").exists(), "a refused deploy wrote something"
    assert len(rm.ledger.entries()) == lines
    # Deployed to QC by a release, not yet tested there: still refused.
    rm.deploy(qc.model_copy(update={"env": "QC"}))
    with pytest.raises(NotVerified, match="^cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC$"):
        rm.deploy(prod)
    rm.test(qc.model_copy(update={"env": "QC"}))
    assert rm.deploy(prod).applied


def test_dev_refuses_a_version_the_artifactory_never_built(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step_of(rm, INITIAL, "frontend", "DEV")
    # An artifact put into the artifactory by hand is not a build.
    (tmp_path / "artifactory").mkdir()
    (tmp_path / "artifactory" / "frontend-1.0").write_text("container: frontend\nversion: 1.0\n")
    with pytest.raises(NotVerified) as err:
        rm.deploy(s)
    assert str(err.value) == "cannot deploy frontend 1.0 to DEV: the artifactory never built it"
    assert rm.contents("DEV") == []
    # A build of another version or container proves nothing for this one.
    rm.build(step_of(rm, ALPHA_DEV, "frontend", "DEV"))
    rm.build(step_of(rm, INITIAL, "sbstore", "DEV"))
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to DEV: the artifactory never built it$"):
        rm.deploy(s)
    rm.build(s)
    assert rm.deploy(s).applied


def test_a_failed_gate_upstream_is_no_proof(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG, failing_checks=frozenset({("frontend-1.0", "TEST", "integration")}))
    s = through(rm, INITIAL, "frontend", ["DEV"])
    s = s.model_copy(update={"env": "TEST"})
    rm.deploy(s)
    with pytest.raises(GateFailed):
        rm.test(s)
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to QC: it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("QC") == []


@pytest.mark.parametrize("index", [True, False], ids=["index", "whole-ledger"])
def test_a_later_failure_takes_back_an_earlier_pass(tmp_path: Path, index: bool) -> None:
    """Passed in TEST by one run, then failed there in another: the latest verdict is the one that counts."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    s = through(rm, INITIAL, "frontend", ["DEV", "TEST"], run="run-1")
    assert rm.ledger.verified("frontend", "1.0", "TEST")
    failing = ReleaseManagement(tmp_path, CATALOG, failing_checks=frozenset({("frontend-1.0", "TEST", "integration")}))
    again = s.model_copy(update={"run_id": "run-2"})
    failing.deploy(again)
    with pytest.raises(GateFailed):
        failing.test(again)
    if not index:
        rm.ledger.index.path.unlink()
        rm.ledger.index.path.mkdir()  # no index to be had: the whole ledger answers
    assert not rm.ledger.verified("frontend", "1.0", "TEST")
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to QC: it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    # Passing again (a fix made outside) makes it a proof again.
    rm.test(s.model_copy(update={"run_id": "run-3"}))
    assert rm.ledger.verified("frontend", "1.0", "TEST")


def test_a_question_on_an_empty_workspace_creates_no_ledger(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    assert not rm.ledger.verified("frontend", "1.0", "QC")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_version_tested_in_qc_by_an_earlier_release_is_accepted(rm: ReleaseManagement) -> None:
    promote(rm, ALPHA_DEV, run="alpha-dev-run")
    promote(rm, ALPHA_QC, run="alpha-qc-run")
    # Another release, another run: the proof is the version's, whoever tested it.
    promote(rm, ALPHA_PROD, run="alpha-prod-run")
    assert rm.contents("PROD") == ["backendforfrontend-1.8", "frontend-1.2", "sbstore-1.8"]
    runs = {e["run_id"] for e in rm.ledger.entries() if e["step"] == "deploy" and e["env"] == "PROD"}
    assert runs == {"alpha-prod-run"}


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
        body = json.loads((reports / f"QC-{check}.json").read_bytes())
        assert (body["run_id"], body["retry"], body["passed"]) == ("run-1", 1, True), check
        assert report_files(reports)[f"QC-{check}.json"] != first[f"QC-{check}.json"], check
    # Temporal's retry of that try keeps its verdicts, and the try before keeps its own line.
    rm.failing_checks = frozenset({("sbstore-1.0", "QC", "security")})
    assert not rm.test(again, attempt=2).applied
    tests = [(e.get("retry"), e["attempt"], e["applied"], e["passed"]) for e in lines_of(rm, "test", "QC", "sbstore")]
    assert tests == [(None, 1, True, False), (1, 1, True, True), (1, 2, False, True)]
    assert rm.ledger.verified("sbstore", "1.0", "QC")
    # A report of another try of this run is not its verdict: the first try, run again, checks again.
    with pytest.raises(GateFailed, match="^sbstore-1.0 failed security in QC: "):
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


# --- configuration deployed with the artifact --------------------------------------------------------------


def config_of(workspace: Path, env: str, container: str) -> dict[str, Any]:
    return json.loads((workspace / "environments" / env / "config" / f"{container}.json").read_bytes())


def test_each_environment_gets_the_catalogs_configuration(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, INITIAL)
    expected = {
        "DEV": {"replicas": 1, "log_level": "debug", "endpoint": "https://sbstore.dev.mybiz.example"},
        "TEST": {"replicas": 1, "log_level": "info", "endpoint": "https://sbstore.test.mybiz.example"},
        "QC": {"replicas": 2, "log_level": "info", "endpoint": "https://sbstore.qc.mybiz.example"},
        "PROD": {"replicas": 3, "log_level": "warn", "endpoint": "https://sbstore.mybiz.example"},
    }
    for env in ENVIRONMENTS:
        assert config_of(tmp_path, env, "sbstore") == {
            "artifact": "sbstore-1.0",
            "container": "sbstore",
            "version": "1.0",
            "environment": env,
            "release_key": INITIAL,
            "values": expected[env],
        }
        names = sorted(p.name for p in (tmp_path / "environments" / env / "config").iterdir())
        assert names == ["backendforfrontend.json", "frontend.json", "sbstore.json"]


def test_placeholders_are_replaced_in_strings_only(tmp_path: Path) -> None:
    values = {
        "endpoint": "https://{container}.{env}.example/{version}",
        "twice": "{container}/{container}",
        "plain": "no placeholder, {other} kept",
        "replicas": 2,
        "ratio": 0.5,
        "debug": True,
        "owner": None,
    }
    catalog = catalog_file(tmp_path, {"DEV": {"config": values}, "TEST": {"checks": ["integration"]}})
    rm = ReleaseManagement(tmp_path / "ws", catalog)
    through(rm, INITIAL, "backendforfrontend", ["DEV", "TEST"])
    dev = config_of(tmp_path / "ws", "DEV", "backendforfrontend")
    assert dev["values"] == {
        "endpoint": "https://backendforfrontend.DEV.example/1.0",
        "twice": "backendforfrontend/backendforfrontend",
        "plain": "no placeholder, {other} kept",
        "replicas": 2,
        "ratio": 0.5,
        "debug": True,
        "owner": None,
    }
    # An environment with no configuration in the catalog still gets the file that names its artifact.
    test = config_of(tmp_path / "ws", "TEST", "backendforfrontend")
    assert (test["artifact"], test["values"]) == ("backendforfrontend-1.0", {})


def test_a_new_version_replaces_the_configuration(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, INITIAL)
    promote(rm, ALPHA_DEV)
    dev = config_of(tmp_path, "DEV", "frontend")
    assert (dev["artifact"], dev["version"], dev["release_key"]) == ("frontend-1.2", "1.2", ALPHA_DEV)
    assert config_of(tmp_path, "TEST", "frontend")["artifact"] == "frontend-1.0"
    assert sorted(p.name for p in (tmp_path / "environments" / "DEV" / "config").iterdir()) == [
        "backendforfrontend.json",
        "frontend.json",
        "sbstore.json",
    ]


def mismatches(workspace: Path) -> list[str]:
    """Every configuration that names an artifact its environment does not hold, or another container."""
    found = []
    for env in ENVIRONMENTS:
        folder = workspace / "environments" / env
        for config in sorted((folder / "config").glob("*.json")) if (folder / "config").is_dir() else []:
            body = json.loads(config.read_bytes())
            if not (folder / str(body["artifact"])).is_file() or body["container"] != config.stem:
                found.append(f"{env}/config/{config.name} names {body['artifact']}")
    return found


@contextmanager
def checked_after_every_change(workspace: Path) -> Iterator[list[str]]:
    """Check the configurations after every rename into place and every removal the steps make.

    Yields the list of what was seen changing; fails at the first change that leaves a
    configuration naming an artifact that is not there.
    """
    seen: list[str] = []
    real_replace, real_unlink = os.replace, os.unlink

    def check(what: str) -> None:
        seen.append(what)
        bad = mismatches(workspace)
        assert not bad, f"after {what}: {bad}"

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        real_replace(src, dst, *args, **kwargs)
        check(f"rename to {dst}")

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        real_unlink(path, *args, **kwargs)
        check(f"removal of {path}")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "replace", replace)
        m.setattr(os, "unlink", unlink)
        yield seen


def test_no_configuration_ever_names_an_absent_artifact(rm: ReleaseManagement, tmp_path: Path) -> None:
    """The releases in the catalog's order, the workspace checked after each file that lands or goes."""
    with checked_after_every_change(tmp_path) as seen:
        for key in (INITIAL, HOTFIX, "RELEASE-DEC-2023-BUGFIXES-PROD", ALPHA_DEV, ALPHA_QC, ALPHA_PROD):
            promote(rm, key, run=f"run-{key}")
    removals = [w for w in seen if w.startswith("removal of ") and "/environments/" in w]
    # 3 containers replaced in DEV, TEST and QC by HOTFIX, in PROD by DEC-2023, and so on by the ALPHAs.
    assert len(removals) == 3 * 4 * 2, removals
    assert any("/config/" in w for w in seen)
    for env in ENVIRONMENTS:
        held = rm.contents(env)
        assert sorted(config_of(tmp_path, env, a.rsplit("-", 1)[0])["artifact"] for a in held) == held


def test_the_old_artifact_goes_only_once_the_configuration_names_the_new_one(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    promote(rm, INITIAL)
    s = step_of(rm, ALPHA_DEV, "frontend", "DEV")
    rm.build(s)
    named_at_removal: list[object] = []
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "frontend-1.0":
            named_at_removal.append(config_of(tmp_path, "DEV", "frontend")["artifact"])
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    assert rm.deploy(s).applied
    assert named_at_removal == ["frontend-1.2"]


class Crash(Exception):
    """The worker dying at this point, as the code that was running sees it."""


def upgrade_frontend_in_dev(rm: ReleaseManagement) -> StepInput:
    """INITIAL everywhere, then ALPHA-DEV's frontend 1.2 built: its deploy to DEV replaces 1.0."""
    promote(rm, INITIAL)
    s = step_of(rm, ALPHA_DEV, "frontend", "DEV")
    rm.build(s)
    return s


def deploy_lines(rm: ReleaseManagement) -> list[tuple[object, object]]:
    return [(e["attempt"], e["applied"]) for e in lines_of(rm, "deploy", "DEV", "frontend") if e["version"] == "1.2"]


def test_a_crash_between_the_artifact_and_its_configuration_leaves_the_old_pair_whole(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    s = upgrade_frontend_in_dev(rm)
    struck: list[tuple[str, int]] = []

    def crash(verb: str, step: StepInput, attempt: int) -> None:
        struck.append((verb, attempt))
        raise Crash("died midway")

    rm.midway = crash
    with pytest.raises(Crash):
        rm.deploy(s, attempt=1)
    assert struck == [("deploy", 1)]
    # Both versions there; the configuration still names the old one, which is whole.
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.0", "frontend-1.2", "sbstore-1.0"]
    old = config_of(tmp_path, "DEV", "frontend")
    assert (old["artifact"], old["release_key"]) == ("frontend-1.0", INITIAL)
    assert (tmp_path / "environments" / "DEV" / "frontend-1.0").read_bytes() == (
        tmp_path / "environments" / "TEST" / "frontend-1.0"
    ).read_bytes()
    assert mismatches(tmp_path) == []
    assert deploy_lines(rm) == []
    # The retry completes the pair, then removes the old version.
    rm.midway = None
    assert rm.deploy(s, attempt=2).applied
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]
    assert config_of(tmp_path, "DEV", "frontend")["artifact"] == "frontend-1.2"
    assert deploy_lines(rm) == [(2, True)]


def test_failure_at_midway_strikes_a_deploy_activity_between_its_two_writes(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    s = upgrade_frontend_in_dev(rm)
    # Seed 2 strikes attempts 1 and 2 of this deploy at midway, not attempt 3.
    acts, env = ReleaseActivities(rm, FailureInjector("alot", seed=2, at=("midway",))), ActivityEnvironment()
    for attempt in (1, 2):
        env.info = dataclasses.replace(env.info, attempt=attempt)
        with pytest.raises(SimulatedFailure) as err:
            env.run(acts.deploy, s)
        assert str(err.value) == (
            "simulated failure (alot) between the artifact and its configuration: "
            f"deploy frontend-1.2 → DEV, attempt {attempt}"
        )
        assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.0", "frontend-1.2", "sbstore-1.0"]
        assert config_of(tmp_path, "DEV", "frontend")["artifact"] == "frontend-1.0"
    env.info = dataclasses.replace(env.info, attempt=3)
    assert env.run(acts.deploy, s).applied
    assert config_of(tmp_path, "DEV", "frontend")["artifact"] == "frontend-1.2"
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]
    # Only deploys have a midway: a test never strikes there.
    for attempt in (1, 2):
        env.info = dataclasses.replace(env.info, attempt=attempt)
        env.run(acts.test, s)


def test_a_crash_after_the_configuration_leaves_it_naming_an_artifact_that_is_there(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    s = upgrade_frontend_in_dev(rm)

    def crash(verb: str, step: StepInput, attempt: int) -> None:
        if attempt == 1:
            raise Crash("died after the effect")

    rm.after_effect = crash
    with pytest.raises(Crash):
        rm.deploy(s, attempt=1)
    assert config_of(tmp_path, "DEV", "frontend")["artifact"] == "frontend-1.2"
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]
    assert deploy_lines(rm) == []
    # Nothing left to change: the retry finds the work done, and claims it, no line claiming it yet.
    assert rm.deploy(s, attempt=2).applied
    assert deploy_lines(rm) == [(2, True)]
    assert mismatches(tmp_path) == []


def test_a_crash_before_the_old_version_goes_leaves_the_new_pair_beside_it(
    rm: ReleaseManagement, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = upgrade_frontend_in_dev(rm)
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "frontend-1.0":
            raise Crash("died before the old version went")
        real_unlink(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "unlink", unlink)
        with pytest.raises(Crash):
            rm.deploy(s)
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.0", "frontend-1.2", "sbstore-1.0"]
    assert config_of(tmp_path, "DEV", "frontend")["artifact"] == "frontend-1.2"
    assert rm.deploy(s, attempt=2).applied  # removes the old version: an effect of its own
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]


# --- the catalog: every bad entry named by file, release and field -----------------------------------------


def write_catalog(
    path: Path, environments: dict[str, Any] | None = None, release: dict[str, Any] | None = None
) -> None:
    catalog: dict[str, Any] = {
        "containers": {"frontend": "https://example.invalid/frontend"},
        "releases": [
            {"release_key": "R0", "environments": ["DEV"], "versions": {"frontend": "1.0"}},
            {"release_key": "R1", "environments": ["DEV"], "versions": {"frontend": "1.1"}, **(release or {})},
        ],
    }
    if environments is not None:
        catalog["environments"] = environments
    path.write_text(json.dumps(catalog))


ENVS = "the environments are DEV, TEST, QC, PROD"
HEALTH_TAKEN = "'health' is the health check that follows every environment's checks: name yours otherwise"


@pytest.mark.parametrize(
    ("environments", "problem"),
    [
        ({"STAGE": {}}, f"environments.STAGE: unknown environment 'STAGE'; {ENVS}"),
        (
            {"STAGE": {}, "QC": {"checks": [""]}},
            f"environments.STAGE: unknown environment 'STAGE'; {ENVS}; environments.QC.checks[0]: a check needs a name",
        ),
        ({"QC": {"checks": ["performance", ""]}}, "environments.QC.checks[1]: a check needs a name"),
        ({"QC": {"checks": ["performance", " "]}}, "environments.QC.checks[1]: a check needs a name"),
        (
            {"QC": {"checks": ["Perf"]}},
            "environments.QC.checks[0]: check 'Perf' is invalid: lowercase letters, digits, '_' and '-', "
            "at most 40, first a letter",
        ),
        ({"QC": {"checks": ["soak", "soak"]}}, "environments.QC.checks: check 'soak' is named twice"),
        ({"QC": {"checks": ["health"]}}, f"environments.QC.checks: {HEALTH_TAKEN}"),
        (
            {"PROD": {"checks": ["smoke"]}, "QC": {"checks": ["security", "health"]}},
            f"environments.QC.checks: {HEALTH_TAKEN}",
        ),
        (
            {"QC": {"checks": [f"c{i}" for i in range(11)]}},
            "environments.QC.checks: List should have at most 10 items after validation, not 11",
        ),
        (
            {"QC": {"config": {"Bad Key": 1}}},
            "environments.QC.config: configuration key 'Bad Key' is invalid: lowercase letters, digits, '_' and '-'",
        ),
        (
            {"QC": {"config": {f"k{i}": i for i in range(21)}}},
            "environments.QC.config: 21 configuration values; the limit is 20",
        ),
        (
            {"QC": {"config": {"k": "x" * 201}}},
            "environments.QC.config: configuration value k is 201 characters; the limit is 200",
        ),
        ({"QC": {"check": ["soak"]}}, "environments.QC.check: Extra inputs are not permitted"),
        (
            {"PROD": {"freeze": [{"start": "2024-12-20T16:00Z", "end": "2024-12-19T16:00Z"}]}},
            "environments.PROD.freeze[0]: the window ends (2024-12-19T16:00Z) before it starts (2024-12-20T16:00Z)",
        ),
        (
            {"PROD": {"freeze": [{"start": "Fri 25:00", "end": "Mon 08:00"}]}},
            "environments.PROD.freeze[0]: start 'Fri 25:00' is neither a date and time (2024-12-20T16:00Z) "
            "nor a weekly time (Fri 16:00)",
        ),
        (
            {"PROD": {"freeze": [{"start": "Fri 16:00", "end": "soon"}]}},
            "environments.PROD.freeze[0]: end 'soon' is neither a date and time (2024-12-20T16:00Z) "
            "nor a weekly time (Fri 16:00)",
        ),
        (
            {"PROD": {"freeze": [{"start": "Fri 16:00", "end": "2024-12-19T16:00Z"}]}},
            "environments.PROD.freeze[0]: start and end must both be weekly times (Fri 16:00) or both dates and times",
        ),
        (
            {"PROD": {"freeze": [{"start": "Fri 16:00", "end": "Fri 16:00"}]}},
            "environments.PROD.freeze[0]: the weekly window starts and ends at the same time (Fri 16:00)",
        ),
    ],
    ids=[
        "environment-key",
        "every-problem-at-once",
        "check-empty",
        "check-blank",
        "check-invalid",
        "check-twice",
        "check-health",
        "check-health-second",
        "checks-too-many",
        "config-key",
        "config-too-many",
        "config-value-long",
        "unknown-field",
        "freeze-ends-first",
        "freeze-bad-start",
        "freeze-bad-end",
        "freeze-mixed",
        "freeze-empty-week",
    ],
)
def test_a_bad_environments_section_is_named_by_file_and_field(
    tmp_path: Path, environments: dict[str, Any], problem: str
) -> None:
    """The section applies to every release: none can start while it is bad."""
    catalog = tmp_path / "c.json"
    write_catalog(catalog, environments)
    rm = ReleaseManagement(tmp_path / "ws", catalog)
    for read in (rm.catalog, rm.release_keys, lambda: rm.gather_deployments("R0")):
        with pytest.raises(CatalogError) as err:
            read()
        assert str(err.value) == f"release catalog {catalog} is invalid: {problem}"
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    ("environments", "problem"),
    [
        (["DEV", "STAGE"], f"environments[1]: unknown environment 'STAGE'; {ENVS}"),
        (
            ["STAGE", "NOPE"],
            f"environments[0]: unknown environment 'STAGE'; {ENVS}; "
            f"environments[1]: unknown environment 'NOPE'; {ENVS}",
        ),
        (
            ["DEV", "PROD"],
            "environments: DEV, PROD must be consecutive in the order DEV → TEST → QC → PROD (PROD needs QC before it)",
        ),
        (
            ["QC", "TEST"],
            "environments: QC, TEST must be consecutive in the order DEV → TEST → QC → PROD (PROD needs QC before it)",
        ),
    ],
    ids=["unknown", "two-unknown", "gap", "out-of-order"],
)
def test_a_bad_release_entry_is_named_by_file_release_and_field(
    tmp_path: Path, environments: list[str], problem: str
) -> None:
    """A release's own entry stops that release only, when it starts: the others still run."""
    catalog = tmp_path / "c.json"
    write_catalog(catalog, release={"environments": environments})
    rm = ReleaseManagement(tmp_path / "ws", catalog)
    assert rm.release_keys() == ["R0", "R1"]
    assert [d.container_id for d in rm.gather_deployments("R0").deploys] == ["frontend"]
    with pytest.raises(CatalogError) as err:
        rm.gather_deployments("R1")
    assert str(err.value) == f"release catalog {catalog} is invalid: release R1: {problem}"
    assert not (tmp_path / "ws").exists()


def test_the_shipped_catalog_is_valid_and_gathers_its_gates_and_configuration(rm: ReleaseManagement) -> None:
    catalog = rm.catalog()
    assert {env: catalog.checks(env) for env in ENVIRONMENTS} == {
        "DEV": ["unit"],
        "TEST": ["integration"],
        "QC": ["performance", "security"],
        "PROD": ["smoke"],
    }
    for key in rm.release_keys():
        release = rm.gather_deployments(key)
        for d in release.deploys:
            assert d.checks == {env: catalog.checks(env) for env in d.environments}
            assert set(d.config) == set(d.environments)


def test_a_deploy_gathered_before_quality_gates_runs_the_default_checks(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step_of(rm, INITIAL, "frontend", "DEV")
    old = s.model_copy(update={"deploy": s.deploy.model_copy(update={"checks": None, "config": {}})})
    rm.build(old)
    for env in ENVIRONMENTS:
        e = old.model_copy(update={"env": env})
        rm.deploy(e)
        rm.test(e)
        assert config_of(tmp_path, env, "frontend")["values"] == {}
    reports = sorted(p.name for p in (tmp_path / "artifactory" / "reports" / "frontend-1.0").iterdir())
    assert reports == [
        "DEV-health.json",
        "DEV-unit.json",
        "PROD-health.json",
        "PROD-smoke.json",
        "QC-health.json",
        "QC-performance.json",
        "QC-security.json",
        "TEST-health.json",
        "TEST-integration.json",
    ]
    assert (
        render_config(old.deploy, "DEV", INITIAL)
        == (tmp_path / "environments" / "DEV" / "config" / "frontend.json").read_bytes()
    )


# --- Ledger.verified: through the index, and through the whole ledger ---------------------------------------


def proof_lines() -> list[dict[str, object]]:
    def line(step: str, env: str | None, **extra: object) -> dict[str, object]:
        return {"run_id": "r", "deploy_key": f"K:{step}:{env}", "container": "frontend", "version": "1.0",
                "step": step, "env": env, "applied": True, **extra}  # fmt: skip

    return [
        line("build", "DEV"),
        line("test", "DEV", passed=True, checks=["unit"]),
        line("test", "TEST", passed=False, failed_check="integration"),
        line("test", "QC"),  # written before quality gates: no "passed", a test that passed
        line("deploy", "PROD"),  # deployed is not tested
        {**line("test", "PROD", passed=True), "version": "1.1"},
        {**line("approve", None), "approver": "alice"},
    ]


def answers(ledger: Ledger) -> dict[tuple[str, str, str], bool]:
    asked = [
        ("frontend", "1.0", "artifactory"),
        ("frontend", "1.0", "DEV"),
        ("frontend", "1.0", "TEST"),
        ("frontend", "1.0", "QC"),
        ("frontend", "1.0", "PROD"),
        ("frontend", "1.1", "PROD"),
        ("frontend", "1.1", "artifactory"),
        ("sbstore", "1.0", "artifactory"),
        ("sbstore", "1.0", "DEV"),
    ]
    return {q: ledger.verified(*q) for q in asked}


EXPECTED = {
    ("frontend", "1.0", "artifactory"): True,
    ("frontend", "1.0", "DEV"): True,
    ("frontend", "1.0", "TEST"): False,
    ("frontend", "1.0", "QC"): True,
    ("frontend", "1.0", "PROD"): False,
    ("frontend", "1.1", "PROD"): True,
    ("frontend", "1.1", "artifactory"): False,
    ("sbstore", "1.0", "artifactory"): False,
    ("sbstore", "1.0", "DEV"): False,
}


def written(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.path.write_bytes(b"".join((json.dumps(e) + "\n").encode() for e in proof_lines()))
    return ledger


def no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int) -> None:
        raise AssertionError("the whole ledger was read")

    monkeypatch.setattr(Ledger, "_read", staticmethod(refuse))


def test_verified_through_the_index_reads_no_whole_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = written(tmp_path)
    assert answers(ledger) == EXPECTED  # builds the index
    assert ledger.index.path.is_file()
    with monkeypatch.context() as m:
        no_whole_reads(m)
        assert answers(ledger) == EXPECTED
        assert answers(Ledger(ledger.path)) == EXPECTED
        # Proofs appended since are indexed as they are appended, or caught up on from the ledger's tail.
        ledger.record({"step": "build", "container": "sbstore", "version": "1.0", "run_id": "r", "env": "DEV"})
        with open(ledger.path, "ab") as f:  # as an older version of the code would append it
            f.write(
                json.dumps({"step": "test", "container": "sbstore", "version": "1.0", "env": "DEV"}).encode() + b"\n"
            )
        after = answers(Ledger(ledger.path))
    assert after == EXPECTED | {("sbstore", "1.0", "artifactory"): True, ("sbstore", "1.0", "DEV"): True}


@pytest.mark.parametrize("index", ["deleted", "a folder in its place", "held by another connection", "version 1"])
def test_verified_without_a_usable_index_answers_from_the_whole_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    ledger = written(tmp_path)
    assert answers(ledger) == EXPECTED
    index_files = [Path(f"{ledger.index.path}{s}") for s in ("", "-wal", "-shm")]
    other: sqlite3.Connection | None = None
    if index in ("deleted", "a folder in its place"):
        for p in index_files:
            p.unlink(missing_ok=True)
        if index == "a folder in its place":
            ledger.index.path.mkdir()
    elif index == "held by another connection":
        monkeypatch.setattr(type(ledger.index), "BUSY_TIMEOUT", 0.0)
        other = sqlite3.connect(ledger.index.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    else:
        # An index built before proofs existed: claims only; it must be built again, not trusted.
        with closing(sqlite3.connect(ledger.index.path, isolation_level=None)) as db:
            db.execute("DROP TABLE proofs")
            db.execute("PRAGMA user_version = 1")
    reads: list[int] = []
    real = Ledger._read

    def counted(fd: int) -> Any:
        reads.append(fd)
        return real(fd)

    try:
        with monkeypatch.context() as m:
            m.setattr(Ledger, "_read", staticmethod(counted))
            assert answers(Ledger(ledger.path)) == EXPECTED
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    rebuilt = index in ("deleted", "version 1")
    # Rebuilt: the index answers (built from the ledger's bytes); unusable: each question reads the whole ledger.
    assert (len(reads) == 0) == rebuilt, reads
    if rebuilt:
        with closing(sqlite3.connect(f"file:{ledger.index.path}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == ledger_index.ClaimIndex.VERSION
            assert db.execute("SELECT count(*) FROM proofs WHERE passed").fetchone()[0] == 4


def test_a_deploy_is_refused_or_allowed_alike_with_or_without_the_index(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    rm.ledger.index.path.mkdir()  # no index can be made: every check reads the whole ledger
    s = step_of(rm, INITIAL, "frontend", "DEV")
    with pytest.raises(NotVerified, match="the artifactory never built it$"):
        rm.deploy(s)
    through(rm, INITIAL, "frontend", ["DEV"])
    with pytest.raises(NotVerified, match="it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("DEV") == ["frontend-1.0"]


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


# Seed 56207 (FAILURE_RATE=alot at FAILURE_AT=midway) strikes the first attempt of HOTFIX-STAGE's
# `deploy sbstore-1.7 → DEV` and `deploy sbstore-1.7 → QC`, and no other first attempt. An exit also
# ends the steps in flight beside the struck one, whose next attempts draw anew: of the second
# attempts, only `deploy frontend-1.1 → TEST`'s strikes (simulated: 2 to 3 exits, 2.2 on average).
KILL_SEED = "56207"
STRUCK = re.compile(r"between the artifact and its configuration: deploy ([a-z]+)-([0-9.]+) → ([A-Z]+), attempt \d+")


@pytest.mark.slow(35)
async def test_a_worker_killed_between_the_artifact_and_its_configuration(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    # Every environment holds INITIAL's versions: HOTFIX-STAGE's deploys replace them.
    rm = ReleaseManagement(tmp_path, CATALOG)
    promote(rm, INITIAL, run="initial")
    base = script_env(target_of(dev_server), tmp_path, task_queue())
    exiting = base | {
        "FAILURE_AT": "midway",
        "FAILURE_ACTION": "exit",
        "FAILURE_RATE": "alot",
        "FAILURE_SEED": KILL_SEED,
    }
    log = tmp_path / "worker.log"
    exits: list[tuple[str, str, str]] = []
    with stopped_at_the_end([WorkerProcess(exiting, log).start()]) as workers:
        release = asyncio.create_task(run_script(["--release-key", HOTFIX], base, limit=240))
        while True:
            proc = workers[-1].proc
            assert proc is not None
            died = asyncio.create_task(asyncio.to_thread(proc.wait))
            async with asyncio.timeout(120):
                await asyncio.wait({died, release}, return_when=asyncio.FIRST_COMPLETED)
            if not died.done():
                break
            assert died.result() == EXIT_CODE, log.read_text()[-3000:]
            assert len(exits) < 10, "the worker keeps dying"
            # The worker is dead, so the workspace is as the exit left it: the old pair beside the new artifact.
            container, version, env = STRUCK.findall(log.read_text())[len(exits)]
            exits.append((container, version, env))
            held = rm.contents(env)
            old = next(a for a in held if a.startswith(f"{container}-") and a != f"{container}-{version}")
            assert f"{container}-{version}" in held, held
            assert config_of(tmp_path, env, container)["artifact"] == old
            assert mismatches(tmp_path) == []
            workers.append(WorkerProcess(exiting, log).start())
        code, out = await release
    assert code == 0 and f"Result: Release {HOTFIX}: SUCCESS" in out, out
    # The seed's strikes, at least (a strike kills steps in flight beside it, whose next attempts draw anew).
    assert {("sbstore", "1.7", "DEV"), ("sbstore", "1.7", "QC")} <= set(exits), exits
    expected = {"DEV": ["1.1", "1.7", "1.7"], "TEST": ["1.1", "1.7", "1.7"], "QC": ["1.1", "1.7", "1.7"]}
    expected["PROD"] = ["1.0", "1.0", "1.0"]
    for env, (frontend, sbstore, bff) in expected.items():
        held = [f"backendforfrontend-{bff}", f"frontend-{frontend}", f"sbstore-{sbstore}"]
        assert rm.contents(env) == held, env
        configs = {c: config_of(tmp_path, env, c) for c in ("backendforfrontend", "frontend", "sbstore")}
        assert sorted(c["artifact"] for c in configs.values()) == held, env
        key = HOTFIX if env != "PROD" else INITIAL
        assert {c["release_key"] for c in configs.values()} == {key}, env
    # One applied deploy per container and environment, however often the worker died in one.
    applied = [
        (e["container"], e["env"])
        for e in rm.ledger.entries()
        if e["release_key"] == HOTFIX and e["step"] == "deploy" and e["applied"]
    ]
    assert sorted(applied) == sorted(
        (c, e) for c in ("backendforfrontend", "frontend", "sbstore") for e in expected if e != "PROD"
    )
