"""A real PostgreSQL server for the tests: the machine's initdb and pg_ctl, a temporary folder, a free port.

PostgreSQL refuses to run as root; where the tests run as root (these machines do), the server runs as the
`postgres` account through runuser, as a packaged install does, in a folder that account owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ledger_pg import create_database


def postgres_binary(name: str) -> str:
    """initdb or pg_ctl: on PATH, or in the Debian packages' folder; the test fails saying how to get it."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(
            f"{name} is not installed: PostgreSQL's server is needed (apt-get install postgresql)", pytrace=False
        )
    return found


def _as_server_account(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    folder: Path
    port: int

    @classmethod
    def start(cls, folder: Path | None = None, port: int | None = None) -> PostgresServer:
        """A new server: in folder (made; default a temporary one) on port (default a free one)."""
        folder = folder or Path(tempfile.mkdtemp(prefix="release-pg-"))
        folder.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        server = cls(folder, port or free_port())
        subprocess.run(
            _as_server_account(
                [postgres_binary("initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8"]
                + ["--no-sync", "--no-instructions"]
            ),
            check=True,
            capture_output=True,
        )
        server.run()
        return server

    def run(self) -> None:
        """Start it (again, after stop), and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        subprocess.run(
            _as_server_account(
                [postgres_binary("pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log")]
                + ["-o", options, "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_server_account([postgres_binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A database of its own for one test; its URL."""
        name = f"ledger_{uuid.uuid4().hex[:12]}"
        create_database(self.url(), name)
        return self.url(name)
