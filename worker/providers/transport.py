"""The HTTP transport under httpx for the trusted provider calls: aiohttp's.

httpx stays the client API every adapter uses; under it, httpx-aiohttp's transport costs
about 0.44 ms of CPU per streamed call against the simulator where httpx's own (httpcore over
anyio) costs 0.72, and on a busy worker httpcore's pool scans every connection on every
request. Only provider calls go through it: user URLs (webhooks, image fetches) keep the
guarded transport (core/http_guard.py).

httpx-aiohttp maps aiohttp's exceptions loosely (any `ClientConnectionError`, such as a server
that hung up mid-answer, becomes `httpx.ConnectTimeout`; a connect timeout becomes a bare
`TimeoutException`), and taskwire's error classes are judged by httpx's exception types
(worker/providers/base.py `error_for_transport`). So this transport maps them itself, as
httpcore would raise them:

* no connection made (refused, unresolvable, TLS failed) → `ConnectError`; the connect (or
  pool) wait timed out → `ConnectTimeout`: the provider is unreachable;
* no bytes within the read timeout → `ReadTimeout`: the provider did not answer in time;
* the server hung up before answering, or answered garbage → `RemoteProtocolError`; the
  connection broke or the body ended short while reading → `ReadError`: a broken stream.

It keeps no cookies (aiohttp's session would keep a jar of its own: see core/httpclient.py),
reads no proxy settings from the environment, and takes its timeouts per request from
httpx's (`httpx.Timeout` on the client or the request: connect, read and pool apply; write
is not enforced by aiohttp).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

__all__ = ["ProviderTransport", "translate"]


def translate(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception httpcore would have raised for an aiohttp failure (None: not a
    transport failure)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS: never connected
        return httpx.ConnectError(message)
    if isinstance(exc, (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError)):
        return httpx.ReadTimeout(message)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        return httpx.ReadError(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.NetworkError(message)
    if isinstance(exc, TimeoutError):  # an aiohttp deadline without a class of its own
        return httpx.ReadTimeout(message)
    return None


def _origin(exc: BaseException) -> BaseException:
    """The aiohttp exception behind httpx-aiohttp's own mapping of it."""
    if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


class _Body(AiohttpResponseStream):
    """A response body whose read failures are mapped as httpcore would raise them."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._aiohttp_response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        try:
            await self._aiohttp_response.__aexit__(None, None, None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from exc


class ProviderTransport(AiohttpTransport):
    """httpx-aiohttp's transport with httpcore's exception classes, no cookie jar, and one
    aiohttp session made on first use (inside the running loop)."""

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
        **kwargs: Any,
    ):
        super().__init__(limits=limits, **kwargs)
        self._trace_configs = list(trace_configs)

    def get_client(self) -> aiohttp.ClientSession:
        limit = self.limits.max_connections
        connector = aiohttp.TCPConnector(
            limit=limit if limit is not None else 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            trace_configs=self._trace_configs or None,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except asyncio.CancelledError:
            raise
        except (httpx.HTTPError, aiohttp.ClientError, TimeoutError) as exc:
            origin = _origin(exc)
            mapped = translate(origin)
            if mapped is None:
                raise
            mapped.request = request
            raise mapped from origin
        stream = response.stream
        if isinstance(stream, AiohttpResponseStream):
            response.stream = _Body(stream._aiohttp_response)
        return response
