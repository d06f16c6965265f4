"""The task WebSocket's metrics (issue 12: every front door counted): sockets open, frames
received by task type, sockets closed by close code, scraped from the API's /metrics after
real socket sessions."""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from devenv.procs import wait_until
from tests.conftest import KEY_A, StackFactory
from tests.e2e.test_metrics import Samples, get, scrape

pytestmark = pytest.mark.timeout(90)


def url(api_url: str) -> str:
    return api_url.replace("http://", "ws://", 1) + "/v1"


async def closed_code(ws: ClientConnection) -> int | None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def test_socket_sessions_are_counted(make_stack: StackFactory) -> None:
    stack = make_stack(workers=0)
    before = scrape(stack.api_url)
    async with websockets.connect(url(stack.api_url), compression=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY_A}]))
        await ws.recv()
        during = scrape(stack.api_url)
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}] * 2))
        await ws.recv()
        await ws.send("not json")
        await ws.recv()
    async with websockets.connect(url(stack.api_url), compression=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": "not-a-key"}]))
        assert await closed_code(ws) == 1008

    def settled() -> Samples | None:
        found = scrape(stack.api_url)
        return found if get(found, "taskwire_api_ws_sockets_open") == 0 else None

    wait_until(lambda: settled() is not None, 10, "both sockets to be closed")
    after = scrape(stack.api_url)

    def grew(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert get(during, "taskwire_api_ws_sockets_open") == 1
    frames = "taskwire_api_ws_frames_received_total"
    assert grew(frames, task_type="authentication") == 2
    assert grew(frames, task_type="ping") == 1
    assert grew(frames, task_type="none") == 1
    closed = "taskwire_api_ws_sockets_closed_total"
    assert grew(closed, code="1000") == 1  # the client's close
    assert grew(closed, code="1008") == 1  # the bad key
