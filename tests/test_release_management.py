"""The release management system on its own, in a temporary workspace, and the activities that run its steps."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities import ReleaseActivities
from orchestrator.catalog import Catalog
from orchestrator.errors import (
    NON_RETRYABLE_ERRORS,
    CatalogError,
    GateFailed,
    InvalidStep,
    MissingArtifact,
    NotVerified,
    UnknownRelease,
    VerificationFailed,
)
from release_management import ReleaseManagement
from shared import DecisionRecord, DeployInfo, ReleaseRequest, StepInput, StepResult
from tests.conftest import CATALOG
from tests.steps import promote
from utils import FailureInjector, SimulatedFailure

RUN = "run-1"


def step(rm: ReleaseManagement, key: str, container: str, env: str, run: str = RUN) -> StepInput:
    deploy = next(d for d in rm.gather_deployments(key).deploys if d.container_id == container)
    return StepInput(release_key=key, run_id=run, deploy=deploy, env=env)


def test_gather_deployments_reads_the_catalog(rm: ReleaseManagement) -> None:
    release = rm.gather_deployments("RELEASE-NOV-23-HOTFIX-STAGE")
    assert release.release_date.isoformat() == "2023-11-24"
    assert {(d.container_id, d.version) for d in release.deploys} == {
        ("frontend", "1.1"),
        ("sbstore", "1.7"),
        ("backendforfrontend", "1.7"),
    }
    frontend = next(d for d in release.deploys if d.container_id == "frontend")
    assert frontend.deploy_key == "RELEASE-NOV-23-HOTFIX-STAGE:frontend"
    assert frontend.git_url == "https://github.com/mybiz/coolfrontend"
    assert frontend.environments == ["DEV", "TEST", "QC"]
    assert rm.gather_release_approval(release).unapproved_deploys == []


def test_unknown_release_key_names_the_known_ones(rm: ReleaseManagement) -> None:
    with pytest.raises(UnknownRelease, match="unknown release key 'NOPE'; known keys: RELEASE-NOV-23-INITIAL"):
        rm.gather_deployments("NOPE")


def test_build_writes_the_artifact(rm: ReleaseManagement, tmp_path: Path) -> None:
    assert rm.build(step(rm, "RELEASE-NOV-23-INITIAL", "sbstore", "DEV")) == ("sbstore-1.0", True)
    text = (tmp_path / "artifactory" / "sbstore-1.0").read_text()
    assert "release: RELEASE-NOV-23-INITIAL" in text
    assert "git: https://github.com/mybiz/sbstore.git" in text


def test_each_promotion_takes_from_the_environment_before(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    with pytest.raises(NotVerified, match=r"^cannot deploy frontend 1.0 to DEV: the artifactory never built it$"):
        rm.deploy(s)
    rm.build(s)
    # Built, as the ledger says, but the file is gone from the artifactory: nothing to copy.
    artifact = tmp_path / "artifactory" / "frontend-1.0"
    content = artifact.read_bytes()
    artifact.unlink()
    with pytest.raises(
        MissingArtifact, match=r"^cannot deploy frontend 1.0 to DEV: the artifactory does not hold frontend-1.0$"
    ):
        rm.deploy(s)
    artifact.write_bytes(content)
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert rm.deploy(s.model_copy(update={"env": env})) == ("frontend-1.0", True)
        assert rm.contents(env) == ["frontend-1.0"]
        assert rm.test(s.model_copy(update={"env": env})) == ("frontend-1.0", True)


def test_a_promotion_takes_from_the_environment_just_before_not_from_dev(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    rm.build(s)
    rm.deploy(s)
    rm.test(s)
    in_test = s.model_copy(update={"env": "TEST"})
    rm.deploy(in_test)
    rm.test(in_test)
    tested = tmp_path / "environments" / "TEST" / "frontend-1.0"
    content = tested.read_bytes()
    # Tested in TEST (the ledger says so), yet gone from it: DEV still holds it, but QC takes only from TEST.
    tested.unlink()
    with pytest.raises(MissingArtifact, match=r"^cannot deploy frontend 1.0 to QC: TEST does not hold frontend-1.0$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("QC") == []
    # TEST's copy, changed after its tests: not the bytes that passed there, though DEV still holds those.
    tested.write_bytes(content + b"changed in TEST")
    with pytest.raises(
        NotVerified, match=r"^cannot deploy frontend 1.0 to QC: the bytes in TEST are not the build that passed there$"
    ):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("QC") == []
    tested.write_bytes(content)
    rm.deploy(s.model_copy(update={"env": "QC"}))
    assert (tmp_path / "environments" / "QC" / "frontend-1.0").read_bytes() == content


def test_promotion_without_source_fails_clearly(rm: ReleaseManagement, tmp_path: Path) -> None:
    with pytest.raises(NotVerified, match=r"^cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC$"):
        rm.deploy(step(rm, "RELEASE-JAN-24-ALPHA-PROD", "sbstore", "PROD"))
    promote(rm, "RELEASE-JAN-24-ALPHA-DEV")
    promote(rm, "RELEASE-JAN-24-ALPHA-QC")
    # Passed its tests in QC, then removed from it: the ledger's word is not a file to copy.
    (tmp_path / "environments" / "QC" / "sbstore-1.8").unlink()
    with pytest.raises(MissingArtifact, match=r"^cannot deploy sbstore 1.8 to PROD: QC does not hold sbstore-1.8$"):
        rm.deploy(step(rm, "RELEASE-JAN-24-ALPHA-PROD", "sbstore", "PROD"))
    assert rm.contents("PROD") == []


def test_test_step_needs_the_deployed_artifact(rm: ReleaseManagement) -> None:
    with pytest.raises(MissingArtifact, match="cannot test frontend 1.0 in QC"):
        rm.test(step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "QC"))


def test_deploy_replaces_the_previous_version_only(rm: ReleaseManagement) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    promote(rm, "RELEASE-JAN-24-ALPHA-DEV")
    assert rm.contents("DEV") == ["backendforfrontend-1.8", "frontend-1.2", "sbstore-1.8"]
    assert rm.contents("TEST") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]


def applied_lines(rm: ReleaseManagement) -> list[tuple[object, ...]]:
    return [(e["run_id"], e["step"], e["env"]) for e in rm.ledger.entries() if e["applied"] is True]


def test_repeated_steps_change_nothing_and_every_execution_is_recorded(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    assert [rm.build(s, attempt=1), rm.deploy(s, attempt=1), rm.test(s, attempt=1)] == [("frontend-1.0", True)] * 3
    deployed = tmp_path / "environments" / "DEV" / "frontend-1.0"
    before = deployed.stat().st_mtime_ns
    assert [rm.build(s, attempt=2), rm.deploy(s, attempt=2), rm.test(s, attempt=2)] == [("frontend-1.0", False)] * 3
    assert deployed.stat().st_mtime_ns == before
    assert rm.contents("DEV") == ["frontend-1.0"]
    # Retries are visible, not erased: two lines per step, one of them applied.
    assert [(e["step"], e["attempt"], e["applied"]) for e in rm.ledger.entries()] == [
        ("build", 1, True),
        ("deploy", 1, True),
        ("test", 1, True),
        ("build", 2, False),
        ("deploy", 2, False),
        ("test", 2, False),
    ]
    # Another run of the same release is another set of steps.
    assert rm.test(s.model_copy(update={"run_id": "run-2"})) == ("frontend-1.0", True)
    assert applied_lines(rm) == [
        (RUN, "build", "DEV"),
        (RUN, "deploy", "DEV"),
        (RUN, "test", "DEV"),
        ("run-2", "test", "DEV"),
    ]


def test_step_lines_say_when_the_work_began_and_ended(rm: ReleaseManagement) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    rm.build(s, attempt=3)
    (line,) = rm.ledger.entries()
    assert set(line) == {
        "release_key",
        "run_id",
        "deploy_key",
        "container",
        "version",
        "step",
        "env",
        "attempt",
        "started_at",
        "at",
        "applied",
        "sha256",
        "prev",
    }
    assert (line["container"], line["version"], line["attempt"]) == ("frontend", "1.0", 3)
    assert line["sha256"] == hashlib.sha256((rm.artifactory / "frontend-1.0").read_bytes()).hexdigest()
    assert line["prev"] == ""  # the ledger's first line
    started, ended = (datetime.fromisoformat(str(line[k])) for k in ("started_at", "at"))
    assert started.utcoffset() == timedelta(0) and started <= ended


def test_a_crash_between_effect_and_ledger_line_is_claimed_by_the_next_execution(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    rm.build(s)
    rm.deploy(s)
    rm.test(s)
    # The effects are in place but the process died before their lines reached the ledger.
    (tmp_path / "ledger.jsonl").unlink()
    assert [rm.build(s, attempt=2), rm.deploy(s, attempt=2), rm.test(s, attempt=2)] == [("frontend-1.0", True)] * 3
    assert [rm.build(s, attempt=3), rm.deploy(s, attempt=3), rm.test(s, attempt=3)] == [("frontend-1.0", False)] * 3
    assert applied_lines(rm) == [(RUN, "build", "DEV"), (RUN, "deploy", "DEV"), (RUN, "test", "DEV")]
    assert len(rm.ledger.entries()) == 6


def test_a_deploy_that_only_removes_the_old_version_applies_the_step(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    s = step(rm, "RELEASE-JAN-24-ALPHA-DEV", "frontend", "DEV")
    rm.build(s)
    # A crash after the new file landed, before the old one went: both are there, no line yet.
    dev = tmp_path / "environments" / "DEV"
    (dev / "frontend-1.2").write_bytes((tmp_path / "artifactory" / "frontend-1.2").read_bytes())
    assert rm.deploy(s) == ("frontend-1.2", True)
    assert rm.deploy(s, attempt=2) == ("frontend-1.2", False)
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]
    deploys = [e for e in rm.ledger.entries() if e["step"] == "deploy" and e["version"] == "1.2"]
    assert [e["applied"] for e in deploys] == [True, False]


def test_the_test_step_writes_a_report_per_run(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "sbstore", "DEV")
    rm.build(s)
    rm.deploy(s)
    rm.test(s)
    path = tmp_path / "artifactory" / "reports" / "sbstore-1.0" / "DEV-unit.json"
    health = path.with_name("DEV-health.json")
    # The catalog's check, then the health check that follows every environment's checks.
    assert sorted(p.name for p in path.parent.iterdir()) == ["DEV-health.json", "DEV-unit.json"]
    assert json.loads(health.read_text())["check"] == "health"
    report = json.loads(path.read_text())
    assert {k: v for k, v in report.items() if not k.endswith("_at")} == {
        "container": "sbstore",
        "version": "1.0",
        "environment": "DEV",
        "check": "unit",
        "passed": True,
        "findings": [],
        "release_key": "RELEASE-NOV-23-INITIAL",
        "run_id": RUN,
    }
    assert report["started_at"] <= report["finished_at"]
    health_report = json.loads(health.read_text())
    rm.test(s, attempt=2)
    assert json.loads(path.read_text()) == report  # the same run's report stands
    assert json.loads(health.read_text()) == health_report
    assert rm.test(s.model_copy(update={"run_id": "run-2"})).applied
    assert json.loads(path.read_text())["run_id"] == "run-2"
    assert json.loads(health.read_text())["run_id"] == "run-2"


def test_no_temporary_files_are_left_behind(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    promote(rm, "RELEASE-JAN-24-ALPHA-DEV", run="run-2")
    # Hidden: only the folders in which deploys keep what an environment held before them.
    hidden = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob(".*"))
    assert hidden == [f"environments/{env}/.rollback" for env in ("DEV", "PROD", "QC", "TEST")]
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")] == []


def kept(tmp_path: Path, env: str, run: str, container: str) -> dict[str, bytes]:
    folder = tmp_path / "environments" / env / ".rollback" / run / container
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_deploy_keeps_what_its_environment_held_before_once_per_run(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    dev = tmp_path / "environments" / "DEV"
    # INITIAL found every environment empty: it kept nothing, in a folder of its own per container.
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert sorted(p.name for p in (tmp_path / "environments" / env / ".rollback" / RUN).iterdir()) == [
            "backendforfrontend",
            "frontend",
            "sbstore",
        ]
        assert kept(tmp_path, env, RUN, "frontend") == {}
    old = {
        "frontend-1.0": (dev / "frontend-1.0").read_bytes(),
        "config.json": (dev / "config/frontend.json").read_bytes(),
    }
    s = step(rm, "RELEASE-JAN-24-ALPHA-DEV", "frontend", "DEV", run="run-2")
    rm.build(s)
    assert rm.deploy(s).applied
    assert kept(tmp_path, "DEV", "run-2", "frontend") == old
    assert sorted(p.name for p in (dev / ".rollback" / "run-2").iterdir()) == ["frontend"]
    # A retry of the deploy, DEV holding 1.2 by now, keeps what was there before the run, not what is.
    assert not rm.deploy(s, attempt=2).applied
    assert kept(tmp_path, "DEV", "run-2", "frontend") == old
    # The kept copies are not what DEV holds: contents() leaves the hidden folder out.
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.2", "sbstore-1.0"]


def test_a_rollback_gives_back_exactly_what_the_run_found_and_is_recorded(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    dev = tmp_path / "environments" / "DEV"
    before = {
        "frontend-1.0": (dev / "frontend-1.0").read_bytes(),
        "config": (dev / "config/frontend.json").read_bytes(),
    }
    s = step(rm, "RELEASE-JAN-24-ALPHA-DEV", "frontend", "DEV", run="run-2")
    rm.build(s)
    rm.deploy(s)
    assert rm.rollback(s, by="alice") == ("frontend-1.0", True)
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
    assert (dev / "frontend-1.0").read_bytes() == before["frontend-1.0"]
    assert (dev / "config/frontend.json").read_bytes() == before["config"]
    assert rm.rollback(s, attempt=2, by="alice") == ("frontend-1.0", False)
    lines = [e for e in rm.ledger.entries() if e["step"] == "rollback"]
    assert [(e["env"], e["version"], e["attempt"], e["applied"], e["by"]) for e in lines] == [
        ("DEV", "1.2", 1, True, "alice"),
        ("DEV", "1.2", 2, False, "alice"),
    ]
    assert (lines[0]["restored"]["version"], lines[0]["restored"]["release_key"]) == ("1.0", "RELEASE-NOV-23-INITIAL")
    # INITIAL's own deploy into DEV found it empty: rolled back, DEV holds no frontend, nor its config.
    first = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    assert rm.rollback(first) == ("", True)
    assert rm.contents("DEV") == ["backendforfrontend-1.0", "sbstore-1.0"]
    assert not (dev / "config/frontend.json").exists()
    # A run that never deployed there has nothing to give back, and records nothing.
    lines_before = len(rm.ledger.entries())
    assert rm.rollback(s.model_copy(update={"run_id": "run-3"})) == ("", False)
    assert len(rm.ledger.entries()) == lines_before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("container_id", "../x", "container id '../x' is invalid"),
        ("container_id", "a/b", "container id 'a/b' is invalid"),
        ("container_id", "", "container id '' is invalid"),
        ("version", "../../etc", "version '../../etc' is invalid"),
        ("version", "1.0-rc1", "version '1.0-rc1' is invalid"),
        # Accepted by the patterns alone; refused by the '..' rule.
        ("container_id", "a..b", "container id 'a..b' is invalid"),
        ("version", "1..2", "version '1..2' is invalid"),
        ("environments", ["STAGING"], "environments.0"),
        ("environments", [], "environments"),
        ("environments", ["DEV", "PROD"], "must be consecutive"),
        ("environments", ["TEST", "PROD"], "PROD needs QC before it"),
        ("environments", ["QC", "TEST"], "must be consecutive"),
        ("deploy_key", "", "deploy_key"),
    ],
)
def test_bad_deploys_are_rejected(field: str, value: object, message: str) -> None:
    good = {
        "deploy_key": "K:frontend",
        "container_id": "frontend",
        "version": "1.0",
        "git_url": "https://example.invalid/frontend",
        "environments": ["DEV", "TEST", "QC", "PROD"],
    }
    DeployInfo(**good)
    with pytest.raises(ValidationError, match=message):
        DeployInfo(**{**good, field: value})


def test_bad_release_keys_are_rejected() -> None:
    for key in ("", "../x", "a b", "x/y", "R..1"):
        with pytest.raises(ValidationError, match="release key"):
            ReleaseRequest(release_key=key)


def test_a_bad_container_id_in_the_catalog_is_a_catalog_error(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    for container in ("../escape", "a..b"):
        catalog.write_text(
            json.dumps(
                {
                    "containers": {container: "https://example.invalid/x"},
                    "releases": [{"release_key": "R", "environments": ["DEV"], "versions": {container: "1.0"}}],
                }
            )
        )
        with pytest.raises(CatalogError, match=f"container id '{re.escape(container)}' is invalid"):
            ReleaseManagement(tmp_path / "ws", catalog).gather_deployments("R")


@pytest.mark.parametrize(
    ("container", "version", "env", "message"),
    [
        ("../escape", "1.0", "DEV", "container id '../escape' is invalid"),
        ("a..b", "1.0", "DEV", "container id 'a..b' is invalid"),
        ("frontend", "1..2", "DEV", "version '1..2' is invalid"),
        ("frontend", "1.0", "../../..", "env: Input should be"),
    ],
)
def test_a_bad_container_id_never_writes_outside_the_workspace(
    tmp_path: Path, container: str, version: str, env: str, message: str
) -> None:
    """A client that skips validation can send a step with a bad id: each step checks it again, and writes nothing."""
    workspace = tmp_path / "ws"
    rm = ReleaseManagement(workspace, CATALOG)
    # Sources in place wherever the unchecked names point, so only the check stops each step.
    name = f"{container}-{version}"
    for source in (workspace / "artifactory" / name, workspace / "environments" / "DEV" / name):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("planted")
    before = snapshot(tmp_path)
    deploy = DeployInfo.model_construct(
        deploy_key=f"R:{container}",
        container_id=container,
        version=version,
        git_url="https://example.invalid/x",
        environments=["DEV"],
        approved=True,
    )
    s = StepInput.model_construct(release_key="R", run_id=RUN, deploy=deploy, env=env)
    for run in (rm.build, rm.deploy, rm.test):
        with pytest.raises(InvalidStep, match=f"^refusing to {run.__name__}: .*{re.escape(message)}"):
            run(s)
    assert snapshot(tmp_path) == before, "a step wrote something"


def snapshot(folder: Path) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_a_broken_catalog_is_reported_in_one_line(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{not json")
    with pytest.raises(CatalogError, match="is invalid") as err:
        ReleaseManagement(tmp_path, catalog).release_keys()
    assert "\n" not in str(err.value)
    with pytest.raises(CatalogError, match="cannot read release catalog"):
        ReleaseManagement(tmp_path, tmp_path / "missing.json").release_keys()


def release_entry(key: str) -> dict[str, object]:
    return {"release_key": key, "environments": ["DEV"], "versions": {"frontend": "1.0"}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"containers": {}, "releases": [\xff]}', r"is not UTF-8: invalid byte at offset 32$"),
        (json.dumps({"containers": {}, "releases": []}).encode(), "lists no releases$"),
        (
            json.dumps(
                {
                    "containers": {"frontend": "g"},
                    "releases": [release_entry("R1"), release_entry("R2"), release_entry("R1")],
                }
            ).encode(),
            "lists release 'R1' more than once$",
        ),
        (b"[" * 100_000, "is invalid: Invalid JSON: recursion limit exceeded"),
    ],
    ids=["not-utf8", "empty", "duplicate-key", "absurd-nesting"],
)
def test_a_bad_catalog_is_a_catalog_error_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_bytes(content)
    rm = ReleaseManagement(tmp_path, catalog)
    for read in (rm.release_keys, lambda: rm.gather_deployments("R1")):
        with pytest.raises(CatalogError, match=message) as err:
            read()
        assert str(err.value).startswith(f"release catalog {catalog} ")
        assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_any_other_failure_to_parse_the_catalog_is_a_catalog_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(_: str) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(Catalog, "model_validate_json", explode)
    with pytest.raises(CatalogError, match=r"release catalog .*releases.json cannot be read: RecursionError$"):
        ReleaseManagement(tmp_path, CATALOG).catalog()


def test_a_release_key_over_the_limit_is_refused_without_echoing_it(rm: ReleaseManagement) -> None:
    key = "R" * 10_000
    with pytest.raises(UnknownRelease, match="is 10000 characters long; the limit is 100; known keys: RELEASE-") as err:
        rm.gather_deployments(key)
    assert len(str(err.value)) < 500


def test_approvals_are_recorded_once_however_often_the_activity_runs(rm: ReleaseManagement) -> None:
    record = DecisionRecord(release_key="R", run_id=RUN, by="alice", at=datetime.now(UTC), deploy_keys=["R:a", "R:b"])
    rm.record_approval(record, attempt=1)
    rm.record_approval(record, attempt=2)
    lines = [(e["deploy_key"], e["step"], e["env"], e["attempt"], e["applied"]) for e in rm.ledger.entries()]
    assert lines == [
        ("R:a", "approve", None, 1, True),
        ("R:b", "approve", None, 1, True),
        ("R:a", "approve", None, 2, False),
        ("R:b", "approve", None, 2, False),
    ]


# --- the activities around the steps: how each failure leaves them --------------


class FailFirst(FailureInjector):
    def maybe_fail(self, what: str, attempt: int, key: str = "", point: str = "start") -> None:
        if point == "start":
            raise SimulatedFailure(f"simulated failure: {what}, attempt {attempt}")


def frontend(rm: ReleaseManagement, env: str = "DEV") -> StepInput:
    return step(rm, "RELEASE-NOV-23-INITIAL", "frontend", env)


def test_a_step_activity_says_whether_it_applied_the_step(rm: ReleaseManagement) -> None:
    acts, env = ReleaseActivities(rm), ActivityEnvironment()
    assert env.run(acts.build, frontend(rm)) == StepResult(artifact="frontend-1.0", attempt=1, applied=True)
    assert env.run(acts.build, frontend(rm)) == StepResult(artifact="frontend-1.0", attempt=1, applied=False)


def test_a_workspace_fault_is_retried_with_one_line_saying_what_to_fix(rm: ReleaseManagement, tmp_path: Path) -> None:
    acts, env = ReleaseActivities(rm), ActivityEnvironment()
    env.run(acts.build, frontend(rm))
    (tmp_path / "environments").write_text("a file where a folder should be")
    with pytest.raises(ApplicationError) as err:
        env.run(acts.deploy, frontend(rm))
    assert err.value.type == "WorkspaceError" and not err.value.non_retryable
    assert err.value.message == (
        f"deploy frontend-1.0 → DEV: Not a directory ({tmp_path / 'environments' / 'DEV'}); fix it and the step goes on"
    )
    (tmp_path / "ledger.jsonl").unlink()
    (tmp_path / "ledger.jsonl").mkdir()
    record = DecisionRecord(release_key="R", run_id=RUN, by="a", at=datetime.now(UTC), deploy_keys=["R"])
    with pytest.raises(ApplicationError) as err:
        env.run(acts.record_approval, record)
    assert err.value.type == "WorkspaceError" and "Is a directory" in err.value.message


@pytest.mark.parametrize(
    ("bug", "message"),
    [
        (KeyError("deploy_key"), "KeyError: 'deploy_key'"),
        (TypeError("x" * 10_000 + "\nsecond line"), "TypeError: xxx"),
    ],
)
def test_a_programming_error_fails_the_step_for_good_in_one_line(
    rm: ReleaseManagement, monkeypatch: pytest.MonkeyPatch, bug: Exception, message: str
) -> None:
    def buggy(*args: object, **kwargs: object) -> None:
        raise bug

    s = frontend(rm)
    monkeypatch.setattr(rm, "test", buggy)
    monkeypatch.setattr(rm, "gather_deployments", buggy)
    acts, env = ReleaseActivities(rm), ActivityEnvironment()
    for run, arg in ((acts.test, s), (acts.gather_deployments, "RELEASE-NOV-23-INITIAL")):
        with pytest.raises(ApplicationError) as err:
            env.run(run, arg)
        assert err.value.type == "StepBug" and err.value.non_retryable
        assert err.value.message.startswith(message)
        assert "\n" not in err.value.message and len(err.value.message) <= 300


def test_release_errors_and_simulated_failures_keep_their_types(rm: ReleaseManagement) -> None:
    env = ActivityEnvironment()
    with pytest.raises(NotVerified) as unverified:
        env.run(ReleaseActivities(rm).deploy, frontend(rm))
    with pytest.raises(MissingArtifact) as missing:
        env.run(ReleaseActivities(rm).test, frontend(rm))
    with pytest.raises(UnknownRelease):
        env.run(ReleaseActivities(rm).gather_deployments, "NOPE")
    rm.failing_checks = frozenset({("frontend-1.0", "DEV", "unit")})
    for run in (rm.build, rm.deploy):
        run(frontend(rm))
    with pytest.raises(GateFailed) as gate:
        env.run(ReleaseActivities(rm).test, frontend(rm))
    rm.failing_checks = frozenset({("frontend-1.0", "DEV", "health")})
    with pytest.raises(VerificationFailed) as health:
        env.run(ReleaseActivities(rm).test, frontend(rm).model_copy(update={"run_id": "run-2"}))
    for err in (unverified, missing, gate, health):
        assert type(err.value).__name__ in NON_RETRYABLE_ERRORS
    with pytest.raises(SimulatedFailure, match="simulated failure: build frontend-1.0 → DEV, attempt 1"):
        env.run(ReleaseActivities(rm, FailFirst()).build, frontend(rm))


def test_a_cancel_lets_the_step_in_flight_finish_whole(rm: ReleaseManagement) -> None:
    acts, env = ReleaseActivities(rm), ActivityEnvironment()
    env.run(acts.build, frontend(rm))
    # The cancel arrives while the deploy works (its heartbeat), before it copies anything.
    env.on_heartbeat = lambda *details: env.cancel()
    result = env.run(acts.deploy, frontend(rm))
    assert result == StepResult(artifact="frontend-1.0", attempt=1, applied=True)
    assert rm.contents("DEV") == ["frontend-1.0"]
    assert [e["step"] for e in rm.ledger.entries()] == ["build", "deploy"]


def test_a_cancel_during_a_step_that_fails_ends_the_attempt_as_cancelled(rm: ReleaseManagement, tmp_path: Path) -> None:
    rm.step_seconds = 0.01  # long enough to heartbeat, which is when a cancel reaches a step
    acts, env = ReleaseActivities(rm), ActivityEnvironment()
    env.run(acts.build, frontend(rm))
    (tmp_path / "environments").write_text("a file where a folder should be")
    env.on_heartbeat = lambda *details: env.cancel()
    with pytest.raises(CancelledError):
        env.run(acts.deploy, frontend(rm))
    assert [e["step"] for e in rm.ledger.entries()] == ["build"]
