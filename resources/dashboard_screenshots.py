"""Takes screenshots of the release dashboard for the README: the grid, what waits for a person, a release page.

    .venv/bin/python resources/dashboard_screenshots.py      (make screenshots runs it)

Self-contained: its own dev server, worker and dashboard on free ports, the six seed releases and a held one in
a temporary workspace, and the system's Chromium driven by Playwright. Writes resources/dashboard-*.png.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.async_api import async_playwright
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator.catalog import load_catalog
from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
from utils import exit_now

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "resources"
# The seed releases: the demo catalog's first six, in its order; then the one that waits for an approval.
SIX = load_catalog(REPO / "releases.json").release_keys()[:6]
HOLD = "RELEASE-FEB-24-BETA-HOLD"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(target: str, workspace: Path, port: int) -> dict[str, str]:
    """The scripts' settings, isolated from any .env or profile on this machine."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "RELEASE_", "FAILURE_", "DEMO_"))}
    return kept | {
        "TEMPORAL_ADDRESS": target,
        "TEMPORAL_CONFIG_FILE": str(workspace / "no-profile.toml"),
        "RELEASE_ENV_FILE": "",
        "RELEASE_WORKSPACE": str(workspace),
        "DEMO_STEP_SECONDS": "0.2",
        "FAILURE_RATE": "sometimes",
        "FAILURE_SEED": "7",
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_TRUSTED_PROXY": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


def started(args: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while ready not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{args[0]} did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


async def photograph(url: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed: `sudo apt-get install chromium`")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=FLAGS)
        wide = await browser.new_context(
            viewport={"width": 1400, "height": 800}, extra_http_headers={"X-Forwarded-User": "alice"}
        )
        phone = await browser.new_context(
            viewport={"width": 390, "height": 800}, extra_http_headers={"X-Forwarded-User": "alice"}
        )
        for context, path, name in (
            (wide, "/", "dashboard-grid.png"),
            (wide, "/now", "dashboard-now.png"),
            (wide, f"/releases/{SIX[-1]}", "dashboard-release.png"),
            (phone, "/now", "dashboard-phone.png"),
        ):
            page = await context.new_page()
            await page.goto(url + path)
            await page.screenshot(path=OUT / name, full_page=name != "dashboard-release.png")
            print(f"wrote resources/{name}", flush=True)
        await browser.close()


def stage(env: dict[str, str], workspace: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """A worker, the six seed releases, the held release waiting for approval, and the dashboard serving."""
    procs.append(started(["run_worker.py"], env, workspace / "worker.log", "Worker ready"))
    for key in SIX:
        run = [sys.executable, "run_workflow.py", "--release-key", key, "--now"]
        subprocess.run(run, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    procs.append(
        started(["run_workflow.py", "--release-key", HOLD, "--by", "dave"], env, workspace / "hold.log", "approve with")
    )
    procs.append(started(["run_dashboard.py"], env, workspace / "dashboard.log", "Dashboard on"))
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{env['DASHBOARD_PORT']}/now", timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def main() -> None:
    server = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=[RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE],
    )
    workspace = Path(tempfile.mkdtemp(prefix="dashboard-shots-"))
    port = free_port()
    env = settings(server.client.service_client.config.target_host, workspace, port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await asyncio.to_thread(stage, env, workspace, procs)
        await photograph(f"http://127.0.0.1:{port}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)
        await server.shutdown()
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
    exit_now(0)
