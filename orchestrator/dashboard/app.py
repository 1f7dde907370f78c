"""The dashboard's web application (Starlette): its pages, their live parts, and the actions they post.

Every page renders from what the background refresh last read (the ledger, the folders, Temporal), so a request
never waits on a server. A page's live part asks again every 0.75 s and is swapped only when it changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client

from orchestrator.cli.diagnostics import UserError
from orchestrator.cli.follower import ui_link
from orchestrator.dashboard import pages
from orchestrator.dashboard.actions import ACTIONS, act
from orchestrator.dashboard.ledger_view import LedgerView
from orchestrator.dashboard.people import DashboardSettings, Viewer
from orchestrator.dashboard.releases import ReleaseWatcher
from orchestrator.names import check_release_key, printable
from orchestrator.settings import Settings
from shared import ENVIRONMENTS

HERE = Path(__file__).parent
# How often the ledger and the folders are read, and Temporal: with the pages asking every 0.75 s, a change
# shows within about 2 s, and each running release is asked for its progress once a second.
REFRESH_SECONDS = 0.5
TEMPORAL_SECONDS = 1.0
SAID_KEPT = 200  # the results of the last actions, shown once on the page they return to


class Dashboard:
    """The state the pages read, and the loop that refreshes it."""

    def __init__(
        self, settings: Settings, dashboard: DashboardSettings, target: dict, connect: Callable[[], Awaitable[Client]]
    ) -> None:
        self.settings, self.dashboard, self.target = settings, dashboard, target
        self.ledger = LedgerView(settings.workspace, settings.ledger_url)
        self.releases = ReleaseWatcher(connect)
        self.ledger_error: str | None = None
        self.temporal_read = -TEMPORAL_SECONDS  # when Temporal was last read (time.monotonic)
        self.said: dict[str, tuple[bool, str]] = {}
        self.refreshed = asyncio.Event()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    async def refresh_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # a reading that failed is said in the log and tried again; pages keep the last
                print(f"dashboard: the refresh failed, tried again: {printable(str(e))[:300]}", flush=True)
                self.refreshed.set()
            await asyncio.sleep(REFRESH_SECONDS)

    async def refresh(self, now: bool = False) -> None:
        """Read the ledger and the folders; Temporal too, at most once a second (each running release is
        asked for its progress), unless now (after an action)."""
        try:
            await asyncio.to_thread(self.ledger.refresh)
            self.ledger_error = None
        except Exception as e:  # the ledger away (PostgreSQL down, a file unreadable): said, tried again
            self.ledger_error = f"the ledger cannot be read now: {printable(str(e))[:300]}"
        if now or time.monotonic() - self.temporal_read >= TEMPORAL_SECONDS:
            self.temporal_read = time.monotonic()
            await self.releases.refresh()
        self.refreshed.set()

    def viewer(self, request: Request) -> Viewer:
        peer = request.client.host if request.client else None
        return self.dashboard.viewer(peer, {k.lower(): v for k, v in request.headers.items()})

    def render(self, request: Request, name: str, title: str, live: dict[str, Any]) -> Response:
        """The page, or only its live part when the page asks (204 when it has not changed)."""
        viewer = self.viewer(request)
        common = {"viewer": viewer, "request": request, "envs": ENVIRONMENTS}
        inner = self.templates.get_template(name).render({**common, **live})
        version = hashlib.sha256(inner.encode()).hexdigest()[:16]
        query = {k: v for k, v in request.query_params.items() if k in ("run",)}
        live_url = f"{request.url.path}?{urlencode({**query, 'live': '1', 'v': version})}"
        if request.query_params.get("live"):
            if request.query_params.get("v") == version:
                return Response(status_code=204)
            html = self.templates.get_template("live.html").render(inner=inner, live_url=live_url)
            return HTMLResponse(html)
        said = self.said.pop(request.query_params.get("said", ""), None)
        page = self.templates.get_template("base.html").render(
            **common,
            nav_envs=ENVIRONMENTS,
            title=title,
            inner=inner,
            live_url=live_url,
            said=said,
            nav=name,
            temporal_error=self.releases.error,
            ledger_error=self.ledger_error,
        )
        return HTMLResponse(page)

    def remember(self, ok: bool, text: str) -> str:
        key = secrets.token_urlsafe(8)
        self.said[key] = (ok, text)
        while len(self.said) > SAID_KEPT:
            self.said.pop(next(iter(self.said)))
        return key


def create_app(dash: Dashboard, refresh: bool = True) -> Starlette:
    """The application; with refresh, the background loop runs while it serves."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(dash.refresh_forever()) if refresh else None
        if task is not None:
            await asyncio.wait([task, asyncio.create_task(dash.refreshed.wait())], return_when=asyncio.FIRST_COMPLETED)
        yield
        if task is not None:
            task.cancel()

    views = Views(dash)
    routes = [
        Route("/", views.grid),
        Route("/now", views.now),
        Route("/releases/{key}", views.release),
        Route("/environments/{env}", views.environment),
        Route("/act/{action}", views.act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(NotFramed)])


