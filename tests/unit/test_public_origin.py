"""The public origin middleware: which base URL and client address a request is given."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.settings import Settings
from service.origin import PublicOrigin, TrustedProxies


async def _echo(request: Request) -> JSONResponse:
    client = request.client.host if request.client else None
    return JSONResponse({"base": str(request.base_url), "client": client})


def ask(
    *,
    peer: str,
    headers: dict[str, str],
    public_base_url: str | None = None,
    trusted: list[str] | None = None,
    server: tuple[str, int] = ("10.0.0.5", 8000),
) -> dict[str, Any]:
    """Call the middleware around an echo app with a hand-made ASGI scope."""
    app = PublicOrigin(
        Starlette(routes=[Route("/v1/echo", _echo)]),
        public_base_url=public_base_url,
        trusted=TrustedProxies(trusted or []),
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/echo",
        "raw_path": b"/v1/echo",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": (peer, 5555),
        "server": server,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return dict(json.loads(body))


HOSTILE = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}


def test_a_clients_host_is_never_the_base() -> None:
    assert ask(peer="203.0.113.9", headers=HOSTILE)["base"] == "http://10.0.0.5:8000/"
    # loopback is not trusted by default either (uvicorn's default trusts it)
    assert ask(peer="127.0.0.1", headers=HOSTILE)["base"] == "http://10.0.0.5:8000/"
    assert ask(peer="::1", headers=HOSTILE, server=("::1", 80))["base"] == "http://[::1]/"


def test_a_trusted_proxy_is_believed() -> None:
    forwarded = {
        **HOSTILE,
        "X-Forwarded-Host": "api.example.com",
        "X-Forwarded-For": "198.51.100.7, 10.1.2.3",
    }
    answer = ask(peer="10.1.2.4", headers=forwarded, trusted=["10.1.0.0/16"])
    assert answer == {"base": "https://api.example.com/", "client": "198.51.100.7"}
    # outside the trusted range: ignored entirely
    answer = ask(peer="10.2.0.1", headers=forwarded, trusted=["10.1.0.0/16"])
    assert answer == {"base": "http://10.0.0.5:8000/", "client": "10.2.0.1"}
    # a malformed forwarded host falls back to the server's own address
    odd = {"X-Forwarded-Host": "a b/c", "X-Forwarded-Proto": "gopher"}
    assert ask(peer="10.1.0.1", headers=odd, trusted=["10.1.0.0/16"])["base"] == (
        "http://10.0.0.5:8000/"
    )


def test_the_configured_public_base_wins() -> None:
    base = Settings(public_base_url="https://api.example.com/tw/").public_base_url
    assert base == "https://api.example.com/tw"
    answer = ask(peer="10.1.0.1", headers=HOSTILE, public_base_url=base, trusted=["10.1.0.0/16"])
    assert answer["base"] == "https://api.example.com/tw/"


@pytest.mark.parametrize("bad", ["api.example.com", "ftp://x", "https://u:p@x", "https://x/?q=1"])
def test_public_base_url_is_checked(bad: str) -> None:
    with pytest.raises(ValidationError, match="public_base_url"):
        Settings(public_base_url=bad)
