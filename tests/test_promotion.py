"""Verified upstream (orchestrator/promotion.py): a version is promoted only from where the ledger shows it
passing its tests, asked through the ledger's index or, without one, the whole ledger."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from orchestrator import ledger_index
from orchestrator.errors import NON_RETRYABLE_ERRORS, GateFailed, NotVerified
from orchestrator.ledger import Ledger
from orchestrator.ledger_chain import line_hash
from release_management import ReleaseManagement
from tests.conftest import CATALOG
from tests.steps import promote, step_of, through

INITIAL = "RELEASE-NOV-23-INITIAL"
HOTFIX = "RELEASE-NOV-23-HOTFIX-STAGE"
ALPHA_DEV, ALPHA_QC, ALPHA_PROD = "RELEASE-JAN-24-ALPHA-DEV", "RELEASE-JAN-24-ALPHA-QC", "RELEASE-JAN-24-ALPHA-PROD"


# --- refusals: a version is promoted only from where it passed its tests ---------------------------------


def test_prod_refuses_a_version_never_tested_in_qc_even_copied_there_by_hand(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    promote(rm, ALPHA_DEV)
    qc = step_of(rm, ALPHA_QC, "sbstore", "TEST")
    rm.deploy(qc)
    rm.test(qc)
    # Passed DEV and TEST; put into QC by hand, with a report that says it passed there.
    (tmp_path / "environments" / "QC").mkdir(parents=True)
    test_copy = (tmp_path / "environments" / "TEST" / "sbstore-1.8").read_bytes()
    (tmp_path / "environments" / "QC" / "sbstore-1.8").write_bytes(test_copy)
    forged = tmp_path / "artifactory" / "reports" / "sbstore-1.8" / "QC-security.json"
    forged.write_text(json.dumps({"passed": True, "run_id": "by-hand", "check": "security"}))
    prod = step_of(rm, ALPHA_PROD, "sbstore", "PROD")
    lines = len(rm.ledger.entries())
    with pytest.raises(NotVerified) as err:
        rm.deploy(prod)
    assert str(err.value) == "cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC"
    assert type(err.value).__name__ in NON_RETRYABLE_ERRORS
    assert not (tmp_path / "environments" / "PROD").exists(), "a refused deploy wrote something"
    assert len(rm.ledger.entries()) == lines
    # Deployed to QC by a release, not yet tested there: still refused.
    rm.deploy(qc.model_copy(update={"env": "QC"}))
    with pytest.raises(NotVerified, match="^cannot deploy sbstore 1.8 to PROD: it never passed its tests in QC$"):
        rm.deploy(prod)
    rm.test(qc.model_copy(update={"env": "QC"}))
    assert rm.deploy(prod).applied


def test_dev_refuses_a_version_the_artifactory_never_built(rm: ReleaseManagement, tmp_path: Path) -> None:
    s = step_of(rm, INITIAL, "frontend", "DEV")
    # An artifact put into the artifactory by hand is not a build.
    (tmp_path / "artifactory").mkdir()
    (tmp_path / "artifactory" / "frontend-1.0").write_text("container: frontend\nversion: 1.0\n")
    with pytest.raises(NotVerified) as err:
        rm.deploy(s)
    assert str(err.value) == "cannot deploy frontend 1.0 to DEV: the artifactory never built it"
    assert rm.contents("DEV") == []
    # A build of another version or container proves nothing for this one.
    rm.build(step_of(rm, ALPHA_DEV, "frontend", "DEV"))
    rm.build(step_of(rm, INITIAL, "sbstore", "DEV"))
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to DEV: the artifactory never built it$"):
        rm.deploy(s)
    rm.build(s)
    assert rm.deploy(s).applied


def test_a_failed_gate_upstream_is_no_proof(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG, failing_checks=frozenset({("frontend-1.0", "TEST", "integration")}))
    s = through(rm, INITIAL, "frontend", ["DEV"])
    s = s.model_copy(update={"env": "TEST"})
    rm.deploy(s)
    with pytest.raises(GateFailed):
        rm.test(s)
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to QC: it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("QC") == []


@pytest.mark.parametrize("index", [True, False], ids=["index", "whole-ledger"])
def test_a_later_failure_takes_back_an_earlier_pass(tmp_path: Path, index: bool) -> None:
    """Passed in TEST by one run, then failed there in another: the latest verdict is the one that counts."""
    rm = ReleaseManagement(tmp_path, CATALOG)
    s = through(rm, INITIAL, "frontend", ["DEV", "TEST"], run="run-1")
    assert rm.ledger.verified("frontend", "1.0", "TEST")
    failing = ReleaseManagement(tmp_path, CATALOG, failing_checks=frozenset({("frontend-1.0", "TEST", "integration")}))
    again = s.model_copy(update={"run_id": "run-2"})
    failing.deploy(again)
    with pytest.raises(GateFailed):
        failing.test(again)
    if not index:
        rm.ledger.index.path.unlink()
        rm.ledger.index.path.mkdir()  # no index to be had: the whole ledger answers
    assert not rm.ledger.verified("frontend", "1.0", "TEST")
    with pytest.raises(NotVerified, match="^cannot deploy frontend 1.0 to QC: it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    # Passing again (a fix made outside) makes it a proof again.
    rm.test(s.model_copy(update={"run_id": "run-3"}))
    assert rm.ledger.verified("frontend", "1.0", "TEST")


def test_a_question_on_an_empty_workspace_creates_no_ledger(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    assert not rm.ledger.verified("frontend", "1.0", "QC")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_version_tested_in_qc_by_an_earlier_release_is_accepted(rm: ReleaseManagement) -> None:
    promote(rm, ALPHA_DEV, run="alpha-dev-run")
    promote(rm, ALPHA_QC, run="alpha-qc-run")
    # Another release, another run: the proof is the version's, whoever tested it.
    promote(rm, ALPHA_PROD, run="alpha-prod-run")
    assert rm.contents("PROD") == ["backendforfrontend-1.8", "frontend-1.2", "sbstore-1.8"]
    runs = {e["run_id"] for e in rm.ledger.entries() if e["step"] == "deploy" and e["env"] == "PROD"}
    assert runs == {"alpha-prod-run"}


# --- Ledger.verified: through the index, and through the whole ledger ---------------------------------------


def proof_lines() -> list[dict[str, object]]:
    def line(step: str, env: str | None, **extra: object) -> dict[str, object]:
        return {"run_id": "r", "deploy_key": f"K:{step}:{env}", "container": "frontend", "version": "1.0",
                "step": step, "env": env, "applied": True, **extra}  # fmt: skip

    return [
        line("build", "DEV"),
        line("test", "DEV", passed=True, checks=["unit"]),
        line("test", "TEST", passed=False, failed_check="integration"),
        line("test", "QC"),  # no "passed": proves nothing (before 1.1, a test that passed)
        line("deploy", "PROD"),  # deployed is not tested
        {**line("test", "PROD", passed=True), "version": "1.1"},
        {**line("approve", None), "approver": "alice"},
    ]


def answers(ledger: Ledger) -> dict[tuple[str, str, str], bool]:
    asked = [
        ("frontend", "1.0", "artifactory"),
        ("frontend", "1.0", "DEV"),
        ("frontend", "1.0", "TEST"),
        ("frontend", "1.0", "QC"),
        ("frontend", "1.0", "PROD"),
        ("frontend", "1.1", "PROD"),
        ("frontend", "1.1", "artifactory"),
        ("sbstore", "1.0", "artifactory"),
        ("sbstore", "1.0", "DEV"),
    ]
    return {q: ledger.verified(*q).passed for q in asked}


EXPECTED = {
    ("frontend", "1.0", "artifactory"): True,
    ("frontend", "1.0", "DEV"): True,
    ("frontend", "1.0", "TEST"): False,
    ("frontend", "1.0", "QC"): False,
    ("frontend", "1.0", "PROD"): False,
    ("frontend", "1.1", "PROD"): True,
    ("frontend", "1.1", "artifactory"): False,
    ("sbstore", "1.0", "artifactory"): False,
    ("sbstore", "1.0", "DEV"): False,
}


def written(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.path.write_bytes(b"".join((json.dumps(e) + "\n").encode() for e in proof_lines()))
    return ledger


def no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int) -> None:
        raise AssertionError("the whole ledger was read")

    monkeypatch.setattr(Ledger, "_read", staticmethod(refuse))


def test_verified_through_the_index_reads_no_whole_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = written(tmp_path)
    assert answers(ledger) == EXPECTED  # builds the index
    assert ledger.index.path.is_file()
    with monkeypatch.context() as m:
        no_whole_reads(m)
        assert answers(ledger) == EXPECTED
        assert answers(Ledger(ledger.path)) == EXPECTED
        # Proofs appended since are indexed as they are appended, or caught up on from the ledger's tail.
        ledger.record({"step": "build", "container": "sbstore", "version": "1.0", "run_id": "r", "env": "DEV"})
        with open(ledger.path, "ab") as f:  # as a process whose index failed would append it: linked, not indexed
            last = ledger.path.read_bytes().splitlines()[-1]
            entry = {"step": "test", "container": "sbstore", "version": "1.0", "env": "DEV", "passed": True}
            f.write(json.dumps({**entry, "prev": line_hash(last)}).encode() + b"\n")
        after = answers(Ledger(ledger.path))
    assert after == EXPECTED | {("sbstore", "1.0", "artifactory"): True, ("sbstore", "1.0", "DEV"): True}


@pytest.mark.parametrize("index", ["deleted", "a folder in its place", "held by another connection", "version 1"])
def test_verified_without_a_usable_index_answers_from_the_whole_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: str
) -> None:
    ledger = written(tmp_path)
    assert answers(ledger) == EXPECTED
    index_files = [Path(f"{ledger.index.path}{s}") for s in ("", "-wal", "-shm")]
    other: sqlite3.Connection | None = None
    if index in ("deleted", "a folder in its place"):
        for p in index_files:
            p.unlink(missing_ok=True)
        if index == "a folder in its place":
            ledger.index.path.mkdir()
    elif index == "held by another connection":
        monkeypatch.setattr(type(ledger.index), "BUSY_TIMEOUT", 0.0)
        other = sqlite3.connect(ledger.index.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
    else:
        # An index built before proofs existed: claims only; it must be built again, not trusted.
        with closing(sqlite3.connect(ledger.index.path, isolation_level=None)) as db:
            db.execute("DROP TABLE proofs")
            db.execute("PRAGMA user_version = 1")
    reads: list[int] = []
    real = Ledger._read

    def counted(fd: int) -> Any:
        reads.append(fd)
        return real(fd)

    try:
        with monkeypatch.context() as m:
            m.setattr(Ledger, "_read", staticmethod(counted))
            assert answers(Ledger(ledger.path)) == EXPECTED
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    rebuilt = index in ("deleted", "version 1")
    # Rebuilt: the index answers (built from the ledger's bytes); unusable: each question reads the whole ledger.
    assert (len(reads) == 0) == rebuilt, reads
    if rebuilt:
        with closing(sqlite3.connect(f"file:{ledger.index.path}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == ledger_index.ClaimIndex.VERSION
            assert (
                db.execute("SELECT count(*) FROM proofs WHERE passed").fetchone()[0] == 3
            )  # QC's line without "passed" proves nothing


def test_a_deploy_is_refused_or_allowed_alike_with_or_without_the_index(tmp_path: Path) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG)
    rm.ledger.index.path.mkdir()  # no index can be made: every check reads the whole ledger
    s = step_of(rm, INITIAL, "frontend", "DEV")
    with pytest.raises(NotVerified, match="the artifactory never built it$"):
        rm.deploy(s)
    through(rm, INITIAL, "frontend", ["DEV"])
    with pytest.raises(NotVerified, match="it never passed its tests in TEST$"):
        rm.deploy(s.model_copy(update={"env": "QC"}))
    assert rm.contents("DEV") == ["frontend-1.0"]
