"""Runware's own Python SDK with its default transport (the WebSocket) against the real
stack: sync, async (the SDK polls getResponse over the socket), several results with their
seeds, errors, and a dropped connection resumed with no result lost or duplicated.

The SDK never reaches the internet: taskType is given and the model id is AIR-shaped, and
a registry fetch fails the test."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from runware import Runware, RunwareError

from devenv.stack import Stack
from tests.conftest import KEY_A, Api, final_items, sdk_text_params

pytestmark = pytest.mark.timeout(90)


def ws_url(stack: Stack) -> str:
    return stack.api_url.replace("http://", "ws://", 1) + "/v1"


def sdk(stack: Stack, key: str = KEY_A) -> Runware:
    """The SDK as a user builds it: only the key and the socket's address (its default
    transport is the WebSocket)."""
    return Runware(
        api_key=key,
        ws_base_url=ws_url(stack),
        timeout=60_000,
        poll_timeout=60_000,
        retry_delay=50,
    )


async def test_the_default_transport_is_the_socket(
    stack: Stack, registry_fetches: list[str]
) -> None:
    client = sdk(stack)
    assert client._ws_transport is not None
    async with client:
        assert client._ws_transport.session_id  # authenticated: a connectionSessionUUID
        [item] = await client.run(
            sdk_text_params("ws sync [[sim:tokens=6]]", deliveryMethod="sync", seed=7)
        )
    assert item["status"] == "success" and item["seed"] == 7
    [kept] = final_items(stack, item["taskUUID"])
    assert item["text"] == kept["text"] and item["text"]


async def test_async_polls_over_the_socket(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        [item] = await client.run(sdk_text_params("ws async [[sim:tokens=10,tps=40]]", seed=11))
    assert item["status"] == "success" and item["seed"] == 11
    assert item["text"] == final_items(stack, item["taskUUID"])[0]["text"]


async def test_number_results_with_their_seeds(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        sync, asynchronous = await asyncio.gather(
            client.run(
                sdk_text_params(
                    "ws four [[sim:tokens=8,tps=40]]",
                    numberResults=4,
                    seed=100,
                    deliveryMethod="sync",
                )
            ),
            client.run(
                sdk_text_params("ws four async [[sim:tokens=8,tps=40]]", numberResults=4, seed=200)
            ),
        )
    for items, seed in ((sync, 100), (asynchronous, 200)):
        assert [item["resultIndex"] for item in items] == [0, 1, 2, 3]
        assert [item["seed"] for item in items] == [seed + i for i in range(4)]
        assert all(item["status"] == "success" for item in items)
        assert len({item["text"] for item in items}) == 4


async def test_errors(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        with pytest.raises(RunwareError) as caught:
            await client.run(
                {
                    **sdk_text_params("ws bad model"),
                    "model": "nobody:nothing@1",
                    "deliveryMethod": "sync",
                }
            )
        assert caught.value.code == "notFound" and caught.value.parameter == "model"
        with pytest.raises(RunwareError) as caught:
            await client.run(sdk_text_params("ws bad", settings={"temperature": 5}))
        assert caught.value.code == "validation"
        assert caught.value.parameter == "settings.temperature"
        with pytest.raises(RunwareError) as caught:
            await client.run(sdk_text_params("ws fail [[sim:status=400]]", deliveryMethod="sync"))
        assert caught.value.task_uuid
        # the socket is still in use after errors
        [item] = await client.run(
            sdk_text_params("ws after [[sim:tokens=3]]", deliveryMethod="sync")
        )
        assert item["status"] == "success"
    with pytest.raises(RunwareError) as caught:
        async with sdk(stack, key="tw-not-a-key-000000000000"):
            pass
    assert "Invalid API key" in str(caught.value)


async def test_a_dropped_socket_resumes_without_loss_or_duplicates(
    stack: Stack, registry_fetches: list[str]
) -> None:
    """Async tasks in flight when the connection drops: the SDK reconnects with its
    connectionSessionUUID and re-sends them; every result arrives once."""
    async with sdk(stack) as client:
        transport = client._ws_transport
        assert transport is not None
        session = transport.session_id
        uuids = [str(uuid.uuid4()) for _ in range(3)]
        runs = [
            asyncio.create_task(
                client.run(
                    sdk_text_params(
                        f"ws resume {i} [[sim:tokens=40,tps=20]]", seed=i * 10, taskUUID=u
                    )
                )
            )
            for i, u in enumerate(uuids)
        ]
        # every task accepted (and not finished), then the connection drops
        api = Api(stack)
        try:
            async with asyncio.timeout(20):
                while any(  # noqa: ASYNC110 (polling the API: the condition is remote)
                    api.post([{"taskType": "getResponse", "taskUUID": u}]).status_code != 200
                    for u in uuids
                ):
                    await asyncio.sleep(0.02)
        finally:
            api.close()
        ws = transport._ws
        assert ws is not None
        ws.transport.abort()
        results = await asyncio.gather(*runs)
        assert transport.session_id == session  # the same session, resumed
    for i, items in enumerate(results):
        [item] = items
        assert item["status"] == "success" and item["seed"] == i * 10
        assert item["text"] == final_items(stack, item["taskUUID"])[0]["text"]
