"""Small unit tests for behaviour that mutation testing (`make mutation`) showed no fast test checks.

See tests/mutation_survivors.md for the survivors these kill and those left.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, field_validator

from orchestrator.command_runner import Liveness
from orchestrator.names import clip, describe_validation_error
from orchestrator.settings import Settings, parse_failure_at
from release_management import ReleaseManagement
from shared import REPO_ROOT, TASK_QUEUE, DecisionRecord, DeployInfo, StepInput

SETTINGS_VARIABLES = (
    "RELEASE_TASK_QUEUE",
    "RELEASE_WORKSPACE",
    "RELEASE_CATALOG",
    "FAILURE_RATE",
    "FAILURE_SEED",
    "FAILURE_AT",
    "FAILURE_ACTION",
    "DEMO_STEP_SECONDS",
    "WORKER_METRICS_PORT",
    "FAILING_CHECKS",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from this machine's environment."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_without_variables_are_the_defaults(env: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert s.task_queue == TASK_QUEUE
    assert s.workspace == REPO_ROOT.resolve()
    assert s.catalog == (REPO_ROOT / "releases.json").resolve()
    assert (s.failure_rate, s.failure_seed, s.step_seconds) == ("rarely", None, 3.0)
    assert (s.failure_at, s.failure_action) == (("start",), "raise")
    assert s.failing_checks == frozenset()


def test_settings_read_each_variable(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("RELEASE_TASK_QUEUE", "tq-1")
    env.setenv("RELEASE_WORKSPACE", str(tmp_path))
    env.setenv("RELEASE_CATALOG", str(tmp_path / "catalog.json"))
    env.setenv("FAILURE_RATE", " Sometimes ")
    env.setenv("FAILURE_SEED", "-7")
    env.setenv("DEMO_STEP_SECONDS", "0")
    s = Settings.from_env()
    assert (s.task_queue, s.workspace, s.catalog) == ("tq-1", tmp_path.resolve(), (tmp_path / "catalog.json").resolve())
    assert (s.failure_rate, s.failure_seed, s.step_seconds) == ("sometimes", -7, 0.0)
    env.setenv("FAILURE_SEED", "7")
    env.setenv("DEMO_STEP_SECONDS", "3600")
    s = Settings.from_env()
    assert (s.failure_seed, s.step_seconds) == (7, 3600.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FAILURE_RATE", "often", "FAILURE_RATE='often' is not one of never, rarely, sometimes, alot"),
        ("FAILURE_SEED", "5-", "FAILURE_SEED='5-' is not a whole number"),
        ("FAILURE_SEED", "X5", "FAILURE_SEED='X5' is not a whole number"),
        ("DEMO_STEP_SECONDS", "soon", "DEMO_STEP_SECONDS='soon' is not a number of seconds"),
        ("DEMO_STEP_SECONDS", "-1", "DEMO_STEP_SECONDS='-1' must be between 0 and 3600"),
        ("DEMO_STEP_SECONDS", "3600.5", "DEMO_STEP_SECONDS='3600.5' must be between 0 and 3600"),
    ],
)
def test_settings_refuse_bad_values_naming_the_variable(
    env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(ValueError) as err:
        Settings.from_env()
    assert str(err.value) == message


def test_failure_at_names_the_bad_point_and_the_form() -> None:
    with pytest.raises(ValueError) as err:
        parse_failure_at("start,later")
    assert str(err.value) == (
        "FAILURE_AT='start,later': 'later' is not one of start, midway, effect, end (a comma list, say effect,end)"
    )


class _Model(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        raise ValueError(f"bad name {v}")


class _ErrorList(ValueError):
    """A ValueError with errors() like pydantic's, with entries that lack a field."""

    def errors(self) -> list[dict[str, object]]:
        return [{"msg": "Value error, no place"}, {"loc": ("deploys", 0, "version")}]


def test_describe_validation_error_is_one_line_per_problem() -> None:
    assert describe_validation_error(ValueError("plain")) == "plain"
    with pytest.raises(ValidationError) as err:
        _Model.model_validate({"name": "x"})
    assert describe_validation_error(err.value) == "name: bad name x"
    assert describe_validation_error(_ErrorList()) == "no place; deploys.0.version: "


