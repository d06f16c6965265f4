"""The task WebSocket's edges with a raw `websockets` client: authentication (none, bad,
late), bad and oversize frames, ping, getResponse and errors naming their taskUUID, a
session resumed on another API process with each missed result once and in order, a
slow reader closed (1008) with its results still in getResponse, and cancelOnDisconnect
(a socket closing cancels its sync and stream tasks that asked)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from devenv.procs import wait_until
from devenv.stack import Stack, StackConfig
from tests.conftest import KEY_A, KEY_B, TEST_SETTINGS, Api, text_task, write_catalog

pytestmark = pytest.mark.timeout(90)

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    """Two API processes on one Redis, with a short auth timeout, a small send queue and a
    small body limit."""
    root = tmp_path_factory.mktemp("ws-stack")
    env = {
        **TEST_SETTINGS,
        "TASKWIRE_WS_AUTH_TIMEOUT_S": "0.5",
        "TASKWIRE_WS_SEND_QUEUE": "4",
        "TASKWIRE_MAX_BODY_BYTES": str(MAX_BODY),
    }
    stack = Stack(
        StackConfig(root=root, api_keys=[KEY_A, KEY_B], catalog_path=write_catalog(root), env=env)
    ).start(workers=1)
    stack.start_api()
    yield stack
    stack.stop()


def url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/v1"


@pytest.fixture
async def sock(edges: Stack) -> AsyncIterator[ClientConnection]:
    async with websockets.connect(url(edges.api_url), compression=None) as ws:
        yield ws


async def frame(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(20):
        body: dict[str, Any] = json.loads(await ws.recv())
        return body


async def authenticate(ws: ClientConnection, key: str = KEY_A, session: str | None = None) -> str:
    auth: dict[str, Any] = {"taskType": "authentication", "apiKey": key}
    if session is not None:
        auth["connectionSessionUUID"] = session
    await ws.send(json.dumps([auth]))
    [item] = (await frame(ws))["data"]
    assert item["taskType"] == "authentication"
    session_uuid: str = item["connectionSessionUUID"]
    return session_uuid


async def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    async def drain() -> None:
        async with asyncio.timeout(20):
            while True:
                await ws.recv()

    with pytest.raises(ConnectionClosed) as caught:
        await drain()
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code, caught.value.rcvd.reason


async def test_no_authentication_closes(sock: ClientConnection) -> None:
    [error] = (await frame(sock))["errors"]
    assert error["code"] == "missingApiKey"
    assert await closed_with(sock) == (1008, "authentication timeout")


async def test_a_bad_key_closes(sock: ClientConnection) -> None:
    await sock.send(json.dumps([{"taskType": "authentication", "apiKey": "nope-nope"}]))
    [error] = (await frame(sock))["errors"]
    assert error["code"] == "invalidApiKey"
    assert (await closed_with(sock))[0] == 1008


async def test_the_first_frame_must_authenticate(sock: ClientConnection) -> None:
    await sock.send(json.dumps([{"taskType": "ping", "ping": True}]))
    [error] = (await frame(sock))["errors"]
    assert error["code"] == "missingApiKey"
    assert (await closed_with(sock))[0] == 1008


async def test_frames_as_post_takes_them(sock: ClientConnection, edges: Stack) -> None:
    await authenticate(sock)
    await sock.send(json.dumps([{"taskType": "ping", "ping": True}]))
    assert (await frame(sock))["data"] == [{"taskType": "ping", "pong": True}]
    await sock.send("not json")
    [error] = (await frame(sock))["errors"]
    assert error["code"] == "invalidRequestBody"
    missing = str(uuid.uuid4())
    bad = text_task("x", temperature=1)
    await sock.send(json.dumps([{"taskType": "getResponse", "taskUUID": missing}, bad]))
    errors = [(await frame(sock))["errors"][0] for _ in range(2)]
    assert {(e["taskUUID"], e["code"]) for e in errors} == {
        (missing, "taskFailedOrNotFound"),
        (bad["taskUUID"], "unknownParameter"),
    }
    # an async task: acknowledged, then its result pushed; getResponse answers its state
    task = text_task("ws raw async [[sim:tokens=5]]", deliveryMethod="async", seed=3)
    await sock.send(json.dumps([task]))
    [ack] = (await frame(sock))["data"]
    assert ack["status"] == "processing" and ack["taskUUID"] == task["taskUUID"]
    [result] = (await frame(sock))["data"]
    assert result["status"] == "success" and result["seed"] == 3
    await sock.send(json.dumps([{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]))
    [state] = (await frame(sock))["data"]
    assert state["text"] == result["text"]
    # the same body again is the same task (no new work, nothing pushed twice); another
    # body under that taskUUID is a conflict
    await sock.send(json.dumps([{**task, "seed": 4}]))
    [conflict] = (await frame(sock))["errors"]
    assert conflict["code"] == "conflictTaskUUID" and conflict["taskUUID"] == task["taskUUID"]


async def test_a_stream_task_pushes_chunks(sock: ClientConnection) -> None:
    await authenticate(sock)
    task = text_task("ws stream [[sim:tokens=30,tps=200]]", deliveryMethod="stream", seed=5)
    await sock.send(json.dumps([task]))
    text = ""
    while True:
        [chunk] = (await frame(sock))["data"]
        assert chunk["taskUUID"] == task["taskUUID"]
        text += chunk["delta"].get("text", "")
        if "finishReason" in chunk:
            break
    assert chunk["seed"] == 5 and text


async def test_an_oversize_frame_closes(edges: Stack) -> None:
    """A frame one byte over the body limit is answered payloadTooLarge, then 1009; a much
    bigger one is refused by the protocol layer unread (1009)."""
    shell = json.dumps([{"taskType": "ping", "ping": True, "pad": ""}])
    over = shell.replace('"pad": ""', '"pad": "' + "x" * (MAX_BODY + 1 - len(shell)) + '"')
    assert len(over) == MAX_BODY + 1
    async with websockets.connect(url(edges.api_url), compression=None) as ws:
        await authenticate(ws)
        await ws.send(over)
        [error] = (await frame(ws))["errors"]
        assert error["code"] == "payloadTooLarge"
        assert (await closed_with(ws))[0] == 1009
    async with websockets.connect(url(edges.api_url), compression=None) as ws:
        await authenticate(ws)
        await ws.send(over * 2)
        assert (await closed_with(ws))[0] == 1009


async def test_resume_on_another_process(edges: Stack) -> None:
    """Results that became final while the client was away are sent once, in order, on
    whichever API process it reconnects to; a stranger's key cannot take the session."""
    first, second = edges.api_urls[:2]
    tasks = [
        text_task(f"ws resume {i} [[sim:tokens=10,tps=20,ttft={300 * i}]]", deliveryMethod="sync")
        for i in range(3)
    ]
    async with websockets.connect(url(first), compression=None) as ws:
        session = await authenticate(ws)
        await ws.send(json.dumps(tasks))
    api = Api(edges)
    try:
        finals = {t["taskUUID"]: api.wait_final(t["taskUUID"]) for t in tasks}
    finally:
        api.close()
    async with websockets.connect(url(second), compression=None) as ws:
        assert await authenticate(ws, key=KEY_B, session=session) != session
    async with websockets.connect(url(second), compression=None) as ws:
        assert await authenticate(ws, session=session) == session
        pushed: list[dict[str, Any]] = []  # results pushed together share a frame
        while len(pushed) < 3:
            pushed += (await frame(ws))["data"]
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert (await frame(ws))["data"] == [{"taskType": "ping", "pong": True}]
    assert [item["taskUUID"] for item in pushed] == [t["taskUUID"] for t in tasks]
    for item in pushed:
        assert item == {k: v for k, v in finals[item["taskUUID"]][0].items() if k != "links"}
    async with websockets.connect(url(first), compression=None) as ws:
        assert await authenticate(ws, session=session) == session
        await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert (await frame(ws))["data"] == [{"taskType": "ping", "pong": True}]  # nothing again


