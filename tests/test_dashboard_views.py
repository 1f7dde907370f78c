"""The dashboard's reading of the ledger and of who asks, without a browser: what it shows is what inventory
says, after appends, after an edit in place, and with PostgreSQL; the proxy's header counts only from the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.dashboard.ledger_view import LedgerView
from orchestrator.dashboard.people import DashboardSettings
from orchestrator.inventory import history, inventory
from orchestrator.ledger import open_ledger
from release_management import ReleaseManagement
from tests.conftest import CATALOG
from tests.test_inventory import ALPHA_PROD, HOTFIX, INITIAL, SIX, released, run_of


def test_the_view_read_by_appends_is_the_inventory_read_whole(rm: ReleaseManagement, tmp_path: Path) -> None:
    view = LedgerView(tmp_path)
    assert view.refresh() is True and view.picture.inventory.placements == {}
    released(rm, INITIAL)
    assert view.refresh() is True
    assert view.refresh() is False  # nothing new: nothing read
    offset = view.tail.offset  # type: ignore[union-attr]
    released(rm, *SIX[1:])
    assert view.refresh() is True and view.tail.offset > offset  # type: ignore[union-attr]
    whole = inventory(tmp_path)
    assert view.picture.inventory.as_json() == whole.as_json()
    assert view.picture.inventory.chain == whole.chain
    moves, total = view.history("PROD")
    expected, _, count = history(tmp_path, "PROD")
    assert (moves, total) == (expected, count)
    of_run = [e for e in open_ledger(tmp_path).entries() if e.get("run_id") == run_of(HOTFIX)]
    assert view.run_lines(run_of(HOTFIX)) == of_run and len(of_run) > 3


def test_an_edit_in_place_and_a_changed_file_are_seen(rm: ReleaseManagement, tmp_path: Path) -> None:
    released(rm, INITIAL)
    view = LedgerView(tmp_path)
    view.refresh()
    ledger = tmp_path / "ledger.jsonl"
    data = ledger.read_bytes()
    ledger.write_bytes(data.replace(b'"passed": true', b'"passed":false', 1))
    assert view.refresh() is True
    assert view.picture.inventory.chain.broken_at is not None
    assert view.picture.inventory.chain == inventory(tmp_path).chain

    (tmp_path / "environments" / "QC" / "frontend-1.0").write_bytes(b"patched by hand\n")
    assert view.refresh() is True
    assert "differs from the artifactory" in (view.picture.inventory.placements["QC"]["frontend"].drift or "")


def test_the_view_of_a_postgresql_ledger_is_its_inventory(tmp_path: Path, ledger_url: str) -> None:
    rm = ReleaseManagement(tmp_path, CATALOG, ledger_url=ledger_url)
    released(rm, *SIX)
    view = LedgerView(tmp_path, ledger_url)
    assert view.refresh() is True and view.refresh() is False
    assert view.picture.inventory.as_json() == inventory(tmp_path, ledger_url).as_json()
    assert view.history("PROD")[0] == history(tmp_path, "PROD", None, ledger_url)[0]
    lines = view.run_lines(run_of(ALPHA_PROD))
    assert lines and {e["run_id"] for e in lines} == {run_of(ALPHA_PROD)}


@pytest.mark.parametrize(
    ("proxies", "peer", "header", "acting", "why", "local"),
    [
        ("", "127.0.0.1", "alice", None, "no trusted proxy is configured", ""),
        ("10.0.0.5", "127.0.0.1", "alice", None, "did not come through the trusted proxy", ""),
        ("10.0.0.5", "10.0.0.5", "", None, "the proxy named nobody", ""),
        ("10.0.0.5", "10.0.0.5", "ali\ncе", None, "control characters", ""),
        ("10.0.0.5,127.0.0.1", "10.0.0.5", " alice ", "alice", None, ""),
        # DASHBOARD_LOCAL_USER: this machine acts as that person, whatever a header says; others do not.
        ("", "127.0.0.1", "bob", "alice", None, "alice"),
        ("", "10.0.0.9", "alice", None, "no trusted proxy is configured", "alice"),
    ],
)
def test_who_acts_is_whom_the_trusted_proxy_names(
    monkeypatch: pytest.MonkeyPatch,
    proxies: str,
    peer: str,
    header: str,
    acting: str | None,
    why: str | None,
    local: str,
) -> None:
    monkeypatch.setenv("DASHBOARD_TRUSTED_PROXY", proxies)
    monkeypatch.setenv("DASHBOARD_LOCAL_USER", local)
    settings = DashboardSettings.from_env()
    viewer = settings.viewer(peer, {"x-forwarded-user": header} if header else {})
    assert viewer.name == acting
    assert (why is None) == (viewer.read_only_because is None)
    if why:
        assert why in (viewer.read_only_because or "")
    else:
        assert settings.token_ok(viewer, settings.token_for("alice"))
        assert not settings.token_ok(viewer, settings.token_for("bob"))
