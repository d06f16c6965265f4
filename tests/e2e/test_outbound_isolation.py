"""Outbound isolation on the real stack: one key's silent webhook receivers and image hosts
that never answer must not delay another key's deliveries or uploads.

Both tests run two receivers on different loopback addresses (two hosts, to the per-host
limits): a silent one for key A, a healthy one for key B."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import httpx

from tests.conftest import KEY_A, KEY_B, Api, StackFactory, text_task
from tests.receiver import Receiver, running_receiver, wait_for

GIF = b"GIF89a" + b"\0" * 32
PER_HOST = 20

WEBHOOK_ENV = {
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
    "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,60",  # key A's second attempts fall after the test
    "TASKWIRE_WEBHOOK_JITTER": "0",
    "TASKWIRE_WEBHOOK_TIMEOUT_S": "3",
    # Not what isolates here: an operator raised the per-key cap on running deliveries (the
    # scheduler's `max_h`) above what one worker's connection pool held.
    "TASKWIRE_KEY_MAX_DELIVERIES": "1000",
    "TASKWIRE_WEBHOOK_MAX_PER_HOST": str(PER_HOST),
    "TASKWIRE_WEBHOOK_HOST_BUSY_DELAY_S": "0.5",
}


def test_silent_receivers_of_one_key_do_not_delay_another_keys_deliveries(
    make_stack: StackFactory,
) -> None:
    with running_receiver() as silent, running_receiver("127.0.0.2") as healthy:
        stack = make_stack(env=WEBHOOK_ENV)
        api = Api(stack)
        url = silent.silent("/silent")
        flood = [
            text_task("[[sim:tokens=1]]", deliveryMethod="async", webhookURL=url)
            for _ in range(300)
        ]
        assert api.post(flood).status_code == 200
        wait_for(lambda: len(silent.requests("/silent")) >= PER_HOST, 20, "key A's attempts")

        ok = healthy.answer("/ok")
        tasks = [
            text_task("[[sim:tokens=1]]", deliveryMethod="async", webhookURL=ok) for _ in range(5)
        ]
        submitted = time.time()
        assert api.post(tasks, key=KEY_B).status_code == 200
        wait_for(lambda: len(healthy.requests("/ok")) == 5, 20, "key B's deliveries")
        lag = max(request.at for request in healthy.requests("/ok")) - submitted
        attempted = len(silent.requests("/silent"))
        # A's attempts are cut off at 3 s; B's deliveries did not wait for that.
        assert lag < 1.5, f"key B's deliveries took {lag:.2f} s"
        # Only PER_HOST of A's deliveries reached the host; the rest waited in the queue
        # (without a connection, a worker slot, or an attempt counted).
        assert silent.max_in_flight["/silent"] <= PER_HOST
        assert attempted <= PER_HOST
        waiting = [t for t in flood if attempts(api, t["taskUUID"]) == 0]
        assert len(waiting) >= 300 - attempted

        # When the first attempts time out, the host's slots go to the deliveries waiting.
        wait_for(
            lambda: len(silent.requests("/silent")) > attempted, 15, "the next waiting delivery"
        )
        assert silent.max_in_flight["/silent"] <= PER_HOST
        api.close()


def attempts(api: Api, task_uuid: str) -> int:
    [item] = api.get_response(task_uuid).json()["data"]
    webhook: dict[str, Any] = item.get("webhook", {})
    assert webhook.get("state") in (None, "pending"), webhook
    return int(webhook.get("attempts", 0))


PER_KEY = 8
IMAGE_ENV = {
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
    "TASKWIRE_IMAGE_FETCH_TIMEOUT_S": "5",
    "TASKWIRE_IMAGE_FETCH_PER_KEY": str(PER_KEY),
}


def image_upload(image: str) -> list[dict[str, Any]]:
    return [{"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()), "image": image}]


async def upload(http: httpx.AsyncClient, key: str, image: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return await http.post("/v1", json=image_upload(image), headers=headers)


async def uploads_under_flood(api_url: str, silent: Receiver, healthy: Receiver) -> None:
    never = silent.silent("/never.gif")
    served = healthy.answer("/ok.gif", (200, {"content-type": "image/gif"}, 0.0, GIF))
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as http:
        flood = [asyncio.create_task(upload(http, KEY_A, never)) for _ in range(250)]
        fetching = lambda: len(silent.requests("/never.gif")) >= PER_KEY  # noqa: E731
        await asyncio.to_thread(wait_for, fetching, 20, "key A's fetches")
        started = time.monotonic()
        by_url = await upload(http, KEY_B, served)
        took_url = time.monotonic() - started
        started = time.monotonic()
        inline = "data:image/gif;base64," + base64.b64encode(GIF).decode()
        by_data = await upload(http, KEY_B, inline)
        took_data = time.monotonic() - started
        # A's fetches are cut off at 5 s; B's upload did not wait for that.
        assert by_url.status_code == 200, by_url.text
        assert by_url.json()["data"][0]["imageUUID"]
        assert took_url < 2.0, f"key B's URL upload took {took_url:.2f} s"
        assert by_data.status_code == 200, by_data.text
        assert took_data < 2.0, f"key B's data-URI upload took {took_data:.2f} s"
        assert silent.max_in_flight["/never.gif"] <= PER_KEY
        # Every one of A's uploads is answered (a 400 naming the image), none hangs or 5xx.
        for response in await asyncio.gather(*flood):
            assert response.status_code == 400, response.text
            assert response.json()["errors"][0]["code"] == "invalidImage"


def test_image_hosts_that_never_answer_do_not_delay_another_keys_upload(
    make_stack: StackFactory,
) -> None:
    with running_receiver() as silent, running_receiver("127.0.0.2") as healthy:
        stack = make_stack(env=IMAGE_ENV)
        asyncio.run(uploads_under_flood(stack.api_url, silent, healthy))
