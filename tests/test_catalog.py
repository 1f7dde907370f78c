"""The release catalog (orchestrator/catalog.py): every bad entry named in one line by file, release and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import CatalogError
from release_management import ReleaseManagement, render_config
from shared import ENVIRONMENTS
from tests.steps import config_of, step_of

INITIAL = "RELEASE-NOV-23-INITIAL"
HOTFIX = "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"


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