class NotFramed:
    """No other site may show the dashboard's pages in a frame (and trick a click on a button)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                headers["Content-Security-Policy"] = "frame-ancestors 'none'"
            await send(message)

        await self.app(scope, receive, framed if scope["type"] == "http" else send)


class Views:
    """The pages: each gathers what its template shows from the last refresh, and renders it."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash

    async def grid(self, request: Request) -> Response:
        inv = self.dash.ledger.picture.inventory
        envs, rows = pages.grid(inv)
        waiting = pages.waiting_list(list(self.dash.releases.rows.values()))
        live = {
            "envs": envs,
            "rows": rows,
            "counts": pages.grid_counts(inv),
            "untrusted": pages.untrusted(inv),
            "waiting": len(waiting),
        }
        return self.dash.render(request, "grid.html", "Environments", live)

    async def now(self, request: Request) -> Response:
        rows = list(self.dash.releases.rows.values())
        running = [r for r in rows if r.running]
        finished = [r for r in rows if not r.running][:20]
        live = {
            "running": running,
            "finished": finished,
            "waiting": pages.waiting_list(running),
            "deploy_rows": pages.deploy_rows,
        }
        return self.dash.render(request, "now.html", "Now", live)

    async def release(self, request: Request) -> Response:
        key = request.path_params["key"]
        try:
            check_release_key(key)
        except ValueError as e:
            return HTMLResponse(html.escape(str(e)), 404)
        row = self.dash.releases.rows.get(key)
        run_id = request.query_params.get("run") or (row.run_id if row else None)
        if row is not None and run_id != row.run_id:
            row = None  # an earlier run: the ledger's lines only
        lines = await asyncio.to_thread(self.dash.ledger.run_lines, run_id) if run_id else []
        state = row.state if row else None
        live = {
            "key": key,
            "row": row,
            "state": state,
            "run_id": run_id,
            "timeline": pages.timeline(lines),
            "deploys": pages.deploy_rows(state) if state else ([], []),
            "waiting": row.waiting() if row else [],
            "ui": ui_link(self.dash.target, f"release-{key}", run_id) if run_id else None,
        }
        return self.dash.render(request, "release.html", f"Release {key}", live)

    async def environment(self, request: Request) -> Response:
        env = request.path_params["env"].upper()
        if env not in ENVIRONMENTS:
            return HTMLResponse(f"unknown environment; the environments are {', '.join(ENVIRONMENTS)}", 404)
        inv = self.dash.ledger.picture.inventory
        history, total = await asyncio.to_thread(self.dash.ledger.history, env)
        before, comparison = pages.compare(inv, env)
        live = {
            "env": env,
            "moves": pages.moves(history),
            "total": total,
            "before": before,
            "comparison": comparison,
            "held": inv.placements.get(env, {}),
        }
        return self.dash.render(request, "environment.html", env, live)

    async def act(self, request: Request) -> Response:
        return await _act(self.dash, request)


async def _act(dash: Dashboard, request: Request) -> Response:
    """An action posted by a form: checked (who, CSRF, where from), sent, and its one-line result shown."""
    viewer = dash.viewer(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    action = request.path_params["action"]
    back = form.get("back") or "/"
    if not back.startswith("/") or back.startswith("//") or "\\" in back:
        back = "/"  # only a page of this dashboard: never another site's
    started = time.monotonic()
    if viewer.name is None:
        ok, text = False, f"refused: the dashboard is {viewer.read_only_because}"
    elif request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        ok, text = False, "refused: the action came from another site"
    elif not dash.dashboard.token_ok(viewer, form.get("csrf", "")):
        ok, text = False, "refused: the form is out of date or not this dashboard's: reload the page and try again"
    elif action not in ACTIONS:
        ok, text = False, f"refused: unknown action {printable(action)[:40]!r}"
    else:
        try:
            client = dash.releases.client or await dash.releases.connect()
            text = await act(client, dash.settings, dash.target, viewer.name, action, form)
            ok = True
        except UserError as e:
            ok, text = False, printable(str(e))
        except Exception as e:  # Temporal away, or refused the request: one line, nothing else
            ok, text = False, f"not sent: {printable(getattr(e, 'message', None) or str(e))[:300]}"
    if ok:
        await dash.refresh(now=True)
    print(
        f"dashboard: {viewer.name or '-'} {action}: {text} ({time.monotonic() - started:.2f} s)",
        flush=True,
    )
    if request.headers.get("hx-request"):
        html = dash.templates.get_template("said.html").render(said=(ok, text))
        return HTMLResponse(html)
    sep = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{sep}said={dash.remember(ok, text)}", status_code=303)
