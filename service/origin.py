"""The API's public origin: the base every absolute link in a response is built on.

An ASGI middleware settles it per request, before any route runs, so that
`request.base_url` is trustworthy: the configured `public_base_url`; else, for a request
from a trusted proxy, its `X-Forwarded-Proto` / `X-Forwarded-Host`; else the address the
server itself listens on. A client's own `Host` header is never used: a link built on it
could point a victim's browser (or an upstream fetching an image) at the client's host.
Forwarded headers from anyone but a trusted proxy are ignored (uvicorn's own handling of
them is switched off where it is started).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose forwarded headers are believed."""

    def __init__(self, cidrs: Iterable[str]):
        self._networks: list[Network] = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _first(value: str | None) -> str | None:
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def _server_host(scope: Scope, scheme: str) -> str:
    """`host[:port]` of the socket the request arrived on (the server's own address)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return "localhost"
    host, port = str(server[0]), int(server[1])
    if ":" in host:
        host = f"[{host}]"
    return host if _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"


class PublicOrigin:
    """Sets the request's scheme, `Host` header (and path prefix) to the public origin, and
    its client address to the one a trusted proxy forwarded."""

    def __init__(self, app: ASGIApp, *, public_base_url: str | None, trusted: TrustedProxies):
        self.app = app
        self.trusted = trusted
        self._base = urlsplit(public_base_url) if public_base_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = self._settled(scope)
        await self.app(scope, receive, send)

    def _settled(self, scope: Scope) -> Scope:
        scope = dict(scope)
        client = scope.get("client")
        from_proxy = client is not None and client[0] in self.trusted
        if from_proxy:
            self._forwarded_client(scope)
        if self._base is not None:
            scheme, host = self._base.scheme, self._base.netloc
            if self._base.path:
                scope["app_root_path"] = self._base.path
        else:
            scheme, host = str(scope.get("scheme", "http")), ""
            if from_proxy:
                proto = _first(_header(scope, b"x-forwarded-proto"))
                if proto in ("http", "https"):
                    scheme = proto
                forwarded = _first(_header(scope, b"x-forwarded-host"))
                if forwarded is not None and _HOST.fullmatch(forwarded):
                    host = forwarded
            host = host or _server_host(scope, scheme)
        if scope["type"] == "websocket":
            scheme = scheme.replace("http", "ws")
        scope["scheme"] = scheme
        headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
        headers.append((b"host", host.encode("latin-1")))
        scope["headers"] = headers
        return scope

    def _forwarded_client(self, scope: Scope) -> None:
        """The client a trusted proxy forwarded: the right-most X-Forwarded-For entry that is
        not itself a trusted proxy."""
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded is None:
            return
        for entry in reversed([part.strip() for part in forwarded.split(",")]):
            if entry and entry not in self.trusted:
                try:
                    ipaddress.ip_address(entry)
                except ValueError:
                    return
                scope["client"] = (entry, 0)
                return
