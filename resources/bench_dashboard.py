"""What the dashboard's pages cost at size: 50 containers x 4 environments x 200 releases, each page requested
over HTTP 200 times (p50, p95), and what one refresh costs at 4 releases and at 200 (the same 200 placements),
with either ledger store.

    .venv/bin/python resources/bench_dashboard.py [--quick] [--output bench.json]   (make bench runs it)

The ledger is written as releases leave it (linked lines, tests passed), the folders hold what it says, and the
releases Temporal would list are put in the dashboard's snapshot directly: a page never waits on a server, so
its cost is the render of the last refresh. The refresh is timed on its own, after one more line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn  # noqa: E402

from orchestrator.dashboard.app import Dashboard, create_app  # noqa: E402
from orchestrator.dashboard.people import DashboardSettings  # noqa: E402
from orchestrator.dashboard.releases import ReleaseRow  # noqa: E402
from orchestrator.ledger_pg import PostgresLedger  # noqa: E402
from orchestrator.settings import Settings  # noqa: E402
from shared import ENVIRONMENTS, Cell, DeployState, ReleaseState  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402

CONTAINERS, RELEASES, REQUESTS, RUNNING = 50, 200, 200, 10
TARGET_P95_MS = 200.0


def release_lines(r: int, containers: int) -> list[dict[str, object]]:
    """The lines of release r: its start and approval, then each container built and promoted, release r
    going as far as environment r % 4."""
    key, run, version = f"RELEASE-{r:04d}", f"run-{r:04d}", f"1.{r}"
    at = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=r)).isoformat()
    common = {"release_key": key, "run_id": run, "at": at, "applied": True, "attempt": 1}
    lines: list[dict[str, object]] = [
        {**common, "step": "start", "by": "dave", "deploy_key": key, "env": None},
        {**common, "step": "approve", "approver": "alice", "deploy_key": key, "env": None},
    ]
    for c in range(containers):
        name = f"service-{c:02d}"
        where = {**common, "container": name, "version": version, "deploy_key": f"{key}:{name}"}
        lines.append({**where, "step": "build", "env": "DEV", "sha256": "0" * 64})
        for env in ENVIRONMENTS[: 1 + r % 4]:
            lines.append({**where, "step": "deploy", "env": env})
            lines.append({**where, "step": "test", "env": env, "passed": True, "checks": ["unit"], "sha256": "0" * 64})
    return lines


def linked(entries: list[dict[str, object]], prev: str = "") -> tuple[list[str], str]:
    out = []
    for e in entries:
        line = json.dumps({**e, "prev": prev}, sort_keys=True)
        out.append(line)
        prev = hashlib.sha256(line.encode()).hexdigest()
    return out, prev


def workspace(releases: int, containers: int) -> tuple[Path, list[str]]:
    """A workspace whose ledger holds `releases` releases and whose folders hold what it says."""
    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    entries = [e for r in range(releases) for e in release_lines(r, containers)]
    lines, _ = linked(entries)
    (root / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    held: dict[tuple[str, str], dict[str, object]] = {}
    for e in entries:
        if e["step"] == "deploy":
            held[(str(e["env"]), str(e["container"]))] = e
    (root / "artifactory").mkdir()
    for (env, container), e in held.items():
        folder = root / "environments" / env
        (folder / "config").mkdir(parents=True, exist_ok=True)
        artifact = f"{container}-{e['version']}"
        (folder / artifact).write_text(artifact)
        (root / "artifactory" / artifact).write_text(artifact)
        body = {"artifact": artifact, "environment": env, "release_key": e["release_key"]}
        (folder / "config" / f"{container}.json").write_text(json.dumps(body))
    return root, lines


def snapshot(dash: Dashboard, releases: int, containers: int) -> None:
    """The releases Temporal would list: the newest RUNNING of them running, every one with its state."""
    rows = {}
    for r in reversed(range(releases)):
        key, running = f"RELEASE-{r:04d}", r >= releases - RUNNING
        envs = ENVIRONMENTS[: 1 + r % 4]
        cells = {env: Cell(status="running" if running else "done", steps_done=2, attempts=3) for env in envs}
        deploys = [
            DeployState(
                deploy_key=f"{key}:s{c}",
                container_id=f"service-{c:02d}",
                artifact=f"service-{c:02d}-1.{r}",
                approved=True,
                cells=cells,
            )
            for c in range(containers)
        ]
        events = [f"12:00:{i:02d} deploy service-{i:02d}-1.{r} → DEV" for i in range(50)]
        state = ReleaseState(
            release_key=key, status="RUNNING" if running else "SUCCESS", deploys=deploys, events=events, event_count=50
        )
        started = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=r)
        rows[key] = ReleaseRow(
            key,
            f"release-{key}",
            f"run-{r:04d}",
            state.status,
            running,
            started,
            None if running else started,
            "q",
            state,
        )
    dash.releases.rows = rows


def serve(dash: Dashboard) -> str:
    config = uvicorn.Config(create_app(dash, refresh=False), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


def page_times(url: str, requests: int) -> dict[str, float]:
    """Milliseconds per GET, p50 and p95, for each page and for the grid's live part."""
    figures = {}
    paths = {
        "grid": "/",
        "now": "/now",
        "release": f"/releases/RELEASE-{RELEASES - 1:04d}",
        "environment": "/environments/QC",
        "grid (live part)": "/?live=1&v=0",
    }
    for name, path in paths.items():
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            with urllib.request.urlopen(url + path, timeout=30) as answer:
                answer.read()
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        figures[f"{name} p50 ms"] = round(statistics.median(times), 1)
        figures[f"{name} p95 ms"] = round(times[int(len(times) * 0.95) - 1], 1)
    return figures