async def test_a_slow_reader_is_closed(edges: Stack, tmp_path: Path) -> None:
    task = text_task("ws slow [[sim:tokens=3000,tps=0]]", numberResults=4, deliveryMethod="async")
    api = Api(edges)
    try:
        api.post([task])
        api.wait_final(task["taskUUID"])
        # a client that stops reading: its frames pile up until the send queue is full
        async with websockets.connect(url(edges.api_url), compression=None, max_queue=1) as ws:
            await authenticate(ws)
            poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}] * 4
            code = None
            for _ in range(300):
                try:
                    await ws.send(json.dumps(poll))
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
                    break
                await asyncio.sleep(0)
            if code is None:
                code, reason = await closed_with(ws)
                assert "too slowly" in reason
            assert code == 1008
        # the process is fine, the results are still there
        assert api.get_response(task["taskUUID"]).status_code == 200
    finally:
        api.close()


def error_codes(items: list[dict[str, Any]]) -> list[str | None]:
    return [item.get("error", {}).get("code") for item in items]


@pytest.mark.parametrize("opted_in", [True, False])
async def test_a_sync_socket_closing(edges: Stack, opted_in: bool) -> None:
    task = text_task(
        "ws leaving sync [[sim:tokens=20,tps=10]]",
        deliveryMethod="sync",
        cancelOnDisconnect=opted_in,
    )
    api = Api(edges)
    try:
        async with websockets.connect(url(edges.api_url), compression=None) as ws:
            await authenticate(ws)
            await ws.send(json.dumps([task]))
            # the task is in (getResponse knows it) before the client goes away
            stored = lambda: api.get_response(task["taskUUID"]).status_code == 200  # noqa: E731
            await asyncio.to_thread(wait_until, stored, 10, "the task to be stored")
        items = await asyncio.to_thread(api.wait_final, task["taskUUID"], 10)
    finally:
        api.close()
    assert error_codes(items) == (["taskCancelled"] if opted_in else [None])


@pytest.mark.parametrize("opted_in", [True, False])
async def test_a_stream_socket_closing(edges: Stack, opted_in: bool) -> None:
    task = text_task(
        "ws leaving stream [[sim:tokens=20,tps=10]]",
        deliveryMethod="stream",
        cancelOnDisconnect=opted_in,
    )
    async with websockets.connect(url(edges.api_url), compression=None) as ws:
        await authenticate(ws)
        await ws.send(json.dumps([task]))
        [chunk] = (await frame(ws))["data"]  # the first delta: then the client goes away
        assert chunk["taskUUID"] == task["taskUUID"] and "finishReason" not in chunk
    api = Api(edges)
    try:
        items = await asyncio.to_thread(api.wait_final, task["taskUUID"], 10)
    finally:
        api.close()
    assert error_codes(items) == (["taskCancelled"] if opted_in else [None])
