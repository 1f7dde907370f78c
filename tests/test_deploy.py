"""A deploy's configuration, written with its artifact: the catalog's values, and a crash between the two writes
never leaving a configuration beside another version (in process, and a worker killed on a real dev server)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import ReleaseActivities
from release_management import ReleaseManagement
from shared import ENVIRONMENTS, StepInput
from tests.conftest import CATALOG, target_of
from tests.steps import catalog_file, config_of, lines_of, mismatches, promote, step_of, through
from tests.support import WorkerProcess, run_script, script_env, stopped_at_the_end, task_queue, worker_exits
from utils import FailureInjector, SimulatedFailure

INITIAL = "RELEASE-NOV-23-INITIAL"
HOTFIX = "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"


# --- configuration deployed with the artifact --------------------------------------------------------------


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
        async for _ in worker_exits(workers, release):
            # The worker is dead, so the workspace is as the exit left it: the old pair beside the new artifact.
            container, version, env = STRUCK.findall(log.read_text())[len(exits)]
            exits.append((container, version, env))
            held = rm.contents(env)
            old = next(a for a in held if a.startswith(f"{container}-") and a != f"{container}-{version}")
            assert f"{container}-{version}" in held, held
            assert config_of(tmp_path, env, container)["artifact"] == old
            assert mismatches(tmp_path) == []
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