def dashboard_for(root: Path, ledger_url: str | None) -> Dashboard:
    os.environ.update(RELEASE_WORKSPACE=str(root), RELEASE_ENV_FILE="")
    os.environ.pop("LEDGER_URL", None)
    if ledger_url:
        os.environ["LEDGER_URL"] = ledger_url
    return Dashboard(
        Settings.from_env(),
        DashboardSettings.from_env(),
        {"target_host": "127.0.0.1:1", "namespace": "default"},
        lambda: None,
    )  # type: ignore[arg-type,return-value]


def refresh_after_one_line(dash: Dashboard, root: Path, ledger: PostgresLedger | None, last: str) -> float:
    """Seconds the refresh takes once one line more is in the ledger (the dashboard's cost per change)."""
    entry = {"step": "approve", "approver": "erin", "release_key": "X", "run_id": "x", "at": "2026-01-01"}
    if ledger is not None:
        ledger.record(entry)
    else:
        with open(root / "ledger.jsonl", "a") as f:
            f.write(linked([entry], last)[0][0] + "\n")
    start = time.perf_counter()
    dash.ledger.refresh()
    return time.perf_counter() - start


def store_figures(releases: int, containers: int, server: PostgresServer | None) -> dict[str, float]:
    root, lines = workspace(releases, containers)
    url = server.new_database() if server else None
    ledger = PostgresLedger(url) if url else None
    if ledger is not None:
        ledger.import_lines(lines)
    dash = dashboard_for(root, url)
    start = time.perf_counter()
    dash.ledger.refresh()
    first = time.perf_counter() - start
    figures = {"ledger lines": len(lines), "first refresh s": round(first, 3)}
    last_hash = hashlib.sha256(lines[-1].encode()).hexdigest()
    figures["refresh after one line ms"] = round(refresh_after_one_line(dash, root, ledger, last_hash) * 1000, 1)
    return figures | {"_dash": dash}  # type: ignore[dict-item]


def run(quick: bool) -> dict[str, object]:
    requests = 40 if quick else REQUESTS
    server = PostgresServer.start()
    try:
        result: dict[str, object] = {"containers": CONTAINERS, "releases": RELEASES, "requests per page": requests}
        for store in ("file", "postgresql"):
            pg = server if store == "postgresql" else None
            small = store_figures(4, CONTAINERS, pg)
            large = store_figures(RELEASES, CONTAINERS, pg)
            dash = large.pop("_dash")
            small.pop("_dash")
            snapshot(dash, RELEASES, CONTAINERS)  # type: ignore[arg-type]
            pages = page_times(serve(dash), requests)  # type: ignore[arg-type]
            result[store] = {"4 releases": small, f"{RELEASES} releases": large, "pages": pages}
        return result
    finally:
        server.stop()


def table(figures: dict[str, object]) -> str:
    rows = [
        "| Dashboard, 50 containers x 4 environments x 200 releases | file ledger | PostgreSQL | target |",
        "|---|---|---|---|",
    ]
    file, pg = figures["file"], figures["postgresql"]  # type: ignore[index]
    for name in file["pages"]:  # type: ignore[index]
        target = f"< {TARGET_P95_MS:.0f}" if name.endswith("p95 ms") else ""
        rows.append(f"| {name} | {file['pages'][name]} | {pg['pages'][name]} | {target} |")  # type: ignore[index]
    for size in ("4 releases", f"{RELEASES} releases"):
        for name in ("ledger lines", "first refresh s", "refresh after one line ms"):
            rows.append(f"| {name}, {size} | {file[size][name]} | {pg[size][name]} | |")  # type: ignore[index]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_dashboard.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 requests per page instead of 200")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "bench.json"))
    args = parser.parse_args()
    figures = run(args.quick)
    print(table(figures))
    out = Path(args.output)
    saved = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**saved, "dashboard": figures}, indent=2) + "\n")
    worst = max(v for s in ("file", "postgresql") for k, v in figures[s]["pages"].items() if k.endswith("p95 ms"))  # type: ignore[index]
    print(f"worst page p95: {worst} ms (target < {TARGET_P95_MS:.0f} ms)")
    return 0 if worst < TARGET_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
