"""SIGTERM with task sockets open: a sync task still running has its result pushed before
the close, every socket is then closed with 1001 (going away), and the API process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from contextlib import AsyncExitStack

import httpx
import pytest
import websockets

from tests.conftest import KEY_A, StackFactory, text_task
from tests.e2e.test_ws_protocol import authenticate, closed_with, frame, url

pytestmark = pytest.mark.timeout(90)


async def test_sigterm_pushes_what_is_owed_then_closes_1001(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = stack.api
    assert api is not None and api.popen is not None
    # cancelOnDisconnect: a server shutdown is not the client leaving (it resumes elsewhere)
    task = text_task(
        "ws shutdown [[sim:tokens=20,tps=10]]",
        deliveryMethod="sync",
        seed=7,
        cancelOnDisconnect=True,
    )
    async with AsyncExitStack() as sockets, httpx.AsyncClient(base_url=stack.api_url) as http:
        busy, *idle = [
            await sockets.enter_async_context(websockets.connect(url(stack.api_url)))
            for _ in range(3)
        ]
        for ws in (busy, *idle):
            await authenticate(ws)
        await busy.send(json.dumps([task]))

        # the task is in (stored, processing) before the signal
        async def submitted() -> None:
            lookup = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
            headers = {"Authorization": f"Bearer {KEY_A}"}
            while True:
                response = await http.post("/v1", json=lookup, headers=headers)
                if response.status_code == 200:
                    return
                await asyncio.sleep(0.02)

        async with asyncio.timeout(10):
            await submitted()
        api.signal(signal.SIGTERM)

        [result] = (await frame(busy))["data"]
        assert result["taskUUID"] == task["taskUUID"]
        assert result["status"] == "success" and result["seed"] == 7
        for ws in (busy, *idle):
            assert (await closed_with(ws))[0] == 1001
    code = await asyncio.to_thread(api.popen.wait, 30)
    assert code == 0
