"""Streaming delivery end to end: wire format, re-attaching, resuming, tokens, scale."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import connect_sse

from core.keys import Keys, TaskRef
from core.tokens import StreamTokens
from devenv.procs import wait_until
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, KEY_B, Api, StackFactory, text_task
from tests.sse import assemble, check_chunk, id_order, parse_strict


def stream_post(api: Api, task: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {api.key}"}
    ) as response:
        return response, response.read()


def events_url(task_uuid: str) -> str:
    return f"/v1/tasks/{task_uuid}/events"


def final_items(api: Api, task_uuid: str) -> list[dict[str, Any]]:
    return api.wait_final(task_uuid)


def test_stream_wire_format(api: Api) -> None:
    task = text_task(
        "[[sim:tokens=30,tps=200,reasoning=4]]",
        deliveryMethod="stream",
        numberResults=2,
        includeUsage=True,
        includeCost=True,
        seed=5,
    )
    response, raw = stream_post(api, task)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    parsed = parse_strict(raw)
    events = parsed.events
    assert events[-1].done
    assert events[-1].id == events[-2].id  # [DONE] carries the last event's id
    orders = [id_order(e.id) for e in events[:-1]]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    kinds = [check_chunk(e.json, task["taskUUID"], 2) for e in events[:-1]]
    assert kinds.count("final") == 2 and "error" not in kinds
    finals = {e.json["resultIndex"]: e.json for e in events[:-1] if "finishReason" in e.json}
    streamed = assemble(events)
    items = final_items(api, task["taskUUID"])
    for item in items:
        index = item["resultIndex"]
        assert streamed[index]["text"] == item["text"]
        assert streamed[index]["reasoning"] == item["reasoningContent"]
        assert finals[index]["usage"] == item["usage"]
        assert finals[index]["cost"] == item["cost"]
        assert finals[index]["finishReason"] == item["finishReason"]
        assert finals[index]["seed"] == item["seed"] == 5 + index
    # reasoning comes before text within each result
    for index in (0, 1):
        chunks = [
            e.json["delta"]
            for e in events[:-1]
            if e.json.get("resultIndex") == index and e.json.get("delta")
        ]
        first_text = next(i for i, d in enumerate(chunks) if "text" in d)
        assert all("reasoningContent" in d for d in chunks[:first_text])
        assert not any("reasoningContent" in d for d in chunks[first_text:])
    # results are interleaved, each chunk saying which it belongs to
    indexes = [e.json["resultIndex"] for e in events[:-1]]
    assert indexes != sorted(indexes)
    # the same stream through httpx-sse, a lenient reference parser
    with connect_sse(
        api.http, "GET", events_url(task["taskUUID"]), headers={"Authorization": f"Bearer {KEY_A}"}
    ) as source:
        reference = [(sse.id, sse.data) for sse in source.iter_sse() if sse.data]
    assert reference == [(e.id, e.data) for e in events]


def test_usage_and_cost_only_when_asked(api: Api) -> None:
    task = text_task("[[sim:tokens=5]]", deliveryMethod="stream", includeCost=False)
    _, raw = stream_post(api, task)
    events = parse_strict(raw).events
    [final] = [e.json for e in events if not e.done and "finishReason" in e.json]
    assert set(final) == {"taskUUID", "taskType", "resultIndex", "delta", "finishReason", "seed"}


def test_validation_errors_before_the_stream_are_json(api: Api) -> None:
    response = api.post([text_task(deliveryMethod="stream", settings={"temperature": 9})])
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["errors"][0]["parameter"] == "settings.temperature"
    response = api.post([text_task(deliveryMethod="stream")], key="nope")
    assert response.status_code == 401


def test_a_stream_task_must_be_alone(api: Api) -> None:
    response = api.post([text_task(deliveryMethod="stream"), text_task()])
    body = response.json()
    assert body["errors"][0]["code"] == "invalidDeliveryMethod"
    assert body["data"][0]["status"] == "success"


def test_failure_mid_stream_is_an_errors_event_then_done(api: Api) -> None:
    task = text_task("[[sim:tokens=40,tps=100,drop_after=10]]", deliveryMethod="stream")
    _, raw = stream_post(api, task)
    events = parse_strict(raw).events
    assert events[-1].done
    error = events[-2].json
    assert check_chunk(error, task["taskUUID"], 1) == "error"
    assert error["errors"][0]["code"] == "inferenceError"
    assert any("delta" in e.json for e in events[:-2])  # output had started
    [item] = final_items(api, task["taskUUID"])
    assert item["status"] == "error"


def test_failure_before_output(api: Api) -> None:
    task = text_task("[[sim:status=500]]", deliveryMethod="stream")
    _, raw = stream_post(api, task)
    events = parse_strict(raw).events
    assert [e.done for e in events] == [False, True]
    assert events[0].json["errors"][0]["code"] == "inferenceError"


def test_keepalive_comments_while_the_upstream_is_silent(make_stack: StackFactory) -> None:
    stack = make_stack(env={"TASKWIRE_SSE_KEEPALIVE_S": "0.2"}, upstream_timeout_s=10)
    api = Api(stack)
    task = text_task("[[sim:ttft=1500,tokens=3]]", deliveryMethod="stream")
    _, raw = stream_post(api, task)
    parsed = parse_strict(raw)
    assert parsed.comments >= 3
    assert raw.index(b": keep-alive") < raw.index(b"data: {")
    assert parsed.events[-1].done
    api.close()


def test_reattach_to_any_task(api: Api) -> None:
    sync_task = text_task("[[sim:tokens=8]]", seed=1)
    [item] = api.post([sync_task]).json()["data"]
    with api.http.stream(
        "GET", events_url(sync_task["taskUUID"]), headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        parsed = parse_strict(response.read())
    assert parsed.retry == 1000
    assert assemble(parsed.events)[0]["text"] == item["text"]
    assert parsed.events[-1].done
    # a running async task, attached while it streams
    async_task = text_task("[[sim:tokens=30,tps=60]]", deliveryMethod="async", seed=2)
    api.post([async_task])
    with api.http.stream(
        "GET", events_url(async_task["taskUUID"]), headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        parsed = parse_strict(response.read())
    [final] = final_items(api, async_task["taskUUID"])
    assert assemble(parsed.events)[0]["text"] == final["text"]


def test_resume_after_disconnects_at_random_points(api: Api) -> None:
    task = text_task("[[sim:tokens=400,tps=800]]", deliveryMethod="stream", numberResults=2, seed=3)
    rng = random.Random(7)
    received: list[Any] = []
    # first connection: the POST itself, dropped after a few events
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        received += _read_events(response, stop_after=rng.randint(1, 4))
    reconnects = 0
    finished = False
    while not finished:
        last = received[-1][0]
        use_header = reconnects % 2 == 0
        headers = {"Authorization": f"Bearer {KEY_A}"}
        params = {}
        if use_header:
            headers["Last-Event-ID"] = last
        else:
            params["after"] = last
        with api.http.stream(
            "GET", events_url(task["taskUUID"]), headers=headers, params=params
        ) as response:
            # 204: the drop came right after the last result, before [DONE]; nothing is left
            assert response.status_code in (200, 204)
            if response.status_code == 200:
                received += _read_events(response, stop_after=rng.randint(1, 6))
            finished = response.status_code == 204 or received[-1][1] == "[DONE]"
        reconnects += 1
    assert reconnects >= 3
    ids = [event_id for event_id, data in received if data != "[DONE]"]
    assert [id_order(i) for i in ids] == sorted(id_order(i) for i in set(ids))  # no duplicate
    text: dict[int, str] = {0: "", 1: ""}
    for _, data in received:
        if data != "[DONE]":
            chunk = httpx.Response(200, content=data).json()
            text[chunk["resultIndex"]] += chunk.get("delta", {}).get("text", "")
    items = final_items(api, task["taskUUID"])
    assert [text[0], text[1]] == [items[0]["text"], items[1]["text"]]  # no gap


def test_reattaching_past_the_end_of_a_finished_task_answers_204(api: Api) -> None:
    task = text_task("[[sim:tokens=8]]", deliveryMethod="async", seed=13)
    [ack] = api.post([task]).json()["data"]
    link = ack["links"]["stream"]
    key = {"Authorization": f"Bearer {KEY_A}"}
    with api.http.stream("GET", link) as response:  # read to the end: the task finishes
        events = parse_strict(response.read()).events
    assert events[-1].done
    last = events[-1].id
    # at the last event: nothing left, so "stop reconnecting" (with CORS for a browser)
    response = api.http.get(link, headers={"Last-Event-ID": last})
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    by_key = api.http.get(events_url(task["taskUUID"]), headers=key, params={"after": last})
    assert by_key.status_code == 204
    # before the last result's final event, or with no position at all: the rest, then [DONE]
    before = events[-3].id
    with api.http.stream("GET", link, headers={"Last-Event-ID": before}) as response:
        assert response.status_code == 200
        rest = parse_strict(response.read()).events
    assert [e.id for e in rest] == [e.id for e in events[-2:]]
    with api.http.stream("GET", link) as response:
        assert response.status_code == 200
        assert parse_strict(response.read()).events[-1].done


def test_a_running_task_is_not_finished_for_a_client_that_caught_up(api: Api) -> None:
    task = text_task("[[sim:tokens=40,tps=20]]", deliveryMethod="async", seed=14)
    [ack] = api.post([task]).json()["data"]
    link = ack["links"]["stream"]
    with api.http.stream("GET", link) as response:
        first = _read_events(response, stop_after=1)
    with api.http.stream("GET", link, headers={"Last-Event-ID": first[-1][0]}) as response:
        assert response.status_code == 200
        assert parse_strict(response.read()).events[-1].done


def _read_events(response: httpx.Response, stop_after: int) -> list[tuple[str, str]]:
    """Read up to `stop_after` id'd events, then drop the connection."""
    events: list[tuple[str, str]] = []
    current_id = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            current_id = line[4:]
        elif line.startswith("data: "):
            assert current_id is not None
            events.append((current_id, line[6:]))
            if line == "data: [DONE]" or len(events) >= stop_after:
                break
    return events