def test_an_approval_is_one_ledger_line_per_deploy_with_its_first_attempt(rm: ReleaseManagement) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = DecisionRecord(release_key="R-1", run_id="run", by="ann", at=at, deploy_keys=["d1"])
    rm.record_approval(record)
    assert [{k: v for k, v in e.items() if k != "prev"} for e in rm.ledger.entries()] == [
        {
            "release_key": "R-1",
            "run_id": "run",
            "deploy_key": "d1",
            "step": "approve",
            "env": None,
            "approver": "ann",
            "attempt": 1,
            "at": "2026-01-02T03:04:05.000+00:00",
            "applied": True,
        }
    ]


def _step(container: str, version: str, env: str) -> StepInput:
    deploy = DeployInfo(
        deploy_key=f"R-1:{container}",
        container_id=container,
        version=version,
        git_url=f"https://example.invalid/{container}",
        environments=["DEV"],
    )
    return StepInput(release_key="R-1", run_id="run", deploy=deploy, env=env)  # type: ignore[arg-type]


def test_a_deploy_replaces_only_its_own_container_when_names_hold_dashes(tmp_path: Path) -> None:
    # The workspace folder does not exist yet: the first build creates it.
    rm = ReleaseManagement(tmp_path / "new" / "workspace", REPO_ROOT / "releases.json")
    for container, version in (("sb-store", "1.0"), ("sb", "2.0"), ("sb-store", "1.1")):
        rm.build(_step(container, version, "DEV"))
        rm.deploy(_step(container, version, "DEV"))
    assert rm.contents("DEV") == ["sb-2.0", "sb-store-1.1"]


def test_contents_leave_out_hidden_files_and_folders(rm: ReleaseManagement) -> None:
    folder = rm.env_dir("DEV")
    (folder / "sub").mkdir(parents=True)
    (folder / ".frontend-1.0.1a2b.partial").write_text("half")
    (folder / "frontend-1.0").write_text("whole")
    assert rm.contents("DEV") == ["frontend-1.0"]


def test_a_report_that_is_not_an_object_is_written_again(rm: ReleaseManagement) -> None:
    step = _step("frontend", "1.0", "DEV")
    rm.build(step)
    rm.deploy(step)
    report = rm.report_path(step.deploy, "DEV", "unit")
    report.parent.mkdir(parents=True)
    report.write_text("[1, 2]")
    assert rm.test(step).applied
    assert json.loads(report.read_text())["run_id"] == "run"
    test_line = next(e for e in rm.ledger.entries() if e["step"] == "test")
    assert test_line["started_at"] <= test_line["at"]


def test_a_ledger_larger_than_one_read_is_read_whole(rm: ReleaseManagement) -> None:
    entries = [{"step": "build", "n": n, "pad": "x" * 200} for n in range(500)]  # over 64 KiB
    for entry in entries:
        rm.ledger.record(entry)
    assert [{k: v for k, v in e.items() if k != "prev"} for e in rm.ledger.entries()] == entries


def test_a_simulated_step_takes_its_time_and_reports_liveness(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, REPO_ROOT / "releases.json", step_seconds=1.2)
    beats: list[float] = []
    began = time.monotonic()
    rm.build(_step("frontend", "1.0", "DEV"), live=Liveness(heartbeat=lambda: beats.append(time.monotonic())))
    assert time.monotonic() - began >= 1.2
    # A heartbeat at least every half second, so a dead worker is noticed within the heartbeat timeout.
    gaps = [b - a for a, b in zip([began, *beats], beats, strict=False)]
    assert len(beats) >= 3 and max(gaps) < 1.0


def test_clip_keeps_text_up_to_its_limit_and_marks_a_cut() -> None:
    assert clip("x" * 40) == "x" * 40
    assert clip("x" * 41) == "x" * 39 + "…"
    assert clip("abcdef", 5) == "abcd…" and clip("abcde", 5) == "abcde"
