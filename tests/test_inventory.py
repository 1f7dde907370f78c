"""What each environment holds, from the ledger, with the folders' drift; and the history of an environment.

The workspaces are built with ReleaseManagement's steps (no Temporal), or by hand where a test needs a
ledger line no step writes yet (a rollback, a line from before configuration files). The commands run
as a person runs them, against an address where no server listens: they must not need one.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.inventory import Placement, history, inventory, replay
from release_management import ReleaseManagement
from shared import DecisionRecord, StepInput
from tests.conftest import CATALOG, REPO
from tests.steps import promote
from tests.support import run_python, script_env
from tests.test_gates import through

INITIAL, HOTFIX = "RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"
SIX = [INITIAL, HOTFIX, "RELEASE-DEC-2023-BUGFIXES-PROD", ALPHA_DEV, ALPHA_QC, ALPHA_PROD]
HOLD = "RELEASE-FEB-24-BETA-HOLD"
CONTAINERS = ("frontend", "sbstore", "backendforfrontend")  # the README table's order
NO_SERVER = "127.0.0.1:1"  # nothing listens there: a command that tried to connect would exit 3


def run_of(key: str) -> str:
    return f"run-{key}"


def released(rm: ReleaseManagement, *keys: str) -> None:
    for key in keys:
        promote(rm, key, run_of(key))


async def cli(workspace: Path, *args: str) -> tuple[int, str, str]:
    """run_workflow.py with args: exit code, stdout, stderr. No server, and no catalog to read."""
    env = script_env(NO_SERVER, workspace, "unused", RELEASE_CATALOG=str(workspace / "no-catalog.json"))
    return await run_python([str(REPO / "run_workflow.py"), *args], env, limit=60, merge=False)


def readme_placements(after: str) -> dict[str, dict[str, str]]:
    """The README's table of what each environment holds after a release: env -> container -> version."""
    text = (REPO / "README.md").read_text()
    header = re.search(r"^\| After \|(.*)\|$", text, re.M)
    row = re.search(rf"^\| `{after}` \|( \d[^|]* / [^|]* \|.*)\|$", text, re.M)
    assert header and row, f"README has no table row after {after}"
    envs = [e.strip() for e in header.group(1).split("|")]
    cells = [c.strip().split(" / ") for c in row.group(1).split("|")]
    return {env: dict(zip(CONTAINERS, versions, strict=True)) for env, versions in zip(envs, cells, strict=True)}


def recent(at: object) -> bool:
    when = datetime.fromisoformat(str(at))
    return when.tzinfo is not None and abs((datetime.now(UTC) - when).total_seconds()) < 600


