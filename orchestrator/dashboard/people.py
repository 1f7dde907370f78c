"""Who acts through the dashboard: the person a trusted reverse proxy names in its header, only when the request
comes from that proxy's address; and the CSRF token every action carries.

Plain Python, no temporalio. With no proxy configured the dashboard is read-only, and says so.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass

from orchestrator.names import check_approver, clip

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_USER_HEADER = "X-Forwarded-User"


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page: the person who may act (None: read-only), and why read-only."""

    name: str | None
    read_only_because: str | None = None
    token: str = ""


@dataclass(frozen=True)
class DashboardSettings:
    host: str
    port: int
    # The addresses of the trusted reverse proxy (DASHBOARD_TRUSTED_PROXY); empty: read-only.
    proxies: frozenset[str]
    user_header: str
    secret: bytes
    # DASHBOARD_LOCAL_USER: who acts for requests from this machine (a demo on one person's machine).
    local_user: str | None = None

    @classmethod
    def from_env(cls) -> DashboardSettings:
        """From DASHBOARD_* variables (scripts load .env first); ValueError names a bad one."""
        env = os.environ
        port = env.get("DASHBOARD_PORT", "").strip() or str(DEFAULT_PORT)
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"DASHBOARD_PORT={clip(port)!r} is not a port number from 1 to 65535")
        proxies = frozenset(p.strip() for p in env.get("DASHBOARD_TRUSTED_PROXY", "").split(",") if p.strip())
        for p in proxies:
            try:
                ipaddress.ip_address(p)
            except ValueError:
                raise ValueError(
                    f"DASHBOARD_TRUSTED_PROXY={clip(p)!r} is not an IP address (the proxy's address, as the "
                    "dashboard sees its connections: 127.0.0.1 when it runs on this machine)"
                ) from None
        header = env.get("DASHBOARD_USER_HEADER", "").strip() or DEFAULT_USER_HEADER
        secret = env.get("DASHBOARD_SECRET", "").encode() or secrets.token_bytes(32)
        host = env.get("DASHBOARD_HOST", "").strip() or DEFAULT_HOST
        local = env.get("DASHBOARD_LOCAL_USER", "").strip() or None
        if local is not None:
            local = check_approver(local, "acts (DASHBOARD_LOCAL_USER)")
        return cls(host, int(port), proxies, header, secret, local)

    def viewer(self, peer: str | None, headers: dict[str, str]) -> Viewer:
        """Who sends this request, from its peer address and the proxy's header."""
        if self.local_user is not None and peer is not None and ipaddress.ip_address(peer).is_loopback:
            return Viewer(self.local_user, None, self.token_for(self.local_user))
        if not self.proxies:
            return Viewer(None, "read-only: no trusted proxy is configured (DASHBOARD_TRUSTED_PROXY)")
        if peer not in self.proxies:
            return Viewer(None, "read-only: this request did not come through the trusted proxy")
        asserted = headers.get(self.user_header.lower(), "").strip()
        if not asserted:
            return Viewer(None, f"read-only: the proxy named nobody ({self.user_header} is empty)")
        try:
            name = check_approver(asserted, "acts")
        except ValueError as e:
            return Viewer(None, f"read-only: {e}")
        return Viewer(name, None, self.token_for(name))

    def token_for(self, name: str) -> str:
        """The CSRF token of name's forms: only a page this dashboard served them holds it."""
        return hmac.new(self.secret, f"csrf:{name}".encode(), hashlib.sha256).hexdigest()

    def token_ok(self, viewer: Viewer, token: str) -> bool:
        return viewer.name is not None and hmac.compare_digest(viewer.token, token)
