"""Per-key and per-host limits of the guarded client, against receivers on loopback: a key's
requests past its limit wait for a turn (not for a pooled connection) and give up with NoTurn
at the deadline, another key's request to another host goes straight through, and gates of
idle keys and hosts are dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from core.http_guard import FetchLimits, GuardedClient, NoTurn
from core.outbound import OutboundPolicy
from tests.receiver import Receiver, running_receiver, wait_for


@pytest.fixture
def silent() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def healthy() -> Iterator[Receiver]:
    with running_receiver("127.0.0.2") as running:
        yield running


def limited_client(per_key: int, per_host: int, pool: int = 200) -> GuardedClient:
    return GuardedClient(
        OutboundPolicy(["127.0.0.0/8"]),
        deadline_s=1.0,
        max_connections=pool,
        limits=FetchLimits(per_key, per_host),
    )


async def test_a_key_past_its_limit_waits_and_others_pass(
    silent: Receiver, healthy: Receiver
) -> None:
    # A pool smaller than key A's requests: without the key's limit, A would take it all.
    client = limited_client(per_key=2, per_host=10, pool=4)
    never = silent.silent("/never")
    flood = [asyncio.create_task(client.request("GET", never, tenant="A")) for _ in range(6)]
    sent = lambda: silent.in_flight.get("/never", 0) == 2  # noqa: E731
    await asyncio.to_thread(wait_for, sent, 5, "key A's first requests")
    started = time.monotonic()
    response = await client.request("GET", healthy.answer("/ok"), tenant="B")
    assert response.status == 200
    assert time.monotonic() - started < 0.5  # not behind A's requests (cut off at 1 s)
    outcomes = await asyncio.gather(*flood, return_exceptions=True)
    # two were sent and timed out; four waited for a turn that never came
    assert sum(isinstance(o, NoTurn) for o in outcomes) == 4
    assert sum(type(o) is TimeoutError for o in outcomes) == 2
    assert silent.max_in_flight["/never"] == 2
    assert client.limits is not None and client.limits.in_use() == 0
    await client.aclose()


async def test_a_host_is_shared_by_its_limit(silent: Receiver) -> None:
    client = limited_client(per_key=5, per_host=3)
    never = silent.silent("/never")
    outcomes = await asyncio.gather(
        *(client.request("GET", never, tenant=key) for key in "ABC" for _ in range(2)),
        return_exceptions=True,
    )
    assert all(isinstance(o, TimeoutError) for o in outcomes)
    assert silent.max_in_flight["/never"] == 3
    assert sum(isinstance(o, NoTurn) for o in outcomes) == 3
    await client.aclose()


async def test_without_a_tenant_no_limit_applies(silent: Receiver) -> None:
    client = limited_client(per_key=1, per_host=1)
    responses = await asyncio.gather(
        *(client.request("GET", silent.answer("/fine")) for _ in range(3))
    )
    assert [r.status for r in responses] == [200, 200, 200]
    await client.aclose()