def test_disconnecting_does_not_cancel_the_task(api: Api) -> None:
    task = text_task("[[sim:tokens=40,tps=80]]", deliveryMethod="stream", seed=4)
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        first = _read_events(response, stop_after=1)
    assert first
    [item] = final_items(api, task["taskUUID"])
    assert item["status"] == "success"
    assert len(item["text"].split()) == 40


def test_a_slow_reader_does_not_hold_up_the_worker(api: Api) -> None:
    task = text_task("[[sim:tokens=30000]]", deliveryMethod="stream", seed=6)
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        lines = response.iter_lines()
        first = [next(lines), next(lines)]
        assert first[1].startswith("data: {")
        # The reader stops reading here; the worker finishes regardless.
        [item] = final_items(api, task["taskUUID"])
        assert item["status"] == "success"
        rest = list(lines)
    raw = ("\n".join(first + rest) + "\n").encode()
    streamed = assemble(parse_strict(raw).events)
    assert streamed[0]["text"] == item["text"]


def test_stream_url_tokens(api: Api, stack) -> None:
    task = text_task("[[sim:tokens=6]]", deliveryMethod="async")
    [ack] = api.post([task]).json()["data"]
    url = ack["links"]["stream"]
    assert url.startswith(f"{stack.api_url}/v1/tasks/{task['taskUUID']}/events?token=")
    other = text_task("[[sim:tokens=6]]", deliveryMethod="async")
    [other_ack] = api.post([other]).json()["data"]
    anonymous = httpx.Client(base_url=stack.api_url, timeout=30)
    # valid: no API key needed, CORS open for browsers
    with anonymous.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        assert parse_strict(response.read()).events[-1].done
    # altered
    path, _, token = url.partition("?token=")
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    response = anonymous.get(f"{path}?token={tampered}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "invalidStreamToken"
    # another task's token
    other_token = other_ack["links"]["stream"].partition("?token=")[2]
    assert anonymous.get(f"{path}?token={other_token}").status_code == 401
    # expired: minted with the server's secret, an hour too old
    client = redis.Redis.from_url(stack.redis_url)
    secret = client.get("tw:secret:stream-token")
    client.close()
    owner = owner_id(key_digest(KEY_A))
    expired = StreamTokens(secret, 60).issue(owner, task["taskUUID"], now=time.time() - 3600)
    response = anonymous.get(f"{path}?token={expired}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "expiredStreamToken"
    # genuine token for a task that does not exist
    missing = str(uuid.uuid4())
    fresh = StreamTokens(secret, 60).issue(owner, missing)
    assert anonymous.get(f"/v1/tasks/{missing}/events?token={fresh}").status_code == 404
    # no credentials, or another key
    assert anonymous.get(path).status_code == 401
    response = anonymous.get(path, headers={"Authorization": f"Bearer {KEY_B}"})
    assert response.status_code == 404
    response = anonymous.get(
        "/v1/tasks/not-a-uuid/events", headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert response.status_code == 400
    response = anonymous.get(
        path, headers={"Authorization": f"Bearer {KEY_A}", "Last-Event-ID": "bogus"}
    )
    assert response.status_code == 400
    anonymous.close()


def test_long_connections_close_and_resume(make_stack: StackFactory) -> None:
    stack = make_stack(env={"TASKWIRE_SSE_MAX_LIFETIME_S": "0.5"})
    api = Api(stack)
    task = text_task("[[sim:tokens=40,tps=25]]", deliveryMethod="async", seed=8)
    api.post([task])
    received: list[tuple[str, str]] = []
    connections = 0
    while not (received and received[-1][1] == "[DONE]"):
        headers = {"Authorization": f"Bearer {KEY_A}"}
        if received:
            headers["Last-Event-ID"] = received[-1][0]
        with api.http.stream("GET", events_url(task["taskUUID"]), headers=headers) as response:
            received += _read_events(response, stop_after=10_000)
        connections += 1
    assert connections >= 2  # the server closed at least once, and the client resumed
    text = "".join(
        httpx.Response(200, content=d).json()["delta"].get("text", "")
        for _, d in received
        if d != "[DONE]" and '"delta":{"' in d
    )
    [item] = final_items(api, task["taskUUID"])
    assert text == item["text"]
    api.close()


def test_five_hundred_concurrent_streams(api: Api, stack) -> None:
    tasks = [
        text_task(f"many {i} [[sim:tokens=20,tps=20]]", deliveryMethod="stream", seed=i)
        for i in range(500)
    ]

    async def one(client: httpx.AsyncClient, task: dict[str, Any]) -> str:
        async with client.stream(
            "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {KEY_A}"}
        ) as response:
            assert response.status_code == 200
            raw = await response.aread()
        events = parse_strict(raw).events
        assert events[-1].done
        return assemble(events)[0]["text"]

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, task) for task in tasks))

    peak = _pubsub_connections(stack)
    texts = asyncio.run(main())
    for task, text in zip(tasks, texts, strict=True):
        [item] = api.get_response(task["taskUUID"]).json()["data"]
        assert item["status"] == "success"
        assert text == item["text"]
    # one pub/sub connection for the API process (and one wake-up listener per worker)
    assert peak == _pubsub_connections(stack) == 1 + len(stack.workers)


