"""The on_failure policies for a gate or health failure, on the time-skipping server: rollback, hold, stop, all."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import GateFailed, ReleaseError, RollbackRefused, root_cause
from orchestrator.inventory import inventory
from release_management import ReleaseManagement
from shared import HELD, Decision, ReleaseRequest, ReleaseState, RollbackTarget, StepInput
from tests.conftest import CATALOG, REPO, target_of
from tests.support import (
    WorkerProcess,
    eventually,
    in_process_worker,
    run_release_steps,
    run_script,
    script_env,
    stopped_at_the_end,
    task_queue,
    until,
    worker_exits,
)
from tests.test_approvals import cause_of, until_status
from tests.test_first_minutes import Script
from utils import python_command
from workflows import ReleaseWorkflow

INITIAL, HOTFIX = "RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE"


def workspace(tmp_path: Path, on_failure: Any, failing: set[tuple[str, str, str]]) -> ReleaseManagement:
    catalog = json.loads(CATALOG.read_text())
    catalog["default_on_failure"] = on_failure
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return ReleaseManagement(tmp_path / "ws", path, failing_checks=frozenset(failing))


async def release(env: WorkflowEnvironment, tq: str, key: str) -> WorkflowHandle:
    return await env.client.start_workflow(
        ReleaseWorkflow.run,
        ReleaseRequest(release_key=key, now=True),
        id=f"release-{key}-{uuid.uuid4()}",
        task_queue=tq,
    )


def files(folder: Path) -> dict[str, bytes]:
    """Every file an environment holds (artifacts and config), the rollback's keepsakes left out."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".rollback" not in p.parts
    }


async def failure_of(handle: WorkflowHandle) -> str:
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    return str(getattr(root_cause(err.value), "message", ""))


def rollback_lines(rm: ReleaseManagement) -> list[dict[str, Any]]:
    return [e for e in rm.ledger.entries() if e.get("step") == "rollback"]


