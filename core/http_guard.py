"""HTTP to user-supplied URLs, through the outbound guard: the connection is made to the very
address that was checked (no second lookup, so DNS rebinding cannot slip through), TLS still
verifies the host name, proxies from the environment are ignored, redirects are not
followed, every request has a total deadline and response bodies are read up to a cap.

Isolation: a client may carry `FetchLimits`, per-key and per-host caps on its requests in
flight in this process. A request waiting for its turn waits on the cap's semaphore (within
its deadline), never on a pooled connection, so the pool (sized above what the caps let one
key or host take) is never exhausted by one key's slow hosts, and another key's request is
never queued behind them."""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpcore
import httpx

from core.httpclient import CookielessClient
from core.outbound import (
    OutboundPolicy,
    OutboundRefused,
    Resolver,
    resolve_checked,
    split_url,
    system_resolver,
)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to checked addresses of the requested host."""

    def __init__(
        self,
        policy: OutboundPolicy,
        resolver: Resolver = system_resolver,
        on_dial: Callable[[str, int], None] | None = None,
    ):
        self._inner = httpcore.AnyIOBackend()
        self._policy = policy
        self._resolver = resolver
        self._on_dial = on_dial

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_checked(host, self._policy, self._resolver)
        failure: Exception | None = None
        for address in addresses:
            if self._on_dial is not None:
                self._on_dial(str(address), port)
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, backend: GuardedBackend, limits: httpx.Limits):
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its connection pool with the default network backend; this one
        # differs only in how it connects.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class NoTurn(TimeoutError):
    """The deadline passed while the request waited for its key's or host's turn."""


@dataclass(slots=True)
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass(slots=True)
class FetchLimits:
    """At most `per_key` requests in flight per key and `per_host` per host, in one process.
    Gates exist only while someone uses them (hosts are user input: unbounded)."""

    per_key: int
    per_host: int
    _gates: dict[tuple[str, str], _Gate] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def turn(self, key: str, host: str) -> AsyncIterator[None]:
        """Wait for the key's turn, then the host's (a request waiting for a host holds only
        its own key's slot), and hold both."""
        async with self._gate("key", key, self.per_key), self._gate("host", host, self.per_host):
            yield

    def in_use(self) -> int:
        """Gates alive (for tests: idle keys and hosts cost nothing)."""
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def _gate(self, kind: str, name: str, limit: int) -> AsyncIterator[None]:
        gate = self._gates.get((kind, name))
        if gate is None:
            gate = self._gates[(kind, name)] = _Gate(asyncio.Semaphore(limit))
        gate.users += 1
        try:
            async with gate.semaphore:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[(kind, name)]


@dataclass(frozen=True, slots=True)
class GuardedResponse:
    status: int
    headers: httpx.Headers
    body: bytes  # at most the client's byte cap
    truncated: bool


class BodyTooLarge(Exception):
    pass


class GuardedClient:
    """The one way to call a URL a user gave us."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver = system_resolver,
        deadline_s: float = 15.0,
        max_connections: int = 200,
        limits: FetchLimits | None = None,
        on_dial: Callable[[str, int], None] | None = None,
    ):
        self.deadline_s = deadline_s
        self.limits = limits
        pool = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = CookielessClient(  # shared by every tenant: no cookie jar
            transport=_GuardedTransport(GuardedBackend(policy, resolver, on_dial), pool),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(deadline_s),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_body_bytes: int = 4096,
        fail_if_larger: bool = False,
        tenant: str | None = None,
    ) -> GuardedResponse:
        """One request under the deadline (waiting for `tenant`'s and the host's turn
        included, when the client has limits: NoTurn if none came). The body is read up to
        `max_body_bytes`; past that it is cut off (or, with `fail_if_larger`, BodyTooLarge
        is raised)."""
        # Parsed once, here, by httpx's own parser: the client is given this very URL, so the
        # host the backend checks is the host this parse found (OutboundRefused for a URL
        # httpx cannot represent, before any lookup).
        parsed = split_url(url)
        turn: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        if self.limits is not None and tenant is not None:
            turn = self.limits.turn(tenant, parsed.host)
        waiting = True
        try:
            async with asyncio.timeout(self.deadline_s), turn:
                waiting = False
                async with self._client.stream(
                    method, parsed.url, content=content, headers=headers
                ) as response:
                    return await _read(response, max_body_bytes, fail_if_larger)
        except TimeoutError:
            if waiting:
                raise NoTurn(f"no turn within {self.deadline_s:g} s") from None
            raise


async def _read(
    response: httpx.Response, max_body_bytes: int, fail_if_larger: bool
) -> GuardedResponse:
    declared = response.headers.get("content-length", "")
    if fail_if_larger and declared.isdigit() and int(declared) > max_body_bytes:
        raise BodyTooLarge(f"{declared} bytes, over the {max_body_bytes}-byte cap")
    chunks: list[bytes] = []
    size = 0
    truncated = False
    async for chunk in response.aiter_bytes():
        room = max_body_bytes - size
        if len(chunk) > room:
            if fail_if_larger:
                raise BodyTooLarge(f"over the {max_body_bytes}-byte cap")
            chunks.append(chunk[:room])
            truncated = True
            break
        chunks.append(chunk)
        size += len(chunk)
    return GuardedResponse(response.status_code, response.headers, b"".join(chunks), truncated)
