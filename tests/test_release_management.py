"""The release management system on its own, in a temporary workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from release_management import CatalogError, MissingArtifact, ReleaseManagement, UnknownRelease
from shared import DeployInfo, ReleaseInfo, StepInput

RUN = "run-1"


def step(rm: ReleaseManagement, key: str, container: str, env: str, run: str = RUN) -> StepInput:
    deploy = next(d for d in rm.gather_deployments(key).deploys if d.container_id == container)
    return StepInput(release_key=key, run_id=run, deploy=deploy, env=env)


def promote(rm: ReleaseManagement, key: str, run: str = RUN) -> None:
    for deploy in rm.gather_deployments(key).deploys:
        for env in deploy.environments:
            s = StepInput(release_key=key, run_id=run, deploy=deploy, env=env)
            if env == "DEV":
                rm.build(s)
            rm.deploy(s)
            rm.test(s)


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
    assert rm.build(step(rm, "RELEASE-NOV-23-INITIAL", "sbstore", "DEV")) == "sbstore-1.0"
    text = (tmp_path / "artifactory" / "sbstore-1.0").read_text()
    assert "release: RELEASE-NOV-23-INITIAL" in text
    assert "git: https://github.com/mybiz/sbstore.git" in text


def test_each_promotion_takes_from_the_environment_before(rm: ReleaseManagement) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    with pytest.raises(MissingArtifact, match="cannot deploy frontend 1.0 to DEV: the artifactory does not hold"):
        rm.deploy(s)
    rm.build(s)
    for env in ("DEV", "TEST", "QC", "PROD"):
        assert rm.deploy(s.model_copy(update={"env": env})) == "frontend-1.0"
        assert rm.contents(env) == ["frontend-1.0"]
        assert rm.test(s.model_copy(update={"env": env})) == "frontend-1.0"


def test_promotion_without_source_fails_clearly(rm: ReleaseManagement) -> None:
    with pytest.raises(MissingArtifact, match=r"cannot deploy sbstore 1.8 to PROD: QC does not hold sbstore-1.8"):
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


def test_repeated_steps_change_nothing_and_are_recorded_once(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step(rm, "RELEASE-NOV-23-INITIAL", "frontend", "DEV")
    rm.build(s, attempt=1)
    rm.deploy(s, attempt=1)
    before = (tmp_path / "environments" / "DEV" / "frontend-1.0").stat().st_mtime_ns
    rm.build(s, attempt=2)
    rm.deploy(s, attempt=2)
    assert (tmp_path / "environments" / "DEV" / "frontend-1.0").stat().st_mtime_ns == before
    entries = rm.ledger.entries()
    assert [(e["step"], e["attempt"]) for e in entries] == [("build", 1), ("deploy", 1)]
    # Another run of the same release is another set of steps.
    rm.deploy(s.model_copy(update={"run_id": "run-2"}), attempt=1)
    assert len(rm.ledger.entries()) == 3


def test_no_temporary_files_are_left_behind(rm: ReleaseManagement, tmp_path: Path) -> None:
    promote(rm, "RELEASE-NOV-23-INITIAL")
    leftovers = [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert leftovers == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("container_id", "../x", "container id '../x' is invalid"),
        ("container_id", "a/b", "container id 'a/b' is invalid"),
        ("container_id", "", "container id '' is invalid"),
        ("version", "../../etc", "version '../../etc' is invalid"),
        ("version", "1.0-rc1", "version '1.0-rc1' is invalid"),
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
    for key in ("", "../x", "a b", "x/y"):
        with pytest.raises(ValidationError, match="release key"):
            ReleaseInfo(release_key=key)


def test_a_bad_container_id_never_writes_outside_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        json.dumps(
            {
                "containers": {"../escape": "https://example.invalid/x"},
                "releases": [{"release_key": "R", "environments": ["DEV"], "versions": {"../escape": "1.0"}}],
            }
        )
    )
    rm = ReleaseManagement(workspace, catalog)
    with pytest.raises(CatalogError, match="container id '../escape' is invalid"):
        rm.gather_deployments("R")
    assert list(tmp_path.iterdir()) == [catalog]


def test_a_broken_catalog_is_reported_in_one_line(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text("{not json")
    with pytest.raises(CatalogError, match="is invalid") as err:
        ReleaseManagement(tmp_path, catalog).release_keys()
    assert "\n" not in str(err.value)
    with pytest.raises(CatalogError, match="cannot read release catalog"):
        ReleaseManagement(tmp_path, tmp_path / "missing.json").release_keys()
