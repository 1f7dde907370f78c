"""Releases at once on a real dev server, real worker and starter processes: one deploy per target at a time."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger import Ledger
from tests.conftest import target_of
from tests.support import WorkerProcess, run_script, script_env, task_queue

CONTAINERS = {
    "frontend": "https://example.invalid/frontend",
    "sbstore": "https://example.invalid/sbstore",
    "backendforfrontend": "https://example.invalid/bff",
}


def write_catalog(path: Path, releases: list[dict]) -> None:
    path.write_text(json.dumps({"containers": CONTAINERS, "releases": releases}))


def overlaps(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    ordered = sorted(spans)
    return [b for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]]


def assert_each_kept_what_the_one_before_left(folder: Path, deploys: list[dict], container: str) -> None:
    """Each applied deploy of container into folder's environment, in turn, kept (for a rollback) the pair the
    deploy before it left there, nothing for the first: no deploy ever saw another half-way."""
    applied = sorted((e for e in deploys if e["applied"]), key=lambda e: e["at"])
    for before, e in zip([None, *applied], applied, strict=False):
        kept = folder / ".rollback" / str(e["run_id"]) / container
        names = sorted(p.name for p in kept.iterdir())
        if before is None:
            assert names == [], f"{kept}: {names}"
            continue
        assert names == sorted(["config.json", f"{container}-{before['version']}"]), f"{kept}: {names}"
        config = json.loads((kept / "config.json").read_bytes())
        assert (config["artifact"], config["release_key"]) == (
            f"{container}-{before['version']}",
            before["release_key"],
        )


def spans(entries: list[dict], step: str, env: str, container: str) -> list[tuple[datetime, datetime]]:
    return [
        (datetime.fromisoformat(e["started_at"]), datetime.fromisoformat(e["at"]))
        for e in entries
        if e["step"] == step and e["env"] == env and e["container"] == container
    ]


@pytest.mark.slow(20)
async def test_eight_releases_of_one_container_take_turns(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    keys = [f"RACE-{run}-{i}" for i in range(8)]
    catalog = tmp_path / "catalog.json"
    write_catalog(
        catalog,
        [{"release_key": k, "environments": ["DEV"], "versions": {"frontend": f"2.{i}"}} for i, k in enumerate(keys)],
    )
    env = script_env(
        target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="0.5", RELEASE_CATALOG=str(catalog)
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        results = await asyncio.gather(*(run_script(["--release-key", k], env, limit=240) for k in keys))
    finally:
        worker.stop_quietly()
    for key, (code, out) in zip(keys, results, strict=True):
        assert code == 0 and f"Result: Release {key}: SUCCESS" in out, out
    assert any("/frontend: held by RACE-" in out for _, out in results), "no release was seen waiting"

    entries = Ledger(tmp_path / "ledger.jsonl").entries()
    deploys = sorted((e for e in entries if e["step"] == "deploy"), key=lambda e: e["at"])
    assert len([e for e in deploys if e["applied"]]) == 8
    assert overlaps(spans(entries, "deploy", "DEV", "frontend")) == []
    # DEV holds one version: the one the last deploy put there (and, hidden, what each deploy replaced).
    dev = sorted(p.name for p in (tmp_path / "environments" / "DEV").iterdir())
    assert dev == [".rollback", "config", f"frontend-{deploys[-1]['version']}"]
    assert_each_kept_what_the_one_before_left(tmp_path / "environments" / "DEV", deploys, "frontend")
    # Its configuration is the last deploy's too: the writes of two deploys never interleaved.
    config = json.loads((tmp_path / "environments" / "DEV" / "config" / "frontend.json").read_bytes())
    assert (config["artifact"], config["release_key"]) == (
        f"frontend-{deploys[-1]['version']}",
        deploys[-1]["release_key"],
    )


@pytest.mark.slow(25)
async def test_releases_of_the_same_containers_to_prod_all_succeed(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    keys = [f"PIPE-{run}-{i}" for i in range(4)]
    catalog = tmp_path / "catalog.json"
    envs = ["DEV", "TEST", "QC", "PROD"]
    write_catalog(
        catalog,
        [
            {"release_key": k, "environments": envs, "versions": {c: f"3.{i}" for c in CONTAINERS}}
            for i, k in enumerate(keys)
        ],
    )
    env = script_env(
        target_of(dev_server), tmp_path, task_queue(), DEMO_STEP_SECONDS="0.2", RELEASE_CATALOG=str(catalog)
    )
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        results = await asyncio.gather(*(run_script(["--release-key", k], env, limit=300) for k in keys))
    finally:
        worker.stop_quietly()
    for key, (code, out) in zip(keys, results, strict=True):
        assert code == 0 and f"Result: Release {key}: SUCCESS" in out, out
    entries = Ledger(tmp_path / "ledger.jsonl").entries()
    for name in envs:
        folder = tmp_path / "environments" / name
        held = sorted(p.name for p in folder.iterdir() if p.name not in ("config", ".rollback"))
        assert len(held) == 3, f"{name} holds {held}"
        for container in CONTAINERS:
            assert overlaps(spans(entries, "deploy", name, container)) == [], f"{name}/{container}"
            deploys = [e for e in entries if e["step"] == "deploy" and e["env"] == name and e["container"] == container]
            assert_each_kept_what_the_one_before_left(folder, deploys, container)
            last = max(
                (e for e in entries if e["step"] == "deploy" and e["env"] == name and e["container"] == container),
                key=lambda e: e["at"],
            )
            assert f"{container}-{last['version']}" in held
            # The configuration is the last deploy's, naming the version held.
            config = json.loads((folder / "config" / f"{container}.json").read_bytes())
            assert (config["artifact"], config["release_key"]) == (
                f"{container}-{last['version']}",
                last["release_key"],
            )
