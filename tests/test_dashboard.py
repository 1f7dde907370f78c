"""The dashboard in a real browser (the system's Chromium): the grid is the inventory, an approval clicked in the
page reaches a waiting release and the grid follows without a reload, a refusal shows its reason, and who may act
is only ever the person a trusted proxy names."""

from __future__ import annotations

import asyncio
import json
from asyncio import Task
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from orchestrator.ledger import Ledger
from release_management import ReleaseManagement
from shared import AWAITING_APPROVAL
from tests.conftest import CATALOG, target_of
from tests.dashboard import browser, get, post, running_dashboard
from tests.support import WorkerProcess, run_script, script_env, stopped_at_the_end, task_queue
from tests.test_inventory import NO_SERVER, SIX, cli, released
from tests.test_people_in_the_loop import HOLD, until_state

ALICE = {"X-Forwarded-User": "alice"}


@asynccontextmanager
async def waiting_for_approval(server: WorkflowEnvironment, env: dict[str, str], *by: str) -> AsyncIterator[Task]:
    """A worker, and the HOLD release started from the command line and waiting for sbstore's approval; the
    release's command is the task yielded. A release still waiting at the end is cancelled."""
    with stopped_at_the_end([WorkerProcess(env, Path(env["RELEASE_WORKSPACE"]) / "worker.log").start()]):
        release = asyncio.create_task(run_script(["--release-key", HOLD, *by], env))
        await until_state(server.client, HOLD, env["RELEASE_TASK_QUEUE"], lambda s: s.status == AWAITING_APPROVAL)
        try:
            yield release
        finally:
            handle = server.client.get_workflow_handle(f"release-{HOLD}")
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.cancel()
            await release


async def still_waiting(server: WorkflowEnvironment, workspace: Path) -> None:
    """Nothing was approved: the release still waits, and the ledger has no approval."""
    state = await server.client.get_workflow_handle(f"release-{HOLD}").query("progress")
    assert state["status"] == AWAITING_APPROVAL
    assert [e for e in Ledger(workspace / "ledger.jsonl").entries() if e["step"] == "approve"] == []


async def grid_cells(page: Any) -> dict[str, dict[str, dict[str, str | None]]]:
    """What the grid shows, cell by cell: env -> container -> version, state, release and run (from its link)."""
    cells = await page.eval_on_selector_all(
        "td.cell[data-version]",
        """tds => tds.map(td => ({env: td.dataset.env, container: td.dataset.container,
            version: td.dataset.version, state: td.dataset.state,
            link: td.querySelector('a.release')?.getAttribute('href') || null,
            approver: td.querySelector('.approver').textContent}))""",
    )
    shown: dict[str, dict[str, dict[str, str | None]]] = {}
    for c in cells:
        key, _, run = (c["link"] or "").removeprefix("/releases/").partition("?run=")
        approver = c["approver"].removeprefix("approved by ") if c["approver"].startswith("approved by ") else None
        shown.setdefault(c["env"], {})[c["container"]] = {
            "version": c["version"],
            "state": c["state"],
            "release_key": key or None,
            "run_id": run or None,
            "approved_by": approver,
        }
    return shown


@pytest.mark.slow(10)
async def test_the_grid_after_the_six_seed_releases_is_what_inventory_says(
    rm: ReleaseManagement, tmp_path: Path
) -> None:
    released(rm, *SIX)
    code, out, err = await cli(tmp_path, "inventory", "--json")
    assert (code, err) == (0, ""), out + err
    expected = {
        env: {c: {k: v for k, v in entry.items() if k != "at"} for c, entry in held.items()}
        for env, held in json.loads(out).items()
    }
    env = script_env(NO_SERVER, tmp_path, "unused")
    async with running_dashboard(env, tmp_path / "dashboard.log") as dashboard, browser() as chromium:
        page = await chromium.new_page()
        answer = await page.goto(dashboard.url + "/")
        assert await grid_cells(page) == expected
        # No other site may frame it (a click on a framed button would be the viewer's).
        assert answer is not None and answer.headers["x-frame-options"] == "DENY"
        # Every state is a word as well as a colour; Temporal's absence is said, not a failure.
        assert await page.locator("td.cell .state").all_inner_texts() == ["verified"] * 12
        assert "Temporal cannot be read now" in await page.inner_text("body")
        assert await page.locator("form, button").count() == 0


