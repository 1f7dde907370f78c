"""The trust boundary, tried as an adversary would: one test per way in that issue 18 found open.

Each test does what the adversary did, from outside where that is how it came (a `temporal` CLI start, a hand
edit of the ledger, a link in the workspace, a script run), and checks what an observer sees: the refusal in
one line, and nothing written where it must not be. A rollback-env's choice made under the target's lock is
proven in tests/test_rollback.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from orchestrator.catalog import load_catalog
from orchestrator.cli.follower import ui_link
from orchestrator.command_runner import CommandRefused, run_command
from orchestrator.errors import CatalogError, LedgerBroken, NotVerified, OutsideWorkspace, root_cause
from orchestrator.inventory import inventory
from orchestrator.render import render_progress
from orchestrator.step_commands import StepCommand
from release_management import ReleaseManagement
from shared import AWAITING_APPROVAL, FROZEN, RUNNING, SUCCESS, Approval, ReleaseRequest, StepInput, StepResult
from tests.conftest import CATALOG, REPO, installed_binary, target_of
from tests.steps import promote, step_of, through
from tests.support import activity_starts, eventually, in_process_worker, run_python, run_script, script_env
from tests.test_approvals import cause_of, until_status
from workflows import ReleaseWorkflow

INITIAL = "RELEASE-NOV-23-INITIAL"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"
NO_SERVER = "127.0.0.1:1"


def catalog_changed(tmp_path: Path, **environments: dict[str, object]) -> ReleaseManagement:
    """The real catalog with these environments' settings changed, and a workspace beside it."""
    catalog = json.loads(CATALOG.read_text())
    for env, changes in environments.items():
        catalog["environments"].setdefault(env, {}).update(changes)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    return ReleaseManagement(tmp_path / "ws", path)


