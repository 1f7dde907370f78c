"""A local PostgreSQL for `make demo-postgres`: start it (once) and print its LEDGER_URL, or stop it.

    .venv/bin/python resources/local_postgres.py start   # prints postgresql://postgres@127.0.0.1:54329/releases
    .venv/bin/python resources/local_postgres.py stop

Its data stays in /tmp/release-orchestrator-pg-<uid> (a folder the postgres account can enter, since
PostgreSQL refuses to run as root: as root, it runs as that account), so the ledger outlives a restart.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.ledger_pg import create_database  # noqa: E402 (the repository root is on the path only from here)
from tests.postgres import PostgresServer  # noqa: E402

PORT = int(os.environ.get("DEMO_POSTGRES_PORT", "54329"))
FOLDER = Path(f"/tmp/release-orchestrator-pg-{os.getuid()}")
DATABASE = "releases"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str]) -> int:
    server = PostgresServer(FOLDER, PORT)
    if argv[:1] == ["stop"]:
        if (FOLDER / "data").is_dir() and listening(PORT):
            server.stop()
            print(f"Stopped PostgreSQL on 127.0.0.1:{PORT}", file=sys.stderr)
        return 0
    if argv[:1] != ["start"]:
        print("usage: local_postgres.py start | stop", file=sys.stderr)
        return 2
    if not listening(PORT):
        if not (FOLDER / "data").is_dir():
            server = PostgresServer.start(FOLDER, PORT)
        else:
            server.run()
        print(f"PostgreSQL started on 127.0.0.1:{PORT} (data: {FOLDER}/data)", file=sys.stderr)
    create_database(server.url(), DATABASE)
    print(server.url(DATABASE))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
