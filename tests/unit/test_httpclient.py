"""The shared clients keep no cookies: a Set-Cookie from one server is never sent back, so one
tenant's receiver cannot hand a cookie to another tenant's request to the same host."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from core.http_guard import GuardedClient
from core.httpclient import CookielessClient
from core.outbound import OutboundPolicy


class _SetsCookies(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("Cookie"))
        self.send_response(200)
        self.send_header("Set-Cookie", "session=tenant-a-secret; Path=/")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@pytest.fixture
def server() -> Iterator[tuple[str, list[str | None]]]:
    _SetsCookies.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _SetsCookies)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", _SetsCookies.seen
    httpd.shutdown()
    httpd.server_close()


async def test_the_upstream_client_never_sends_a_cookie_back(
    server: tuple[str, list[str | None]],
) -> None:
    url, seen = server
    async with CookielessClient() as client:
        for _ in range(2):
            response = await client.post(url, content=b"{}")
            assert response.status_code == 200
            assert response.headers["set-cookie"].startswith("session=")
        assert not client.cookies
    assert seen == [None, None]
    # plain httpx would have sent it back: the server is worth testing against
    async with httpx.AsyncClient() as plain:
        await plain.post(url, content=b"{}")
        await plain.post(url, content=b"{}")
    assert seen[-1] == "session=tenant-a-secret"


async def test_the_guarded_client_keeps_no_cookie_between_deliveries(
    server: tuple[str, list[str | None]],
) -> None:
    url, seen = server
    client = GuardedClient(OutboundPolicy(["127.0.0.0/8"]))
    try:
        for _ in range(2):
            response = await client.request("POST", url, content=b"{}")
            assert response.status == 200 and response.headers["set-cookie"]
    finally:
        await client.aclose()
    assert seen == [None, None]