async def test_rollback_gives_qc_back_byte_for_byte_and_the_others_go_on(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    rm = workspace(tmp_path, "rollback", {("sbstore-1.7", "QC", "security")})
    async with in_process_worker(ts_env, rm) as tq:
        await (await release(ts_env, tq, INITIAL)).result()
        qc_before = files(rm.env_dir("QC"))
        handle = await release(ts_env, tq, HOTFIX)
        message = await failure_of(handle)
        state: ReleaseState = await handle.query(ReleaseWorkflow.progress)
    assert message == (
        "sbstore-1.7 failed security in QC: FAILING_CHECKS names sbstore-1.7:QC:security; "
        "rolled back QC to sbstore-1.0; frontend-1.1 and backendforfrontend-1.7 reached QC"
    )
    after = files(rm.env_dir("QC"))
    # sbstore's artifact and config exactly as before; the others at their new versions.
    for name in ("sbstore-1.0", "config/sbstore.json"):
        assert after[name] == qc_before[name]
    assert sorted(n for n in after if not n.startswith("config/")) == [
        "backendforfrontend-1.7",
        "frontend-1.1",
        "sbstore-1.0",
    ]
    [line] = rollback_lines(rm)
    assert (line["env"], line["container"], line["version"], line["applied"]) == ("QC", "sbstore", "1.7", True)
    assert (line["restored"]["version"], line["restored"]["release_key"]) == ("1.0", INITIAL)
    sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
    assert sbstore.cells["QC"].status == "rolled back"
    assert all(d.cells["QC"].status == "done" for d in state.deploys if d.container_id != "sbstore")


async def test_rollback_of_an_environment_that_held_nothing_leaves_nothing(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    rm = workspace(tmp_path, "rollback", {("sbstore-1.0", "DEV", "health")})
    async with in_process_worker(ts_env, rm) as tq:
        message = await failure_of(await release(ts_env, tq, INITIAL))
    assert message.startswith("sbstore-1.0 failed health in DEV: FAILING_CHECKS names sbstore-1.0:DEV:health; ")
    assert "rolled back DEV to nothing" in message
    assert not [n for n in files(rm.env_dir("DEV")) if "sbstore" in n]
    assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0"]
    [line] = rollback_lines(rm)
    assert line["restored"] is None


async def test_stop_leaves_it_and_the_others_go_on(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = workspace(tmp_path, "stop", {("sbstore-1.0", "TEST", "integration")})
    async with in_process_worker(ts_env, rm) as tq:
        message = await failure_of(await release(ts_env, tq, INITIAL))
    assert message == (
        "sbstore-1.0 failed integration in TEST: FAILING_CHECKS names sbstore-1.0:TEST:integration; "
        "left TEST as it is; frontend-1.0 and backendforfrontend-1.0 reached PROD"
    )
    assert "sbstore-1.0" in rm.contents("TEST") and "sbstore-1.0" not in rm.contents("QC")
    assert rollback_lines(rm) == []


# On the dev server: rolling back all cancels the other deploys' steps in flight, which the time-skipping
# server may never do for an activity whose failure it buffered (sdk-java#2391): the release would hang.
async def test_rollback_all_rolls_back_every_deploy_in_that_environment(
    tmp_path: Path, dev_server: WorkflowEnvironment
) -> None:
    rm = workspace(tmp_path, {"action": "rollback", "all": True}, {("sbstore-1.7", "QC", "security")})
    async with in_process_worker(dev_server, rm) as tq:
        await (await release(dev_server, tq, INITIAL)).result()
        qc_before = files(rm.env_dir("QC"))
        message = await failure_of(await release(dev_server, tq, HOTFIX))
    assert message.startswith("sbstore-1.7 failed security in QC: FAILING_CHECKS names sbstore-1.7:QC:security; ")
    assert "rolled back QC to sbstore-1.0" in message
    # Every deploy of the release that reached QC is rolled back there; whoever had not, never got there.
    assert files(rm.env_dir("QC")) == qc_before
    assert {line["container"] for line in rollback_lines(rm)} <= {"sbstore", "frontend", "backendforfrontend"}
    assert "sbstore" in {line["container"] for line in rollback_lines(rm)}


async def held(handle: WorkflowHandle) -> ReleaseState:
    return await until_status(handle, HELD)


async def test_hold_waits_for_a_person_who_rolls_back(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = workspace(tmp_path, "hold", {("sbstore-1.7", "QC", "security")})
    async with in_process_worker(ts_env, rm) as tq:
        await (await release(ts_env, tq, INITIAL)).result()
        qc_before = files(rm.env_dir("QC"))
        handle = await release(ts_env, tq, HOTFIX)
        state = await held(handle)
        sbstore = next(d for d in state.deploys if d.container_id == "sbstore")
        assert sbstore.cells["QC"].status == "held"
        # The hold is recorded: inventory says so while the release waits for a person.
        await until(lambda: inventory(rm.workspace).placements["QC"]["sbstore"].state == "held")
        hold = [e for e in rm.ledger.entries() if e.get("step") == "hold"]
        assert [(e["by"], e["env"], e["deploy_key"]) for e in hold] == [("on_failure: hold", "QC", f"{HOTFIX}:sbstore")]
        assert sbstore.waiting_for is not None and sbstore.waiting_for.startswith("a person: retry or rollback")
        for bad, words in [
            (Decision(approver=""), "the approver is empty: say who asks to rollback"),
            (Decision(approver="ana", deploy="frontend"), f"release {HOTFIX} does not hold 'frontend'; held: sbstore"),
        ]:
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(ReleaseWorkflow.rollback, bad)
            assert cause_of(err.value) == words
        reply = await handle.execute_update(ReleaseWorkflow.rollback, Decision(approver="ana"))
        assert (reply.deploy, reply.decision) == ("sbstore-1.7", "rollback")
        message = await failure_of(handle)
    assert "rolled back QC to sbstore-1.0" in message
    assert files(rm.env_dir("QC"))["sbstore-1.0"] == qc_before["sbstore-1.0"]
    [line] = rollback_lines(rm)
    assert line["by"] == "ana"
    assert inventory(rm.workspace).placements["QC"]["sbstore"].state == "verified"  # 1.0 again, as it was


async def test_hold_then_retry_after_a_fix_outside_goes_on(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = workspace(tmp_path, "hold", {("sbstore-1.0", "QC", "security")})
    async with in_process_worker(ts_env, rm) as tq:
        handle = await release(ts_env, tq, INITIAL)
        await held(handle)
        rm.failing_checks = frozenset()  # the fix, made outside
        await handle.signal("retry", Decision(approver="bob"))
        result = await handle.result()
    assert result.status == "SUCCESS"
    assert rm.contents("PROD") == ["backendforfrontend-1.0", "frontend-1.0", "sbstore-1.0"]
    sbstore = next(d for d in rm.gather_deployments(INITIAL).deploys if d.container_id == "sbstore")
    failed, retried = (json.loads(rm.report_path(sbstore, "QC", "security", r).read_text()) for r in (0, 1))
    assert (failed["passed"], failed.get("retry"), retried["passed"], retried["retry"]) == (False, None, True, 1)
    tests = [e for e in rm.ledger.entries() if e["step"] == "test" and e["env"] == "QC" and e["container"] == "sbstore"]
    assert [(e["passed"], e.get("retry", 0)) for e in tests] == [(False, 0), (True, 1)]


async def test_retry_and_rollback_are_refused_when_nothing_is_held(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = workspace(tmp_path, "hold", set())
    rm.step_seconds = 0.2
    async with in_process_worker(ts_env, rm) as tq:
        handle = await release(ts_env, tq, INITIAL)
        await until_status(handle, "RUNNING")
        for update in (ReleaseWorkflow.retry, ReleaseWorkflow.rollback):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(update, Decision(approver="ana"))
            assert cause_of(err.value).startswith(f"release {INITIAL} holds no deploy (RUNNING): nothing to ")
        await asyncio.wait_for(handle.result(), 60)


# --- rollback-env, and a crash in the middle of a rollback ---------------------------------------------


def test_rollback_env_picks_the_version_that_passed_before_the_one_held(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    run_release_steps(rm, INITIAL, HOTFIX)
    info = rm.rollback_env("QC", "frontend", "ana")
    [d] = info.deploys
    assert (info.release_key, d.version, d.environments, info.redeploy, info.requested_by) == (
        "ROLLBACK-QC-frontend",
        "1.0",
        ["QC"],
        True,
        "ana",
    )
    assert rm.rollback_env("QC", "frontend", "ana", to="1.1").deploys[0].version == "1.1"
    for args, words in [
        (("QC", "frontend", "ana", "1.8"), "cannot roll back QC frontend to 1.8: it never passed its tests in QC"),
        (
            ("PROD", "frontend", "ana"),
            "cannot roll back PROD frontend: no other version passed its tests there (it holds frontend-1.0)",
        ),
        (("QC", "nope", "ana"), "the catalog has no container 'nope': frontend, sbstore, backendforfrontend"),
        (("STAGE", "frontend", "ana"), "unknown environment 'STAGE'; the environments are DEV, TEST, QC, PROD"),
    ]:
        with pytest.raises((ReleaseError, ValueError)) as err:
            rm.rollback_env(*args)
        assert str(err.value) == words


async def test_rollback_env_re_promotes_through_the_gates_with_who_asked(
    tmp_path: Path, ts_env: WorkflowEnvironment
) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    run_release_steps(rm, INITIAL, HOTFIX)
    before = rm.contents("QC")
    async with in_process_worker(ts_env, rm) as tq:
        [first_look] = rm.rollback_env("QC", "frontend", "ana").deploys
        target = RollbackTarget(env="QC", container="frontend")
        asked = ReleaseRequest(release_key=target.release_key(), now=True, by="ana", rollback=target)
        handle = await ts_env.client.start_workflow(
            ReleaseWorkflow.run, asked, id=f"release-{uuid.uuid4()}", task_queue=tq
        )
        assert (await handle.result()).status == "SUCCESS"
    assert before == ["backendforfrontend-1.7", "frontend-1.1", "sbstore-1.7"]
    assert rm.contents("QC") == ["backendforfrontend-1.7", "frontend-1.0", "sbstore-1.7"]
    assert (rm.artifactory / "frontend-1.0").read_bytes() == (rm.env_dir("QC") / "frontend-1.0").read_bytes()
    config = json.loads(rm.config_path("QC", "frontend").read_text())
    assert (config["artifact"], config["release_key"]) == ("frontend-1.0", "ROLLBACK-QC-frontend")
    lines = [e for e in rm.ledger.entries() if e.get("release_key") == "ROLLBACK-QC-frontend"]
    assert [(e["step"], e.get("env")) for e in lines] == [("approve", None), ("deploy", "QC"), ("test", "QC")]
    assert lines[0]["approver"] == "ana"
    report = json.loads(rm.report_path(first_look, "QC", "security").read_text())
    assert report["release_key"] == "ROLLBACK-QC-frontend"


def test_a_crash_in_the_middle_of_a_rollback_leaves_old_or_new_never_a_mix(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    run_release_steps(rm, INITIAL)
    qc_before = files(rm.env_dir("QC"))
    d = next(x for x in rm.gather_deployments(HOTFIX).deploys if x.container_id == "sbstore")
    step = StepInput(release_key=HOTFIX, run_id="run-hotfix", deploy=d, env="QC")
    for env in ("DEV", "TEST", "QC"):
        s = step.model_copy(update={"env": env})
        if env == "DEV":
            rm.build(s)
        rm.deploy(s)
        if env != "QC":
            rm.test(s)
    new = files(rm.env_dir("QC"))

    def crash(verb: str, step: StepInput, attempt: int) -> None:
        raise OSError("killed")

    rm.midway = crash
    with pytest.raises(OSError):
        rm.rollback(step)
    # Both artifacts, and the config still names the new one: the new pair is whole.
    mid = files(rm.env_dir("QC"))
    assert mid["sbstore-1.0"] == qc_before["sbstore-1.0"] and mid["sbstore-1.7"] == new["sbstore-1.7"]
    assert mid["config/sbstore.json"] == new["config/sbstore.json"]
    rm.midway = None
    rm.rollback(step)
    assert files(rm.env_dir("QC")) == qc_before
    # Once more: nothing left to do, and the ledger still claims it once.
    rm.rollback(step)
    assert [e["applied"] for e in rollback_lines(rm)] == [True, False]


# --- from the command line, against a real dev server ----------------------------------------------------

HOLD_KEY = "RELEASE-JAN-24-ALPHA-QC-HOLD"


@pytest.mark.slow(20)
async def test_held_deploy_and_rollback_env_from_the_command_line(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(
        target_of(dev_server),
        tmp_path,
        task_queue(),
        RELEASE_CATALOG=str(REPO / "examples" / "rollback.json"),
        FAILING_CHECKS="sbstore-1.8:QC:security",
    )
    with stopped_at_the_end([await asyncio.to_thread(WorkerProcess(env, tmp_path / "worker.log").start)]):
        code, out = await run_script(["--release-key", "RELEASE-JAN-24-ALPHA-DEV"], env)
        assert code == 0, out
        starter = await Script(["--release-key", HOLD_KEY], env).start()
        async with asyncio.timeout(60):
            while True:
                code, out = await run_script(["status", HOLD_KEY], env)
                if out.startswith(f"Release {HOLD_KEY}: HELD\n"):
                    break
                await asyncio.sleep(0.2)
        py = python_command()
        assert (
            f"  sbstore-1.8 is held: {py} run_workflow.py retry {HOLD_KEY} --by NAME --deploy sbstore  (after a fix), "
            f"or {py} run_workflow.py rollback {HOLD_KEY} --by NAME --deploy sbstore\n"
        ) in out, out
        # The person following the release is told how to act before anyone acts.
        await starter.line(r"^  held for a person: ")
        code, out = await run_script(["rollback", HOLD_KEY, "--by", " "], env)
        assert (code, out) == (2, "error: the approver is empty: say who asks to rollback\n")
        code, out = await run_script(["retry", HOLD_KEY, "--by", "Ana", "--deploy", "frontend"], env)
        assert (code, out) == (2, f"error: release {HOLD_KEY} does not hold 'frontend'; held: sbstore\n")
        code, out = await run_script(["rollback", HOLD_KEY, "--by", "Ana"], env)
        assert (code, out) == (0, f"Rollback of sbstore-1.8 asked by Ana (release {HOLD_KEY}: HELD)\n")
        code, out = await starter.result()
        assert code == 1, out
        assert out.splitlines()[-1] == (
            f"Result: Release {HOLD_KEY}: FAILED: GateFailed: sbstore-1.8 failed security in QC: "
            "FAILING_CHECKS names sbstore-1.8:QC:security; rolled back QC to nothing; "
            "frontend-1.2 and backendforfrontend-1.8 reached QC"
        ), out
        assert "  held for a person: " in out
        # The worker's ledger decides: each is refused by the worker, in one line, exit 2.
        for args, refusal in [
            (["QC", "frontend", "--to", "9.9"], "cannot roll back QC frontend to 9.9: it never passed its tests in QC"),
            (
                ["QC", "frontend"],
                "cannot roll back QC frontend: no other version passed its tests there (it holds frontend-1.2)",
            ),
            (["QC", "sbstore", "--to", "1.8"], "cannot roll back QC sbstore to 1.8: it never passed its tests in QC"),
        ]:
            code, out = await run_script(["rollback-env", *args, "--by", "Ana"], env)
            assert (code, out.splitlines()[-1]) == (2, f"error: {refusal}"), out
            assert "Traceback" not in out and "Result:" not in out, out
    assert sorted(p.name for p in (tmp_path / "environments" / "QC").iterdir() if p.is_file()) == [
        "backendforfrontend-1.8",
        "frontend-1.2",
    ]


# Seed 157383 (FAILURE_RATE=alot at FAILURE_AT=midway) strikes no first attempt of HOTFIX-STAGE's deploys,
# and the first attempt of `rollback sbstore-1.7 in QC`, not its second: the worker dies in the middle of
# the rollback, once the old artifact is back beside the new and before the old config is.
ROLLBACK_KILL_SEED = "157383"


@pytest.mark.slow(30)
async def test_a_worker_killed_during_a_rollback_leaves_old_or_new(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    rm = ReleaseManagement(tmp_path, REPO / "examples" / "rollback.json")
    run_release_steps(rm, INITIAL)
    qc_before = files(rm.env_dir("QC"))
    base = script_env(
        target_of(dev_server),
        tmp_path,
        task_queue(),
        RELEASE_CATALOG=str(REPO / "examples" / "rollback.json"),
        FAILING_CHECKS="sbstore-1.7:QC:security",
    )
    exiting = base | {"FAILURE_AT": "midway", "FAILURE_ACTION": "exit", "FAILURE_RATE": "alot"}
    exiting["FAILURE_SEED"] = ROLLBACK_KILL_SEED
    log = tmp_path / "worker.log"
    with stopped_at_the_end([WorkerProcess(exiting, log).start()]) as workers:
        release = asyncio.create_task(run_script(["--release-key", HOTFIX], base, limit=240))
        async for _ in worker_exits(workers, release):
            # Dead: the workspace is as the exit left it. Whatever QC holds of sbstore, its config names a file there.
            held = files(rm.env_dir("QC"))
            config = json.loads(held["config/sbstore.json"])
            assert config["artifact"] in held, sorted(held)
        code, out = await release
    assert "between the artifact and its configuration: rollback sbstore-1.7 in QC, attempt 1" in log.read_text()
    assert code == 1 and "rolled back QC to sbstore-1.0" in out.splitlines()[-1], out
    after = files(rm.env_dir("QC"))
    assert (after["sbstore-1.0"], after["config/sbstore.json"]) == (
        qc_before["sbstore-1.0"],
        qc_before["config/sbstore.json"],
    )
    assert "sbstore-1.7" not in after
    assert [line["applied"] for line in rollback_lines(rm)].count(True) == 1


# On the dev server: rolling back all cancels the other deploys' steps in flight, which the time-skipping
# server may never do for an activity whose failure it buffered (sdk-java#2391): the release would hang.
async def test_rollback_all_leaves_nothing_of_the_release_where_it_was_not_tested(
    tmp_path: Path, dev_server: WorkflowEnvironment
) -> None:
    """A failure in TEST with all: the others stop after their step in flight, which may be a deploy into QC."""
    rm = workspace(tmp_path, {"action": "rollback", "all": True}, {("sbstore-1.7", "TEST", "integration")})
    rm.step_seconds = 0.3  # sbstore's TEST takes as long as the others' QC deploys
    async with in_process_worker(dev_server, rm) as tq:
        await (await release(dev_server, tq, INITIAL)).result()
        before = {env: files(rm.env_dir(env)) for env in ("TEST", "QC")}
        message = await failure_of(await release(dev_server, tq, HOTFIX))
    assert "rolled back TEST to sbstore-1.0" in message, message
    # What changed there is only what this release verified there: a deploy in flight into QC is rolled back
    # unless its test ran too (on a busy machine the pair can finish), and then it passed there.
    held = inventory(rm.workspace).placements
    for env in ("TEST", "QC"):
        changed = {
            name.removeprefix("config/").removesuffix(".json").rsplit("-", 1)[0]
            for name, data in files(rm.env_dir(env)).items()
            if before[env].get(name) != data
        }
        changed |= {name.rsplit("-", 1)[0] for name in before[env] if name not in files(rm.env_dir(env))}
        for container in changed:
            entry = held[env][container]
            assert (entry.release_key, entry.state, entry.drift) == (HOTFIX, "verified", None), (env, entry)
    assert files(rm.env_dir("TEST")) == before["TEST"]  # where the failure was, everything is rolled back


# --- rollbacks one after another in one environment --------------------------------------------------------


def fail_gate(rm: ReleaseManagement, key: str, container: str, env: str) -> StepInput:
    """Run key's steps for container up to env, where its security check fails; the step that failed."""
    d = next(x for x in rm.gather_deployments(key).deploys if x.container_id == container)
    rm.failing_checks = frozenset({(f"{container}-{d.version}", env, "security")})
    for place in d.environments:
        step = StepInput(release_key=key, run_id=f"run-{key}", deploy=d, env=place)
        if place == "DEV":
            rm.build(step)
        rm.deploy(step)
        if place == env:
            with pytest.raises(GateFailed):
                rm.test(step)
            rm.failing_checks = frozenset()
            return step
        rm.test(step)
    raise AssertionError(f"{key} never reaches {env}")


def test_two_rollbacks_in_a_row_each_name_what_they_restored(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, REPO / "examples" / "rollback.json")
    run_release_steps(rm, INITIAL)
    qc_before = files(rm.env_dir("QC"))
    rm.rollback(fail_gate(rm, HOTFIX, "sbstore", "QC"), by="ana")  # sbstore 1.7 out, 1.0 back
    run_release_steps(rm, "RELEASE-JAN-24-ALPHA-DEV")
    rm.rollback(fail_gate(rm, "RELEASE-JAN-24-ALPHA-QC", "sbstore", "QC"), by="bob")  # 1.8 out, 1.0 back again
    assert files(rm.env_dir("QC"))["sbstore-1.0"] == qc_before["sbstore-1.0"]
    first, second = rollback_lines(rm)
    assert (first["version"], first["restored"]["version"], first["restored"]["release_key"]) == ("1.7", "1.0", INITIAL)
    assert (second["version"], second["restored"]["version"], second["restored"]["release_key"]) == (
        "1.8",
        "1.0",
        INITIAL,
    )
    held = inventory(rm.workspace).placements
    assert (held["QC"]["sbstore"].version, held["QC"]["sbstore"].release_key) == ("1.0", INITIAL)
    drifted = {(env, c): h.drift for env, cs in held.items() for c, h in cs.items() if h.drift}
    assert drifted == {}


def test_rollback_env_after_a_rollback_picks_the_version_before_the_one_held_now(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, REPO / "examples" / "rollback.json")
    run_release_steps(rm, INITIAL, HOTFIX, "RELEASE-JAN-24-ALPHA-DEV")  # QC: sbstore 1.0, then 1.7, both passed
    rm.rollback(fail_gate(rm, "RELEASE-JAN-24-ALPHA-QC", "sbstore", "QC"))  # 1.8 failed there: 1.7 back
    assert "sbstore-1.7" in rm.contents("QC")
    info = rm.rollback_env("QC", "sbstore", "ana")
    assert info.deploys[0].version == "1.0"
    with pytest.raises(RollbackRefused) as err:
        rm.rollback_env("QC", "sbstore", "ana", to="1.8")
    assert str(err.value) == "cannot roll back QC sbstore to 1.8: it never passed its tests in QC"


async def test_with_two_deploys_held_a_decision_must_name_one(tmp_path: Path, ts_env: WorkflowEnvironment) -> None:
    rm = workspace(tmp_path, "hold", {("sbstore-1.7", "QC", "security"), ("frontend-1.1", "QC", "security")})
    async with in_process_worker(ts_env, rm) as tq:
        await (await release(ts_env, tq, INITIAL)).result()
        handle = await release(ts_env, tq, HOTFIX)
        several = f"release {HOTFIX} holds several deploys (frontend, sbstore): say which with --deploy"

        async def both_held() -> bool:
            state: ReleaseState = await handle.query(ReleaseWorkflow.progress)
            return sum(d.cells["QC"].status == "held" for d in state.deploys) == 2

        async def ignored() -> bool:
            events = (await handle.query(ReleaseWorkflow.progress)).events
            return any(f"ignored a rollback signal: {several}" in e for e in events)

        await eventually(both_held)
        for update in (ReleaseWorkflow.retry, ReleaseWorkflow.rollback):
            with pytest.raises(WorkflowUpdateFailedError) as err:
                await handle.execute_update(update, Decision(approver="ana"))
            assert cause_of(err.value) == several
        await handle.signal("rollback", Decision(approver="ana"))  # the Web UI's way: checked alike, and ignored
        await eventually(ignored)
        assert rollback_lines(rm) == []
        for container in ("sbstore", "frontend"):
            await handle.execute_update(ReleaseWorkflow.rollback, Decision(approver="ana", deploy=container))
        message = await failure_of(handle)
    assert "rolled back QC to sbstore-1.0" in message and "rolled back QC to frontend-1.0" in message, message
    assert sorted(line["container"] for line in rollback_lines(rm)) == ["frontend", "sbstore"]
