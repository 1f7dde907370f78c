"""What the dashboard's tests share: run_dashboard.py in a subprocess on a free port, and the system's Chromium
driven by Playwright (never a browser Playwright downloads)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def chromium() -> str:
    """The system's Chromium; where it is missing, the test fails under CI (.ci/run installs it) and skips
    elsewhere with the command that installs it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    message = "Chromium is not installed: `sudo apt-get install chromium` (.ci/run installs it)"
    if os.environ.get("DASHBOARD_BROWSER_REQUIRED"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DashboardProcess:
    """run_dashboard.py in a subprocess, its output in a log file; ready once its first page answers."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "DASHBOARD_PORT": str(self.port)}
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> DashboardProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "run_dashboard.py")], cwd=REPO, env=self.env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@asynccontextmanager
async def running_dashboard(env: dict[str, str], log: Path) -> AsyncIterator[DashboardProcess]:
    dashboard = DashboardProcess(env, log).start()
    try:
        yield dashboard
    finally:
        dashboard.stop()


@asynccontextmanager
async def browser() -> AsyncIterator[object]:
    """Headless Chromium (the system's), closed at the end."""
    from playwright.async_api import async_playwright

    path = chromium()
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


def post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
    """A form POST as a browser would send it, without following the redirect: status and body or Location."""
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers={"Sec-Fetch-Site": "same-origin", **(headers or {})})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location") or e.read().decode()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
        return answer.status, answer.read().decode()
