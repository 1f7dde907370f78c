"""A release's steps run directly on a ReleaseManagement, without Temporal, and what they leave on disk: for the
tests of the release management system itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from release_management import ReleaseManagement
from shared import ENVIRONMENTS, StepInput
from tests.conftest import CATALOG


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


def promote(rm: ReleaseManagement, key: str, run: str = "run-1") -> None:
    """Every step of release key, in order, as the worker would run them: build, then deploy and test in each."""
    for deploy in rm.gather_deployments(key).deploys:
        for env in deploy.environments:
            s = StepInput(release_key=key, run_id=run, deploy=deploy, env=env)
            if env == "DEV":
                rm.build(s)
            rm.deploy(s)
            rm.test(s)


def catalog_file(tmp_path: Path, environments: dict[str, Any]) -> Path:
    """The real catalog with another environments section (its gates, configuration and freezes)."""
    catalog = json.loads(CATALOG.read_text())
    catalog["environments"] = environments
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return path


def lines_of(rm: ReleaseManagement, step: str, env: str, container: str) -> list[dict[str, object]]:
    return [e for e in rm.ledger.entries() if (e["step"], e["env"], e.get("container")) == (step, env, container)]


def config_of(workspace: Path, env: str, container: str) -> dict[str, Any]:
    return json.loads((workspace / "environments" / env / "config" / f"{container}.json").read_bytes())


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