async def cli(workspace: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """run_workflow.py as a person runs it, with no server: exit code, stdout, stderr."""
    variables = script_env(NO_SERVER, workspace, "unused", **env)
    return await run_python([str(REPO / "run_workflow.py"), *args], variables, limit=60, merge=False)


# 1. Any Temporal client could run code on the worker and skip every gate.
async def test_a_forged_start_from_the_temporal_cli_runs_nothing(
    dev_server: WorkflowEnvironment, rm: ReleaseManagement, tmp_path: Path
) -> None:
    ran = tmp_path / "the-shell-ran"
    deploy = {
        "deploy_key": f"{INITIAL}:frontend",
        "container_id": "frontend",
        "version": "6.6.6",
        "git_url": "https://example.com/x.git",
        "environments": ["PROD"],
        "checks": {"PROD": []},
        "commands": {"build": {"argv": ["sh", "-c", f"touch {ran}"]}},
        "approved": True,
    }
    forged = {"release_key": INITIAL, "now": True, "deploys": [deploy], "approved": True, "freezes": {}}
    workflow_id = f"forged-{uuid.uuid4()}"
    async with in_process_worker(dev_server, rm) as tq:
        started = await asyncio.to_thread(
            subprocess.run,
            [installed_binary("temporal"), "workflow", "start", "--address", target_of(dev_server)]
            + ["--task-queue", tq, "--type", "ReleaseWorkflow", "--workflow-id", workflow_id]
            + ["--input", json.dumps(forged)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 0, started.stderr
        handle = dev_server.client.get_workflow_handle(workflow_id)
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(handle.result(), 30)
    cause = root_cause(failed.value)
    message = getattr(cause, "message", str(cause))
    assert message.startswith(f"release {INITIAL}: its input holds approved, deploys, freezes, which no person")
    assert await activity_starts(dev_server.client, workflow_id) == []
    assert not ran.exists() and not (rm.workspace / "ledger.jsonl").exists()
    assert not (rm.workspace / "environments").exists() and not (rm.workspace / "artifactory").exists()


# 2. A hand-written ledger line promoted untested bytes.
def test_a_line_written_by_hand_or_bytes_swapped_in_qc_reach_no_prod(rm: ReleaseManagement) -> None:
    promote(rm, ALPHA_DEV)
    promote(rm, ALPHA_QC)
    prod = step_of(rm, ALPHA_PROD, "frontend", "PROD")
    qc_file = rm.workspace / "environments" / "QC" / f"frontend-{prod.deploy.version}"
    tested = qc_file.read_bytes()

    # Other bytes in QC, with the API's own link: the digest of what passed there does not match.
    qc_file.write_bytes(b"not what QC tested\n")
    with pytest.raises(NotVerified, match="the bytes in QC are not the build that passed there"):
        rm.deploy(prod)

    # A test line appended by hand, as the adversary did: it carries no link, and nothing is proven after it.
    forged = {"step": "test", "env": "QC", "container": "frontend", "version": prod.deploy.version, "run_id": "x"}
    with open(rm.ledger.path, "a") as f:
        f.write(json.dumps({**forged, "passed": True}) + "\n")
    with pytest.raises(LedgerBroken, match=r"is broken at line \d+: it carries no link"):
        rm.deploy(prod)
    qc_file.write_bytes(tested)
    with pytest.raises(LedgerBroken):
        rm.deploy(prod)  # the right bytes again change nothing: the ledger must be looked at, then sealed
    assert not (rm.workspace / "environments" / "PROD").exists()


# 3. A same-length edit of an old line: the index said passed while the ledger said failed.
async def test_an_edit_of_the_same_length_is_seen_by_the_index_and_by_ledger_verify(rm: ReleaseManagement) -> None:
    through(rm, INITIAL, "frontend", ["DEV", "TEST"])
    assert rm.ledger.verified("frontend", "1.0", "DEV").passed  # the index is built and caught up
    data = rm.ledger.path.read_bytes()
    dev_test = next(i for i, line in enumerate(data.splitlines()) if b'"test"' in line and b'"DEV"' in line)
    edited = data.splitlines()
    edited[dev_test] = edited[dev_test].replace(b'"passed": true', b'"passed":false')
    assert len(b"\n".join(edited)) == len(data.rstrip(b"\n"))
    rm.ledger.path.write_bytes(b"\n".join(edited) + b"\n")

    with pytest.raises(LedgerBroken, match=f"broken at line {dev_test + 2}: its link does not match line"):
        rm.ledger.verified("frontend", "1.0", "DEV")
    code, out, _ = await cli(rm.workspace, "ledger", "verify")
    assert (code, out.splitlines()[0]) == (
        1,
        f"ledger.jsonl is broken at line {dev_test + 2}: its link does not match line {dev_test + 1} "
        "(a line was edited, removed or added by hand)",
    )
    assert (await cli(rm.workspace, "inventory"))[0] == 1

    # Someone looks, and accepts the break by name: the chain goes on, and the edit now counts as written.
    code, out, _ = await cli(rm.workspace, "ledger", "seal", "--by", "carol", "--reason", "checked line by line")
    assert code == 0 and "accepted by carol: checked line by line" in out
    seal = json.loads(rm.ledger.path.read_bytes().splitlines()[-1])
    assert (seal["step"], seal["by"], seal["accepts"]) == ("seal", "carol", dev_test + 2)
    assert rm.ledger.verified("frontend", "1.0", "DEV").passed is False
    assert (await cli(rm.workspace, "ledger", "seal", "--by", "carol", "--reason", "again"))[0] == 2


# 4. Symbolic links were followed out of the workspace, and inventory showed no drift.
async def test_a_linked_environment_folder_is_refused_and_shown_as_drift(rm: ReleaseManagement, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    s = through(rm, INITIAL, "frontend", ["DEV"])
    (rm.workspace / "environments" / "TEST").parent.mkdir(exist_ok=True)
    (rm.workspace / "environments" / "TEST").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideWorkspace, match="refused: environments/TEST in the workspace is a symbolic link"):
        rm.deploy(s.model_copy(update={"env": "TEST"}))
    assert list(outside.iterdir()) == []

    dev = rm.workspace / "environments" / "DEV"
    (dev / "config").rename(tmp_path / "config-elsewhere")
    (dev / "config").symlink_to(tmp_path / "config-elsewhere", target_is_directory=True)
    assert inventory(rm.workspace).placements["DEV"]["frontend"].drift == "environments/DEV/config is a symbolic link"
    code, out, _ = await cli(rm.workspace, "inventory")
    assert code == 1 and "drift: DEV frontend: environments/DEV/config is a symbolic link" in out.splitlines()


# 5. A short option hid a path outside the workspace.
@pytest.mark.parametrize("arg", ["-t/etc", "-o../../outside", "--out=/etc", "/etc/passwd"])
def test_every_form_of_a_path_argument_is_checked(tmp_path: Path, arg: str) -> None:
    ran = tmp_path / "ran"
    command = StepCommand(argv=["sh", "-c", f"touch {ran}", "sh", arg])
    (tmp_path / "ws").mkdir()
    with pytest.raises(CommandRefused, match="reaches outside the workspace"):
        run_command(command, {}, tmp_path / "ws", tmp_path / "ws" / "log.txt")
    assert not ran.exists()


# 6. A second rollback-env of one target, asking another version, was silently merged into the first.
@pytest.mark.slow(20)
async def test_a_second_rollback_env_asking_another_version_is_refused(
    dev_server: WorkflowEnvironment, rm: ReleaseManagement
) -> None:
    for run, key in enumerate((INITIAL, ALPHA_DEV, ALPHA_QC)):
        promote(rm, key, f"run-{run}")
    asked_again = asyncio.Event()

    @activity.defn
    async def deploy(step: StepInput) -> StepResult:
        """The first rollback-env's deploy, held until it has been asked again, however busy the machine."""
        while not asked_again.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.1)
        return StepResult(artifact=(await asyncio.to_thread(rm.deploy, step)).artifact, attempt=1)

    async with in_process_worker(dev_server, rm, replace=deploy) as tq:
        env = script_env(target_of(dev_server), rm.workspace, tq)
        first = asyncio.ensure_future(run_script(["rollback-env", "QC", "sbstore", "--by", "Ana"], env))
        handle = dev_server.client.get_workflow_handle("release-ROLLBACK-QC-sbstore")
        await eventually(lambda: _status_is(handle, RUNNING))
        code, out = await run_script(["rollback-env", "QC", "sbstore", "--to", "1.0", "--by", "Bob"], env)
        asked_again.set()
        assert (code, out.splitlines()[-1]) == (
            2,
            "error: ROLLBACK-QC-sbstore already rolls back QC sbstore (the version before the one it holds, "
            "asked by Ana): wait for it to end, or cancel it; nothing was started",
        ), out
        code, out = await first
    assert code == 0, out
    assert out.splitlines()[-1] == "Result: Release ROLLBACK-QC-sbstore: SUCCESS (QC holds sbstore-1.0 again)", out


async def _status_is(handle: WorkflowHandle, status: str) -> bool:
    try:
        return (await handle.query(ReleaseWorkflow.progress)).status == status
    except RPCError:
        return False


# 7. A cancel left versions whose checks never ran, or failed, unmarked; inventory exited 0 on drift.
async def test_what_was_not_verified_where_it_runs_is_marked_and_inventory_exits_1(rm: ReleaseManagement) -> None:
    s = through(rm, INITIAL, "frontend", ["DEV"])
    rm.deploy(s.model_copy(update={"env": "TEST"}))  # a cancel came between the deploy and its checks
    code, out, _ = await cli(rm.workspace, "inventory", "--json")
    found = json.loads(out)
    assert code == 1
    assert (found["DEV"]["frontend"]["state"], found["TEST"]["frontend"]["state"]) == ("verified", "untested")
    code, out, _ = await cli(rm.workspace, "inventory")
    assert code == 1 and out.splitlines()[-1] == "not verified where it runs: TEST frontend 1.0 (untested)"


# 8. Anyone could approve anything, under any name.
async def test_only_the_catalogs_approvers_let_a_release_into_prod(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    rm = catalog_changed(
        tmp_path, PROD={"approvers": ["alice", "bob"], "required_approvals": 1, "prevent_self_approval": True}
    )
    async with in_process_worker(ts_env, rm) as tq:
        handle = await ts_env.client.start_workflow(
            ReleaseWorkflow.run,
            ReleaseRequest(release_key=INITIAL, now=True, by="alice"),
            id=f"release-{INITIAL}-{uuid.uuid4()}",
            task_queue=tq,
        )
        await until_status(handle, AWAITING_APPROVAL)
        refusals = {}
        for name in ("mallory", "alice", "b\u043eb"):  # the last with a Cyrillic o
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await handle.execute_update(ReleaseWorkflow.approve, Approval(approver=name, env="PROD"))
            refusals[name] = cause_of(refused.value)
        await handle.execute_update(ReleaseWorkflow.approve, Approval(approver="bob", env="PROD"))
        assert (await handle.result()).status == SUCCESS
    assert refusals["mallory"] == "refused: mallory is not an approver of PROD"
    assert refusals["alice"] == "refused: alice started the release and may not approve its entry into PROD"
    assert "mixes scripts (Cyrillic, Latin)" in refusals["b\u043eb"]
    decisions = [(e["step"], e.get("by") or e.get("approver"), e["env"]) for e in rm.ledger.entries()]
    assert ("start", "alice", None) in decisions and ("approve", "bob", "PROD") in decisions
    assert not [d for d in decisions if d[1] in ("mallory", "b\u043eb") or d[:2] == ("approve", "alice")]


# 9. Catalog text reached the terminal raw.
async def test_a_freeze_reason_draws_nothing_in_the_terminal(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    now = await ts_env.get_current_time()
    window = {"start": "2000-01-01T00:00Z", "end": f"{now.year + 1}-01-01T00:00Z", "reason": "x\n\x1b[2J\x1b[31mOK"}
    rm = catalog_changed(tmp_path, DEV={"freeze": [window]})
    async with in_process_worker(ts_env, rm) as tq:
        handle = await ts_env.client.start_workflow(
            ReleaseWorkflow.run, ReleaseRequest(release_key=INITIAL, now=True), id=str(uuid.uuid4()), task_queue=tq
        )
        state = await until_status(handle, FROZEN)
        await handle.cancel()
    shown = render_progress(state)
    assert "\x1b" not in shown and "FROZEN" in shown
    assert all("\n" not in (d.waiting_for or "") for d in state.deploys)


# 10. A 20 MB catalog was read by every gather; `list` ran 66 s, then blamed Temporal.
async def test_a_huge_catalog_is_refused_in_one_line_at_once(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    catalog = json.loads(CATALOG.read_text())
    catalog["padding"] = "x" * 20_000_000
    huge.write_text(json.dumps(catalog))
    began = time.monotonic()
    with pytest.raises(CatalogError, match=r"is 20,\d{3},\d{3} bytes; the limit is 1,000,000"):
        load_catalog(huge)
    code, out, err = await cli(tmp_path, "list", RELEASE_CATALOG=str(huge))
    assert (code, out, err.count("\n")) == (2, "", 1) and "RELEASE_CATALOG_MAX_BYTES" in err
    assert time.monotonic() - began < 10


# 11. A FAILING_CHECKS typo was accepted and never failed anything.
async def test_a_failing_check_the_environment_never_runs_stops_the_worker_at_start(tmp_path: Path) -> None:
    env = script_env(NO_SERVER, tmp_path, "unused", FAILING_CHECKS="frontend-1.0:QC:securty")
    code, out, err = await run_python([str(REPO / "run_worker.py")], env, limit=60, merge=False)
    assert (code, out) == (2, "")
    assert err == (
        "error: FAILING_CHECKS: frontend-1.0:QC:securty: QC runs no check 'securty'; "
        "its checks are performance, security, health\n"
    )


# 12. The Web UI link assumed the UI on the server's port + 1000.
def test_the_web_ui_link_follows_temporal_ui_url(monkeypatch: pytest.MonkeyPatch) -> None:
    target = {"target_host": "temporal.internal:7233", "namespace": "releases"}
    assert ui_link(target, "release-X") is None  # nothing to go by: no link rather than a wrong one
    monkeypatch.setenv("TEMPORAL_UI_URL", "https://ui.example.com/temporal/")
    assert ui_link(target, "release-X", "r1") == (
        "https://ui.example.com/temporal/namespaces/releases/workflows/release-X/r1/history"
    )
