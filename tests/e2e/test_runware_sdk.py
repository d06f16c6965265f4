"""Runware's own Python SDK (`runware-sdk`, REST transport) against the real stack: sync,
async with polling, several results with their seeds, streaming, and its error classes.

The SDK needs no internet here: taskType is given and the model id is AIR-shaped, so its
schema registry is never consulted (checked: a registry fetch fails the test)."""

from __future__ import annotations

import pytest
from runware import Runware, RunwareError
from runware.client import _is_terminal

from devenv.stack import Stack
from tests.conftest import KEY_A, Api, StackFactory, final_items, sdk_text_params, text_task

pytestmark = pytest.mark.timeout(90)


def sdk(stack: Stack, key: str = KEY_A) -> Runware:
    return Runware(
        api_key=key,
        transport="rest",
        http_base_url=f"{stack.api_url}/v1",
        max_retries=0,
        timeout=60_000,
        poll_timeout=60_000,
    )


async def test_sync(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        [item] = await client.run(
            sdk_text_params("sdk sync [[sim:tokens=6]]", deliveryMethod="sync", seed=7)
        )
    assert item["status"] == "success"
    assert item["seed"] == 7
    [stored] = final_items(stack, item["taskUUID"])
    assert item["text"] == stored["text"] and item["text"]


async def test_async_delivery_polls_until_the_results(
    stack: Stack, registry_fetches: list[str]
) -> None:
    async with sdk(stack) as client:
        items = await client.run(
            sdk_text_params("sdk async [[sim:tokens=20,tps=20]]", deliveryMethod="async", seed=11)
        )
    [item] = items
    assert item["status"] == "success", item
    assert item["seed"] == 11
    assert item["text"] == final_items(stack, item["taskUUID"])[0]["text"]


async def test_number_results_with_their_seeds(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        items = await client.run(
            sdk_text_params("sdk four [[sim:tokens=8,tps=30]]", numberResults=4, seed=100)
        )
    assert [item["resultIndex"] for item in items] == [0, 1, 2, 3]
    assert [item["seed"] for item in items] == [100, 101, 102, 103]
    assert all(item["status"] == "success" for item in items)
    assert len({item["text"] for item in items}) == 4


async def test_stream(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack) as client:
        stream = await client.stream(
            sdk_text_params(
                "sdk stream [[sim:tokens=30,tps=100,reasoning=3]]",
                seed=21,
                includeUsage=True,
                includeCost=True,
            )
        )
        pieces = [piece async for piece in stream.text_stream]
        result = await stream.result()
    assert len(pieces) > 1  # it arrived in parts
    assert result.task_uuid is not None
    [stored] = final_items(stack, result.task_uuid)
    assert "".join(pieces) == result.text == stored["text"]
    assert result.reasoning_content == stored["reasoningContent"]
    assert result.finish_reason == stored["finishReason"] == "stop"
    assert result.usage == stored["usage"]
    assert result.cost == stored["cost"]


async def test_error_classes(stack: Stack, registry_fetches: list[str]) -> None:
    async with sdk(stack, key="tw-not-a-key-000000000000") as client:
        with pytest.raises(RunwareError) as caught:
            await client.run(sdk_text_params("x", deliveryMethod="sync"))
    assert caught.value.code == "auth" and caught.value.status_code == 401
    async with sdk(stack) as client:
        with pytest.raises(RunwareError) as caught:
            await client.run({**sdk_text_params("x"), "model": "nobody:nothing@1"})
        assert caught.value.code == "notFound" and caught.value.parameter == "model"
        with pytest.raises(RunwareError) as caught:
            await client.run(sdk_text_params("x", settings={"temperature": 5}))
        assert caught.value.code == "validation"
        assert caught.value.parameter == "settings.temperature"
        # a stream refused before it starts, and one whose result fails upstream
        stream = await client.stream({**sdk_text_params("x"), "model": "nobody:nothing@1"})
        with pytest.raises(RunwareError) as caught:
            await stream.result()
        assert caught.value.code == "notFound"
    async with sdk(stack, key="tw-not-a-key-000000000000") as client:
        stream = await client.stream(sdk_text_params("x"))
        with pytest.raises(RunwareError) as caught:
            await stream.text()
    assert caught.value.code == "auth"


def test_no_processing_item_looks_finished_to_the_sdk(make_stack: StackFactory) -> None:
    """The SDK takes an item with any non-null top-level `...URL` (or `text`, ...) field for
    a result: acknowledgements, 202 items and running getResponse items must not be one."""
    stack = make_stack(env={"TASKWIRE_SYNC_TIMEOUT_S": "0.3"})
    api = Api(stack)
    task = text_task("[[sim:tokens=30,tps=20]]", deliveryMethod="async", numberResults=2)
    [ack] = api.post([task]).json()["data"]
    running = api.get_response(task["taskUUID"]).json()["data"]
    slow = api.post([text_task("[[sim:tokens=30,tps=20]]", numberResults=2)])
    assert slow.status_code == 202
    processing = [ack, *running, *slow.json()["data"]]
    assert all(item["status"] == "processing" for item in processing)
    assert all(item["links"]["stream"].startswith(stack.api_url) for item in processing)
    assert not any(_is_terminal(item) for item in processing), processing
    assert all(_is_terminal(item) for item in api.wait_final(task["taskUUID"]))
    api.close()