async def test_inventory_json_after_the_six_demo_releases_is_the_readmes_table(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    released(rm, *SIX)
    holder = {"DEV": ALPHA_DEV, "TEST": ALPHA_QC, "QC": ALPHA_QC, "PROD": ALPHA_PROD}
    expected = {
        env: {
            c: {
                "version": v,
                "release_key": holder[env],
                "run_id": run_of(holder[env]),
                "approved_by": None,
                "state": "verified",
            }
            for c, v in sorted(held.items())
        }
        for env, held in readme_placements(ALPHA_PROD).items()
    }
    assert expected["PROD"]["frontend"]["version"] == "1.2"

    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert (code, err) == (0, ""), out + err
    found = json.loads(out)
    assert list(found) == ["DEV", "TEST", "QC", "PROD"]
    assert all(list(held) == sorted(held) for held in found.values())
    assert all(recent(entry.pop("at")) for held in found.values() for entry in held.values())
    assert found == expected

    code, out, err = await cli(tmp_path, "inventory")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    header = ["ENV", "CONTAINER", "VERSION", "STATE", "RELEASE", "AT", "(UTC)", "APPROVED", "BY", "RUN"]
    assert lines[0].split() == header
    assert lines[1].split()[:5] == ["DEV", "backendforfrontend", "1.8", "verified", ALPHA_DEV]
    assert lines[1].split()[-2:] == ["-", run_of(ALPHA_DEV)]
    assert lines[12].split()[:5] == ["PROD", "sbstore", "1.8", "verified", ALPHA_PROD]
    assert lines[13:] == ["No drift: the folders hold what the ledger says."]


async def test_drift_shows_every_file_changed_by_hand(rm: ReleaseManagement, tmp_path: Path) -> None:
    released(rm, INITIAL)
    envs = tmp_path / "environments"
    (envs / "QC" / "frontend-1.0").write_bytes(b"patched in place\n")
    (envs / "TEST" / "sbstore-1.0").rename(envs / "TEST" / "sbstore-1.9")
    (envs / "PROD" / "backendforfrontend-1.0").unlink()
    config = envs / "DEV" / "config" / "frontend.json"
    config.write_text(config.read_text().replace('"frontend-1.0"', '"frontend-9.9"'))
    (envs / "DEV" / "config" / "sbstore.json").unlink()
    (envs / "DEV" / "config" / "backendforfrontend.json").write_text("{ half")
    (envs / "DEV" / "newthing-2.0").write_text("copied by hand\n")
    (envs / "QC" / "sbstore-0.9").write_text("an old copy\n")
    (envs / "PROD" / ".frontend-1.0.abcd.partial").write_text("a temporary file is no artifact\n")

    drift = {(env, c): h.drift for env, held in inventory(tmp_path).placements.items() for c, h in held.items()}
    assert drift == {
        ("DEV", "backendforfrontend"): "config file cannot be read",
        ("DEV", "frontend"): "config file says artifact frontend-9.9",
        ("DEV", "newthing"): "not in the ledger",
        ("DEV", "sbstore"): "no config file",
        ("TEST", "backendforfrontend"): None,
        ("TEST", "frontend"): None,
        ("TEST", "sbstore"): "folder holds sbstore-1.9, not sbstore-1.0",
        ("QC", "backendforfrontend"): None,
        ("QC", "frontend"): "frontend-1.0 differs from the artifactory's",
        ("QC", "sbstore"): "folder also holds sbstore-0.9",
        ("PROD", "backendforfrontend"): "backendforfrontend-1.0 is missing from the folder",
        ("PROD", "frontend"): None,
        ("PROD", "sbstore"): None,
    }

    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert (code, err) == (1, "")
    found = json.loads(out)
    assert found["DEV"]["newthing"] == {
        "version": "2.0",
        "release_key": None,
        "run_id": None,
        "at": None,
        "approved_by": None,
        "state": "untested",
        "drift": "not in the ledger",
    }
    assert found["QC"]["frontend"]["drift"] == "frontend-1.0 differs from the artifactory's"
    assert "drift" not in found["QC"]["backendforfrontend"]

    code, out, err = await cli(tmp_path, "inventory")
    assert (code, err) == (1, "")
    assert "drift: QC frontend: frontend-1.0 differs from the artifactory's" in out.splitlines()
    assert "drift: PROD backendforfrontend: backendforfrontend-1.0 is missing from the folder" in out.splitlines()
    assert len([line for line in out.splitlines() if line.startswith("drift: ")]) == 8
    assert "No drift" not in out
    newthing = next(line for line in out.splitlines() if line.startswith("DEV ") and " newthing " in line)
    assert newthing.split() == ["DEV", "newthing", "2.0", "untested", "-", "?", "-", "-"]


def test_two_versions_and_a_stray_config_are_drift_too(rm: ReleaseManagement, tmp_path: Path) -> None:
    released(rm, INITIAL)
    dev = tmp_path / "environments" / "DEV"
    (dev / "extra-1.0").write_text("one\n")
    (dev / "extra-1.1").write_text("two\n")
    (dev / "config" / "lonely.json").write_text("{}")
    (tmp_path / "artifactory" / "sbstore-1.0").unlink()
    held = inventory(tmp_path).placements["DEV"]
    assert held["extra"] == Placement(None, drift="not in the ledger; folder holds extra-1.0, extra-1.1")
    assert held["lonely"] == Placement(None, drift="not in the ledger; only a config file")
    assert held["sbstore"].drift == "the artifactory has no sbstore-1.0 to compare it with"


def test_a_deploy_from_before_configuration_files_is_not_drift_for_lacking_one(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    # As an older version wrote it: no "applied" (each line was applied), no config file, no gate marks.
    artifact = b"container: frontend\nversion: 0.9\n"
    (tmp_path / "artifactory").mkdir()
    (tmp_path / "artifactory" / "frontend-0.9").write_bytes(artifact)
    (tmp_path / "environments" / "DEV").mkdir(parents=True)
    (tmp_path / "environments" / "DEV" / "frontend-0.9").write_bytes(artifact)
    old = {"release_key": "OLD", "run_id": "old-run", "deploy_key": "OLD:frontend", "container": "frontend"}
    rm.ledger.record({**old, "version": "0.9", "step": "build", "env": "DEV", "at": "2023-10-01T10:00:00+00:00"})
    rm.ledger.record({**old, "version": "0.9", "step": "deploy", "env": "DEV", "at": "2023-10-01T10:00:03+00:00"})
    rm.ledger.record({**old, "version": "0.9", "step": "test", "env": "DEV", "at": "2023-10-01T10:00:06+00:00"})
    assert inventory(tmp_path).placements["DEV"]["frontend"] == Placement(
        "0.9", "OLD", "old-run", *["2023-10-01T10:00:03+00:00", None]
    )

    # A deploy of today writes one: without it, that is drift. The old deploy still is not.
    through(rm, INITIAL, "sbstore", ["DEV"], run_of(INITIAL))
    (tmp_path / "environments" / "DEV" / "config" / "sbstore.json").unlink()
    held = inventory(tmp_path).placements["DEV"]
    assert (held["frontend"].drift, held["sbstore"].drift) == (None, "no config file")


async def test_history_lists_promotions_newest_first(rm: ReleaseManagement, tmp_path: Path) -> None:
    released(rm, INITIAL, HOTFIX, ALPHA_DEV)
    code, out, err = await cli(tmp_path, "history", "DEV", "frontend")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split()[4:] for line in lines] == [
        ["1.2", "promoted", "by", ALPHA_DEV, "(run", f"{run_of(ALPHA_DEV)})"],
        ["1.1", "promoted", "by", HOTFIX, "(run", f"{run_of(HOTFIX)})"],
        ["1.0", "promoted", "by", INITIAL, "(run", f"{run_of(INITIAL)})"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  frontend  1\.\d  promoted by .*", s) for s in lines)

    moves, skipped, total = history(tmp_path, "DEV")
    assert [(m.container, m.version, m.release_key) for m in moves[:3]] == [
        ("backendforfrontend", "1.8", ALPHA_DEV),
        ("sbstore", "1.8", ALPHA_DEV),
        ("frontend", "1.2", ALPHA_DEV),
    ]
    assert (len(moves), skipped, total) == (9, 0, 9)

    code, out, err = await cli(tmp_path, "history", "prod", "sbstore")
    assert (code, len(out.splitlines()), err) == (0, 1, "")
    assert out.split()[4:7] == ["1.0", "promoted", "by"]
    code, out, err = await cli(tmp_path, "history", "PROD", "nosuch")
    assert (code, out, err) == (0, "No promotions or rollbacks of nosuch into PROD in the ledger.\n", "")


async def test_a_bad_environment_or_container_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = await cli(tmp_path, "history", "STAGE")
    assert (code, out) == (2, "")
    assert err == "error: unknown environment 'STAGE'; the environments are DEV, TEST, QC, PROD\n"
    code, out, err = await cli(tmp_path, "history", "QC", "../x")
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith("error: container '../x' is invalid")


async def test_an_empty_workspace_and_unreadable_ledger_lines_are_said_so(tmp_path: Path) -> None:
    code, out, err = await cli(tmp_path, "inventory")
    assert (code, out, err) == (
        0,
        "Nothing deployed: the ledger records no deploy, and the environments hold no artifact.\n",
        "",
    )
    assert await cli(tmp_path, "inventory", "--json") == (0, "{}\n", "")
    assert await cli(tmp_path, "history", "DEV") == (0, "No promotions or rollbacks into DEV in the ledger.\n", "")
    assert not (tmp_path / "ledger.jsonl").exists()  # reading creates nothing

    rm = ReleaseManagement(tmp_path, REPO / "releases.json")
    released(rm, INITIAL)
    ledger = tmp_path / "ledger.jsonl"
    torn = b'{"step": "deploy", "env": "QC", "container": "frontend", "ver\n'
    outside = b'{"step": "deploy", "env": "QC", "container": "../../etc", "version": "1.0"}\n'
    lines = len(ledger.read_bytes().splitlines())
    ledger.write_bytes(ledger.read_bytes() + torn + outside)
    # Lines written by hand carry no link: the chain breaks there, and the inventory exits 1 saying so.
    broken = f"ledger.jsonl is broken at line {lines + 1}: it carries no link to the line before it"
    code, out, err = await cli(tmp_path, "inventory")
    assert (code, err) == (1, "")
    assert out.splitlines()[-3:] == [
        "No drift: the folders hold what the ledger says.",
        f"{broken}: what it says after that line cannot be trusted",
        "note: 2 ledger lines could not be read and were skipped",
    ]
    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert json.loads(out)["QC"]["frontend"]["release_key"] == INITIAL
    assert (code, err) == (1, f"{broken}\nnote: 2 ledger lines could not be read and were skipped\n")
    code, out, err = await cli(tmp_path, "history", "QC", "frontend")
    assert out.splitlines()[1:] == ["note: 2 ledger lines could not be read and were skipped"]


async def test_approvals_show_who_approved_the_deploy_or_else_the_release(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    run = run_of(HOLD)
    at = datetime.now(UTC)
    rm.record_approval(DecisionRecord(release_key=HOLD, run_id=run, by="bob", at=at, deploy_keys=[HOLD]))
    rm.record_approval(DecisionRecord(release_key=HOLD, run_id=run, by="alice", at=at, deploy_keys=[f"{HOLD}:sbstore"]))
    # Another run's approval, and an unfreeze, approve nothing of this run.
    other = DecisionRecord(release_key=HOLD, run_id="another", by="eve", at=at, deploy_keys=[HOLD])
    rm.record_approval(other)
    rm.record_approval(other.model_copy(update={"run_id": run, "step": "unfreeze", "environments": ["DEV"]}))
    released(rm, HOLD)

    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert (code, err) == (0, "")
    found = json.loads(out)
    assert list(found) == ["DEV", "TEST"]
    for env in ("DEV", "TEST"):
        assert {c: (e["version"], e["approved_by"]) for c, e in found[env].items()} == {
            "backendforfrontend": ("1.9", "bob"),
            "frontend": ("1.3", "bob"),
            "sbstore": ("1.9", "alice"),
        }
    code, out, err = await cli(tmp_path, "history", "TEST", "sbstore")
    assert out.split("  ")[-1] == f"promoted by {HOLD} (run {run}), approved by alice\n"
    code, out, err = await cli(tmp_path, "inventory")
    assert re.search(rf"^TEST +sbstore +1\.9 +verified +{HOLD} +\S+ \S+ +alice +{run}$", out, re.M), out


async def test_a_rollback_line_gives_back_the_previous_holder_or_nothing(rm: ReleaseManagement, tmp_path: Path) -> None:
    released(rm, INITIAL)
    qc = tmp_path / "environments" / "QC"
    kept = {name: (qc / name).read_bytes() for name in ("sbstore-1.0", "config/sbstore.json")}
    initial_at = next(e["at"] for e in rm.ledger.entries() if e["step"] == "deploy" and e["env"] == "QC")
    released(rm, HOTFIX)
    assert inventory(tmp_path).placements["QC"]["sbstore"].version == "1.7"

    # What a rollback of HOTFIX's sbstore in QC does (issue 11): the files as they were, then its line.
    (qc / "sbstore-1.7").unlink()
    for name, data in kept.items():
        (qc / name).write_bytes(data)
    line = {
        "step": "rollback",
        "env": "QC",
        "container": "sbstore",
        "version": "1.7",
        "release_key": HOTFIX,
        "run_id": run_of(HOTFIX),
        "deploy_key": f"{HOTFIX}:sbstore",
        "at": datetime.now(UTC).isoformat(),
        "by": "carol",
    }
    restored = {"version": "1.0", "release_key": INITIAL, "run_id": run_of(INITIAL), "at": initial_at}
    rm.ledger.record({**line, "restored": {**restored, "approved_by": None}, "applied": True})
    # A retry's line that found it done changes nothing.
    rm.ledger.record({**line, "restored": {**restored, "version": "0.1"}, "applied": False})

    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert (code, err) == (0, "")
    # No drift: the files match; and 1.0 passed its tests in QC.
    assert json.loads(out)["QC"]["sbstore"] == {**restored, "approved_by": None, "state": "verified"}
    code, out, err = await cli(tmp_path, "history", "QC", "sbstore")
    assert [s.split("  ")[-1] for s in out.splitlines()] == [
        f"rolled back to 1.0 by {HOTFIX} (run {run_of(HOTFIX)}), asked by carol",
        f"promoted by {HOTFIX} (run {run_of(HOTFIX)})",
        f"promoted by {INITIAL} (run {run_of(INITIAL)})",
    ]
    assert out.splitlines()[0].split()[4] == "1.7"  # the version rolled back from

    # PROD held nothing of frontend before INITIAL: rolled back, it holds none, and the folder keeps a copy.
    line = {**line, "env": "PROD", "container": "frontend", "version": "1.0", "release_key": INITIAL, "by": None}
    rm.ledger.record({**line, "run_id": run_of(INITIAL), "restored": None, "applied": True})
    prod = inventory(tmp_path).placements["PROD"]
    assert prod["frontend"] == Placement("1.0", drift="not in the ledger")
    (tmp_path / "environments" / "PROD" / "frontend-1.0").unlink()
    (tmp_path / "environments" / "PROD" / "config" / "frontend.json").unlink()
    assert sorted(inventory(tmp_path).placements["PROD"]) == ["backendforfrontend", "sbstore"]
    code, out, err = await cli(tmp_path, "history", "PROD", "frontend")
    assert out.splitlines()[0].split("  ")[-1] == f"rolled back (nothing before) by {INITIAL} (run {run_of(INITIAL)})"


def test_replay_takes_applied_lines_in_order_and_fills_in_a_restored_approver() -> None:
    deploy = {"step": "deploy", "env": "QC", "container": "sbstore", "deploy_key": "R1:sbstore", "release_key": "R1"}
    entries: list[dict[str, object]] = [
        {"step": "approve", "env": None, "run_id": "a", "deploy_key": "R1", "approver": "dan", "applied": True},
        {"step": "approve", "env": None, "run_id": "a", "deploy_key": "R1", "approver": "late", "applied": False},
        {**deploy, "run_id": "a", "version": "1.0", "at": "2024-01-01T00:00:00Z"},  # before "applied": applied
        {**deploy, "run_id": "b", "version": "1.1", "at": "2024-01-02T00:00:00Z", "applied": True},
        {**deploy, "run_id": "b", "version": "1.1", "at": "2024-01-02T00:00:09Z", "applied": False},
        {**deploy, "step": "rollback", "run_id": "b", "version": "1.1", "restored": {"version": "1.0", "run_id": "a"}},
        {**deploy, "run_id": "c", "version": "1.2", "env": "STAGE"},
        {**deploy, "step": "rollback", "run_id": "c", "version": "1.2", "restored": "1.0"},
    ]
    held, moves, skipped = replay(entries)
    assert held == {"QC": {"sbstore": Placement("1.0", None, "a", None, "dan")}}
    assert [(m.version, m.run_id, m.by, m.rollback) for m in moves] == [
        ("1.0", "a", "dan", False),
        ("1.1", "b", None, False),
        ("1.1", "b", None, True),
    ]
    assert skipped == 2


def test_a_config_value_edited_by_hand_is_drift(tmp_path: Path) -> None:
    """The deploy's ledger line keeps its config's digest, so an edit that keeps the artifact's name shows too."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    for d in rm.gather_deployments("RELEASE-NOV-23-INITIAL").deploys:
        step = StepInput(release_key="RELEASE-NOV-23-INITIAL", run_id="run-1", deploy=d, env="DEV")
        rm.build(step)
        rm.deploy(step)
        rm.test(step)
    config = rm.config_path("DEV", "frontend")
    config.write_text(config.read_text().replace('"replicas": 1', '"replicas": 5'))
    drift = {c: h.drift for c, h in inventory(tmp_path).placements["DEV"].items()}
    assert drift == {
        "backendforfrontend": None,
        "frontend": "config file differs from the one its deploy wrote",
        "sbstore": None,
    }
