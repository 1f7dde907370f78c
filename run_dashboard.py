"""Serves the release dashboard: the grid of what each environment holds, what waits for a person, a page per
release and per environment, on http://127.0.0.1:8080 (DASHBOARD_PORT) until Ctrl+C.

It reads the same settings as run_workflow.py (TEMPORAL_ADDRESS, RELEASE_WORKSPACE, LEDGER_URL, .env). It acts
only as the person a trusted reverse proxy names (DASHBOARD_TRUSTED_PROXY, DASHBOARD_USER_HEADER); without one
it is read-only. setup.md, The dashboard, says how to put it behind oauth2-proxy.
"""

from __future__ import annotations

import asyncio
import socket
import sys

try:
    import uvicorn

    from orchestrator.dashboard.app import Dashboard, create_app
    from orchestrator.dashboard.people import DashboardSettings
    from orchestrator.names import printable
    from orchestrator.settings import Settings, redacted
    from utils import connect, connect_config, exit_now, load_env_file
except ModuleNotFoundError as missing:
    from orchestrator.dependencies import explain_missing

    explain_missing(missing, "run_dashboard.py")


def build() -> tuple[Dashboard, DashboardSettings]:
    """The dashboard from the environment; ValueError names a bad setting."""
    load_env_file()
    settings = Settings.from_env()
    dashboard = DashboardSettings.from_env()
    target = connect_config()
    return Dashboard(settings, dashboard, target, lambda: connect(target, quiet=True)), dashboard


def serve_dashboard(dash: Dashboard, dashboard: DashboardSettings) -> int:
    """Serve until Ctrl+C or SIGTERM; exit 2 when the port is taken."""
    app = create_app(dash)
    # proxy_headers off: the peer address is the connection's, never what an X-Forwarded-For header claims.
    config = uvicorn.Config(
        app, host=dashboard.host, port=dashboard.port, proxy_headers=False, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in dashboard.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((dashboard.host, dashboard.port))
    except OSError as e:
        print(
            f"error: cannot listen on {dashboard.host}:{dashboard.port} ({e.strerror}): another dashboard may run "
            "there; set DASHBOARD_PORT to another port",
            file=sys.stderr,
        )
        return 2
    if dashboard.local_user:
        mode = f"requests from this machine act as {dashboard.local_user} (DASHBOARD_LOCAL_USER)"
    elif dashboard.proxies:
        mode = f"acting as the person {dashboard.user_header} names, from {', '.join(sorted(dashboard.proxies))} only"
    else:
        mode = "read-only: no DASHBOARD_TRUSTED_PROXY"
    where = redacted(dash.settings.ledger_url) if dash.settings.ledger_url else dash.settings.workspace / "ledger.jsonl"
    print(
        f"Dashboard on http://{dashboard.host}:{dashboard.port}/: {mode}. Temporal {dash.target['target_host']}, "
        f"ledger {where}. Ctrl+C stops it.",
        flush=True,
    )
    asyncio.run(server.serve(sockets=[sock]))
    return 0


def main(argv: list[str]) -> int:
    if argv not in ([], ["--url"]):
        print("usage: run_dashboard.py [--url]   (--url: print the dashboard's address and exit)", file=sys.stderr)
        return 2
    try:
        dash, dashboard = build()
    except ValueError as e:
        print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    if argv == ["--url"]:
        print(f"http://{dashboard.host}:{dashboard.port}/")
        return 0
    try:
        return serve_dashboard(dash, dashboard)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