def _pubsub_connections(stack) -> int:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        return sum(1 for c in client.client_list() if int(c.get("sub", 0)) > 0)
    finally:
        client.close()


def test_stream_keys_expire_with_the_task(api: Api, stack) -> None:
    task = text_task("[[sim:tokens=3]]", deliveryMethod="stream")
    stream_post(api, task)
    client = redis.Redis.from_url(stack.redis_url)
    keys = Keys("tw", "tw:queue")
    ref = TaskRef(owner_id(key_digest(KEY_A)), task["taskUUID"])
    wait_until(lambda: client.ttl(keys.events(ref)) > 0, 5, "the event stream's TTL")
    assert 0 < client.ttl(keys.events(ref)) <= 24 * 3600
    assert client.ttl(keys.task(ref)) > 0
    client.close()


@pytest.mark.parametrize("delivery", ["sync", "async"])
def test_sync_and_async_tasks_also_have_event_streams(api: Api, delivery: str) -> None:
    task = text_task("[[sim:tokens=10]]", deliveryMethod=delivery, seed=9)
    api.post([task])
    [item] = final_items(api, task["taskUUID"])
    with api.http.stream(
        "GET", events_url(task["taskUUID"]), headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        events = parse_strict(response.read()).events
    assert assemble(events)[0]["text"] == item["text"]


def test_worker_killed_mid_stream_resumes_without_gap_or_repeat(make_stack: StackFactory) -> None:
    stack = make_stack()
    api = Api(stack)
    task = text_task("[[sim:tokens=60,tps=15]]", deliveryMethod="stream", seed=12)
    with api.http.stream(
        "POST", "/v1", json=[task], headers={"Authorization": f"Bearer {KEY_A}"}
    ) as response:
        lines = response.iter_lines()
        head = []
        for line in lines:
            head.append(line)
            if sum(1 for h in head if h.startswith("data: {")) == 3:
                break
        stack.workers[0].kill()  # mid-answer: three deltas out, the rest not yet produced
        stack.start_worker()
        rest = list(lines)
    events = parse_strict(("\n".join(head + rest) + "\n").encode()).events
    assert events[-1].done
    [item] = api.wait_final(task["taskUUID"])
    assert item["status"] == "success"
    assert assemble(events)[0]["text"] == item["text"]
    assert len(item["text"].split()) == 60
    api.close()