@pytest.mark.slow(25)
async def test_an_approval_clicked_in_the_page_reaches_the_release_and_the_grid_follows_without_a_reload(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    catalog = json.loads(CATALOG.read_text())
    catalog["release_approvers"] = ["alice", "bob"]
    (tmp_path / "releases.json").write_text(json.dumps(catalog))
    env = script_env(
        target_of(dev_server),
        tmp_path,
        task_queue(),
        RELEASE_CATALOG=str(tmp_path / "releases.json"),
        DASHBOARD_TRUSTED_PROXY="127.0.0.1",
    )
    async with waiting_for_approval(dev_server, env, "--by", "carol") as release:
        async with running_dashboard(env, tmp_path / "dashboard.log") as dashboard, browser() as chromium:
            grid = await (await chromium.new_context(extra_http_headers=ALICE)).new_page()
            await grid.goto(dashboard.url + "/")
            await grid.evaluate("window.notReloaded = true")
            assert "Nothing deployed" in await grid.inner_text("main")

            mallory = await (await chromium.new_context(extra_http_headers={"X-Forwarded-User": "mallory"})).new_page()
            await mallory.goto(dashboard.url + "/now")
            # By keyboard alone: Tab to the button, Enter.
            for _ in range(30):
                await mallory.keyboard.press("Tab")
                if await mallory.evaluate("document.activeElement.textContent") == "Approve sbstore":
                    break
            await mallory.keyboard.press("Enter")
            refusal = mallory.locator("#said .refused")
            await refusal.wait_for()
            assert (
                await refusal.inner_text()
                == "refused: mallory is not a release approver (the catalog's release_approvers)"
            )

            now = await grid.context.new_page()
            await now.goto(dashboard.url + "/now")
            await now.get_by_role("button", name="Approve sbstore").click()
            said = now.locator("#said .ok")
            await said.wait_for()
            assert await said.inner_text() == "Approved by alice: sbstore-1.9; still waiting: nothing"

            # The grid, never reloaded, shows what the release put in TEST, who approved it, within seconds.
            cell = grid.locator('td.cell[data-env="TEST"][data-container="sbstore"]')
            await cell.wait_for(timeout=20_000)
            await grid.wait_for_function(
                """() => document.querySelector('td.cell[data-env="TEST"][data-container="sbstore"]')
                    ?.dataset.state === 'verified'""",
                timeout=20_000,
            )
            assert "approved by alice" in await cell.inner_text()
            assert await grid.evaluate("window.notReloaded") is True
        code, out = await release
    assert code == 0 and f"Result: Release {HOLD}: SUCCESS" in out, out
    approvals = [e for e in Ledger(tmp_path / "ledger.jsonl").entries() if e["step"] == "approve"]
    assert [(a["approver"], a["identity"].endswith("(dashboard)")) for a in approvals] == [("alice", True)]


@pytest.mark.slow(20)
async def test_only_the_person_a_trusted_proxy_names_may_act_and_only_with_the_pages_token(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = script_env(target_of(dev_server), tmp_path, task_queue())
    async with waiting_for_approval(dev_server, env):
        # No proxy configured: read-only, said so, no button, and a POST refused.
        async with running_dashboard(env, tmp_path / "dashboard.log") as dashboard, browser() as chromium:
            page = await (await chromium.new_context(extra_http_headers=ALICE)).new_page()
            await page.goto(dashboard.url + "/now")
            await page.get_by_text("approval of sbstore-1.9").wait_for()
            assert await page.locator("button, form").count() == 0
            who = await page.inner_text("#who")
            assert "Read-only: no trusted proxy is configured (DASHBOARD_TRUSTED_PROXY)" in who
            code, location = post(dashboard.url + "/act/approve", {"release": HOLD, "deploy": "sbstore"}, ALICE)
            assert code == 303
            _, shown = get(dashboard.url + location)
            assert "refused: the dashboard is read-only: no trusted proxy is configured" in shown
        # A proxy configured, but the request comes from another address: the header names nobody.
        env["DASHBOARD_TRUSTED_PROXY"] = "127.0.0.2"
        async with running_dashboard(env, tmp_path / "dashboard2.log") as dashboard:
            _, page_html = get(dashboard.url + "/now", ALICE)
            assert "did not come through the trusted proxy" in page_html and "<button" not in page_html
        # From the proxy: alice acts, but only with the token of a page this dashboard served her.
        env["DASHBOARD_TRUSTED_PROXY"] = "127.0.0.1"
        async with running_dashboard(env, tmp_path / "dashboard3.log") as dashboard:
            _, page_html = get(dashboard.url + "/now", ALICE)
            assert "Acting as <strong>alice</strong>" in page_html and 'name="csrf"' in page_html
            form = {"release": HOLD, "deploy": "sbstore", "back": "/now"}
            token = page_html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            for sent, site in (("", "same-origin"), ("0" * 64, "same-origin"), (token, "cross-site")):
                code, location = post(
                    dashboard.url + "/act/approve", {**form, "csrf": sent}, {**ALICE, "Sec-Fetch-Site": site}
                )
                assert code == 303 and location.startswith("/now?said=")
                _, shown = get(dashboard.url + location, ALICE)
                assert "refused: the" in shown
        await still_waiting(dev_server, tmp_path)
