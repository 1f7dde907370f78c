"""The ledger in PostgreSQL (LEDGER_URL), against a real server the tests start: the same meaning line for line
as ledger.jsonl, exactly one applied line per step by the database's constraint, the chain kept, the store
moved both ways, and a release that outlives the database going away."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from orchestrator.errors import LedgerBroken
from orchestrator.inventory import Move, history, inventory
from orchestrator.ledger_pg import PostgresLedger
from release_management import ReleaseManagement
from shared import DecisionRecord, ReleaseRequest, RollbackTarget
from tests.conftest import CATALOG, REPO
from tests.postgres import PostgresServer, free_port
from tests.steps import promote
from tests.support import in_process_worker, run_python, script_env, until
from workflows import ReleaseWorkflow

SIX = [
    "RELEASE-NOV-23-INITIAL",
    "RELEASE-NOV-23-HOTFIX-STAGE",
    "RELEASE-DEC-2023-BUGFIXES-PROD",
    "RELEASE-JAN-24-ALPHA-DEV",
    "RELEASE-JAN-24-ALPHA-QC",
    "RELEASE-JAN-24-ALPHA-PROD",
]
VARYING = ("at", "started_at", "prev")  # times, and the links over them


async def cli(workspace: Path, *args: str, **env: str) -> tuple[int, str, str]:
    variables = script_env("127.0.0.1:1", workspace, "unused", **env)
    return await run_python([str(REPO / "run_workflow.py"), *args], variables, limit=60, merge=False)


def released(rm: ReleaseManagement) -> None:
    for key in SIX:
        try:
            promote(rm, key, f"run-{key}")
        except Exception:  # BUGFIXES-PROD is refused in PROD, as in the demo: its lines so far stay
            pass


def steady(entries: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in e.items() if k not in VARYING} for e in entries]


def test_the_same_steps_mean_the_same_in_both_stores(tmp_path: Path, ledger_url: str) -> None:
    in_file = ReleaseManagement(tmp_path / "file", CATALOG)
    in_pg = ReleaseManagement(tmp_path / "pg", CATALOG, ledger_url=ledger_url)
    held = "RELEASE-JAN-24-ALPHA-PROD"  # its PROD deploy of sbstore held by the on_failure policy, as recorded
    hold = DecisionRecord(
        release_key=held, run_id=f"run-{held}", by="on_failure: hold", at=datetime.now(UTC),
        deploy_keys=[f"{held}:sbstore"], step="hold", environments=["PROD"],
    )  # fmt: skip
    for rm in (in_file, in_pg):
        released(rm)
        rm.record_approval(hold)
    assert steady(in_pg.ledger.entries()) == steady(in_file.ledger.entries())
    assert not (tmp_path / "pg" / "ledger.jsonl").exists()
    for question in [("frontend", "1.2", "PROD"), ("sbstore", "1.1", "QC"), ("sbstore", "1.7", "artifactory")]:
        assert in_pg.ledger.verified(*question) == in_file.ledger.verified(*question)
    assert in_pg.ledger.verify().broken_at is None and in_pg.ledger.verify().lines == len(in_file.ledger.entries())
    file_inv = inventory(tmp_path / "file").as_json()
    pg_inv = inventory(tmp_path / "pg", ledger_url).as_json()
    for inv in (file_inv, pg_inv):
        for placed in inv.values():
            for entry in placed.values():
                entry.pop("at"), entry.pop("run_id")
    assert pg_inv == file_inv and pg_inv["PROD"]["frontend"]["state"] == "verified"
    assert pg_inv["PROD"]["sbstore"]["state"] == "held"
    for env, container in [("DEV", None), ("QC", "sbstore"), ("PROD", "frontend")]:
        in_file_moves, _, total = history(tmp_path / "file", env, container)
        in_pg_moves, _, pg_total = history(tmp_path / "pg", env, container, ledger_url)
        assert [steady_move(m) for m in in_pg_moves] == [steady_move(m) for m in in_file_moves] and pg_total == total
    target = RollbackTarget(env="QC", container="sbstore")
    assert in_pg.rollback_choice(target) == in_file.rollback_choice(target) == "1.7"


def steady_move(m: Move) -> tuple[object, ...]:
    return (m.env, m.container, m.version, m.release_key, m.by, m.rollback)


def test_one_applied_line_per_step_among_racing_workers(ledger_url: str) -> None:
    workers = [PostgresLedger(ledger_url), PostgresLedger(ledger_url)]  # two machines' connections
    step = {"run_id": "r", "deploy_key": "K:frontend", "step": "deploy", "env": "QC", "container": "frontend"}
    answers: list[bool] = []
    start = threading.Barrier(16)

    def write(ledger: PostgresLedger) -> None:
        start.wait()
        answers.append(ledger.record_unless_claimed({**step, "version": "1.0"}))

    threads = [threading.Thread(target=write, args=(workers[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False] * 15 + [True]
    lines = workers[0].entries()
    assert len(lines) == 16 and [e["applied"] for e in lines].count(True) == 1
    assert workers[1].verify().broken_at is None and workers[1].applied_before(("r", "K:frontend", "deploy", "QC"))


async def test_the_database_refuses_edits_and_an_edited_import_waits_for_a_seal(
    tmp_path: Path, ledger_url: str
) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    promote(rm, "RELEASE-NOV-23-INITIAL")
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        PostgresLedger(ledger_url).migrate()
        conn.execute("INSERT INTO ledger_lines (number, line, applied, readable) VALUES (1, '{}', true, true)")
        with pytest.raises(psycopg.errors.RaiseException, match="the ledger is append-only: UPDATE"):
            conn.execute("UPDATE ledger_lines SET line = '{\"x\": 1}'")
        conn.execute("ALTER TABLE ledger_lines DISABLE TRIGGER ledger_lines_append_only")
        conn.execute("DELETE FROM ledger_lines")
        conn.execute("ALTER TABLE ledger_lines ENABLE TRIGGER ledger_lines_append_only")

    lines = rm.ledger.path.read_text().splitlines()
    tested = next(i for i, line in enumerate(lines) if '"passed": true' in line)
    lines[tested] = lines[tested].replace('"passed": true', '"passed":false')
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    code, out, err = await cli(tmp_path, "ledger", "import", str(edited), LEDGER_URL=ledger_url)
    assert code == 1 and f"is broken at line {tested + 2}: its link does not match line {tested + 1}" in out, out + err
    with pytest.raises(LedgerBroken, match="promotions wait for run_workflow.py ledger seal"):
        PostgresLedger(ledger_url).verified("frontend", "1.0", "artifactory")
    code, out, _ = await cli(tmp_path, "ledger", "seal", "--by", "dana", "--reason", "edit seen", LEDGER_URL=ledger_url)
    assert code == 0, out
    assert PostgresLedger(ledger_url).verified("frontend", "1.0", "artifactory").passed
    assert (await cli(tmp_path, "ledger", "verify", LEDGER_URL=ledger_url))[0] == 0


@pytest.mark.slow(15)
async def test_a_ledger_moves_to_postgres_and_back_with_the_same_inventory(tmp_path: Path, ledger_url: str) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    released(rm)
    before = await cli(tmp_path, "inventory", "--json")
    code, out, err = await cli(tmp_path, "ledger", "import", str(rm.ledger.path), LEDGER_URL=ledger_url)
    assert code == 0 and out.startswith(f"Imported {len(rm.ledger.lines())} lines into the ledger in PostgreSQL")
    assert await cli(tmp_path, "inventory", "--json", LEDGER_URL=ledger_url) == before
    assert (await cli(tmp_path, "ledger", "verify", LEDGER_URL=ledger_url))[0] == 0
    code, _, err = await cli(tmp_path, "ledger", "import", str(rm.ledger.path), LEDGER_URL=ledger_url)
    assert (code, err.splitlines()[-1].split(" holds ")[-1]) == (
        2,
        f"{len(rm.ledger.lines())} lines: import into an empty one",
    )

    back = tmp_path / "back"
    back.mkdir()
    code, _, err = await cli(tmp_path, "ledger", "export", str(back / "ledger.jsonl"), LEDGER_URL=ledger_url)
    database = ledger_url.rsplit("/", 1)[1]
    assert (code, err) == (
        0,
        f"Exported {len(rm.ledger.lines())} lines of the ledger in PostgreSQL (127.0.0.1/{database})\n",
    )
    assert (back / "ledger.jsonl").read_bytes() == rm.ledger.path.read_bytes()


async def test_a_worker_says_in_one_line_when_the_database_is_away_or_newer(tmp_path: Path, ledger_url: str) -> None:
    worker = [str(REPO / "run_worker.py")]
    away = f"postgresql://postgres@127.0.0.1:{free_port()}/ledger"
    code, out, err = await run_python(worker, script_env("127.0.0.1:1", tmp_path, "q", LEDGER_URL=away), merge=False)
    assert (code, out, err.count("\n")) == (3, "", 1) and err.startswith(
        "error: the ledger in PostgreSQL (127.0.0.1/ledger) is unavailable: "
    )
    assert err.endswith("; start it, or unset LEDGER_URL for ledger.jsonl\n")

    PostgresLedger(ledger_url).migrate()
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute("INSERT INTO ledger_schema VALUES (99, now())")
    code, out, err = await run_python(
        worker, script_env("127.0.0.1:1", tmp_path, "q", LEDGER_URL=ledger_url), merge=False
    )
    assert (code, out) == (2, "")
    assert err.endswith(
        "is at schema 99; this code knows schema 2 at most: run a worker of the version that migrated it\n"
    )

    code, _, err = await run_python(
        worker, script_env("127.0.0.1:1", tmp_path, "q", LEDGER_URL="mysql://x"), merge=False
    )
    assert (code, err) == (2, "error: LEDGER_URL='mysql://x' is not a postgresql:// URL (unset it for ledger.jsonl)\n")


@pytest.mark.slow(30)
async def test_a_release_outlives_the_database_going_away(dev_server: WorkflowEnvironment, tmp_path: Path) -> None:
    server = PostgresServer.start()  # its own: this test stops it
    try:
        url = server.new_database()
        rm = ReleaseManagement(tmp_path, CATALOG, step_seconds=0.3, ledger_url=url)
        async with in_process_worker(dev_server, rm) as tq:
            handle = await dev_server.client.start_workflow(
                ReleaseWorkflow.run,
                ReleaseRequest(release_key="RELEASE-NOV-23-INITIAL", now=True),
                id=f"release-pg-{uuid.uuid4()}",
                task_queue=tq,
            )
            await until(lambda: sum("container" in e for e in rm.ledger.entries()) >= 6)
            server.stop()

            async def unavailable() -> bool:
                pending = (await handle.describe()).raw_description.pending_activities
                return any("is unavailable" in p.last_failure.message for p in pending)

            async with asyncio.timeout(60):
                while not await unavailable():  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            server.run()
            result = await asyncio.wait_for(handle.result(), 120)
        assert result.status == "SUCCESS"
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        steps = [
            (e["deploy_key"], e["step"], e["env"]) for e in rm.ledger.entries() if e.get("applied") and "container" in e
        ]
        assert len(steps) == 27 == len(set(steps))  # every step applied once, none lost
        assert rm.ledger.verify().broken_at is None
        assert sorted(p.name for p in (tmp_path / "environments" / "PROD").iterdir() if p.is_file()) == [
            "backendforfrontend-1.0",
            "frontend-1.0",
            "sbstore-1.0",
        ]
        assert (
            json.loads((tmp_path / "environments" / "PROD" / "config" / "frontend.json").read_text())["version"]
            == "1.0"
        )
    finally:
        server.remove()
