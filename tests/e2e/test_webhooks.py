"""Webhook delivery end to end, to real receivers on loopback (allow-listed for the tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from devenv.stack import Stack
from tests.conftest import KEY_A, KEY_B, Api, StackFactory, text_task
from tests.receiver import Receiver, running_receiver, wait_for

WEBHOOK_ENV = {
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
    # a compressed schedule: four attempts over two seconds
    "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,0.3,0.5,1.2",
    "TASKWIRE_WEBHOOK_JITTER": "0",
    "TASKWIRE_WEBHOOK_TIMEOUT_S": "1",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def hooks_stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    from devenv.stack import StackConfig
    from tests.conftest import TEST_SETTINGS, write_catalog

    root = tmp_path_factory.mktemp("hooks")
    stack = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B],
            catalog_path=write_catalog(root),
            env={**TEST_SETTINGS, **WEBHOOK_ENV},
        )
    ).start()
    yield stack
    stack.stop()


@pytest.fixture
def api(hooks_stack: Stack) -> Iterator[Api]:
    client = Api(hooks_stack)
    yield client
    client.close()


def secret(api: Api, key: str = KEY_A) -> str:
    response = api.http.get("/v1/webhooks/secret", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    value: str = response.json()["secret"]
    return value


def webhook_state(api: Api, task_uuid: str) -> list[dict[str, Any]]:
    return [item.get("webhook", {}) for item in api.get_response(task_uuid).json()["data"]]


def wait_state(api: Api, task_uuid: str, state: str, timeout: float = 20) -> list[dict]:
    found: list[dict] = []

    def reached() -> bool:
        nonlocal found
        found = webhook_state(api, task_uuid)
        return bool(found) and all(w.get("state") == state for w in found)

    wait_for(reached, timeout, f"webhooks of {task_uuid} to be {state}")
    return found


def test_each_result_is_delivered_signed(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/ok-each")
    task = text_task(
        "[[sim:tokens=6]]",
        deliveryMethod="async",
        numberResults=3,
        includeUsage=True,
        webhookURL=url,
    )
    api.post([task])
    states = wait_state(api, task["taskUUID"], "delivered")
    assert [s["attempts"] for s in states] == [1, 1, 1]
    assert all(s["lastStatus"] == 200 and "deliveredAt" in s for s in states)
    requests = receiver.requests("/ok-each")
    assert len(requests) == 3  # one POST per result
    verifier = Webhook(secret(api))
    items = {
        item["resultIndex"]: item for item in api.get_response(task["taskUUID"]).json()["data"]
    }
    ids = set()
    for request in requests:
        payload = verifier.verify(request.body, request.headers)  # raises if not genuine
        [item] = payload["data"]
        shown = items[item["resultIndex"]]
        assert item == {k: v for k, v in shown.items() if k not in ("links", "webhook")}
        assert request.headers["content-type"] == "application/json"
        assert request.headers["webhook-signature"].startswith("v1,")
        ids.add(request.headers["webhook-id"])
    assert len(ids) == 3


def test_sync_and_stream_tasks_deliver_too(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/ok-sync")
    task = text_task("[[sim:tokens=4]]", webhookURL=url)
    [item] = api.post([task]).json()["data"]
    wait_state(api, task["taskUUID"], "delivered")
    [request] = receiver.requests("/ok-sync")
    assert json.loads(request.body) == {"data": [item]}


def test_500_then_200_delivers_once_with_the_same_id(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/flaky", (500, {}, 0), (200, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    [state] = wait_state(api, task["taskUUID"], "delivered")
    assert state["attempts"] == 2
    first, second = receiver.requests("/flaky")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verifier = Webhook(secret(api))
    verifier.verify(first.body, first.headers)
    verifier.verify(second.body, second.headers)


def test_410_stops(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/gone", (410, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    [state] = wait_state(api, task["taskUUID"], "failed")
    assert state["lastStatus"] == 410
    assert "410" in state["lastError"]
    assert len(receiver.requests("/gone")) == 1


def test_redirects_are_not_followed(api: Api, receiver: Receiver) -> None:
    target = receiver.answer("/redirect-target")
    url = receiver.answer("/redirect", (302, {"Location": target}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    [state] = wait_state(api, task["taskUUID"], "failed")
    assert state["attempts"] == 4
    assert "redirect" in state["lastError"]
    assert len(receiver.requests("/redirect")) == 4
    assert receiver.requests("/redirect-target") == []


def test_retry_after_is_honoured(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/busy", (429, {"Retry-After": "1"}, 0), (200, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    wait_state(api, task["taskUUID"], "delivered")
    first, second = receiver.requests("/busy")
    # the schedule's next step is 0.3 s; the receiver asked for 1 s
    assert second.at - first.at >= 1.0


def test_a_hanging_receiver_is_cut_off(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/hang", (200, {}, 5), (200, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    [state] = wait_state(api, task["taskUUID"], "delivered")
    assert state["attempts"] == 2
    first, second = receiver.requests("/hang")
    assert second.at - first.at < 4  # the first attempt was abandoned at the 1 s timeout


def test_down_for_the_whole_schedule_then_resent(api: Api, receiver: Receiver) -> None:
    url = receiver.answer("/down", (503, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    [state] = wait_state(api, task["taskUUID"], "failed")
    assert state["attempts"] == 4
    assert state["lastStatus"] == 503
    assert "nextAttemptAt" not in state
    # the receiver is back; the client asks for the delivery again
    receiver.answer("/down", (200, {}, 0))
    response = api.http.post(
        f"/v1/tasks/{task['taskUUID']}/webhooks/redeliver",
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert response.status_code == 202
    assert response.json()["data"][0]["resent"] is True
    [state] = wait_state(api, task["taskUUID"], "delivered")
    assert state["attempts"] == 5
    requests = receiver.requests("/down")
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    # another key cannot trigger it; a task without a webhook is refused
    response = api.http.post(
        f"/v1/tasks/{task['taskUUID']}/webhooks/redeliver",
        headers={"Authorization": f"Bearer {KEY_B}"},
    )
    assert response.status_code == 404


def test_secret_rotation_signs_with_both(api: Api, receiver: Receiver) -> None:
    old = secret(api, KEY_B)
    assert old.startswith("whsec_")
    rotated = api.http.post(
        "/v1/webhooks/secret/rotate", headers={"Authorization": f"Bearer {KEY_B}"}
    ).json()
    new = rotated["secret"]
    assert new != old and secret(api, KEY_B) == new
    url = receiver.answer("/rotated")
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task], key=KEY_B)
    wait_for(lambda: len(receiver.requests("/rotated")) == 1, 20, "the delivery")
    [request] = receiver.requests("/rotated")
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(request.body, request.headers)
    Webhook(old).verify(request.body, request.headers)
    assert secret(api, KEY_A) != new  # each key has its own


# URLs the old guard (urllib, inet_aton) read one way and httpx (the client) another.
HOSTILE = [
    "http://0127.0.0.1/x.png",
    "http://xn--127-0.0.0.1/x.png",
    "http://[v1.fe80::a]/x.png",
]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[::ffff:192.168.1.1]/hook",
        "http://0x0a000001/hook",
        "http://100.64.1.1/hook",
        "http://[fd00::1]/hook",
        "http://0.0.0.0/hook",
        "ftp://example.com/hook",
        "http://[fec0::1]/hook",
        *HOSTILE,
    ],
)
def test_forbidden_urls_are_refused_at_submit(api: Api, url: str) -> None:
    response = api.post([text_task(webhookURL=url)])
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["code"] == "invalidWebhookURL"
    assert error["parameter"] == "webhookURL"


@pytest.mark.parametrize("url", HOSTILE)
def test_urls_httpx_cannot_parse_are_refused_as_images(api: Api, url: str) -> None:
    """The same parser guards image URLs: refused with the parameter named, never a 500 and
    never a task that fails later."""
    upload = {"taskType": "imageUpload", "taskUUID": text_task()["taskUUID"], "image": url}
    response = api.post([upload])
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["code"], error["parameter"]) == ("invalidImage", "image")
    response = api.post([text_task(inputs={"images": [url]})])
    assert response.status_code == 400, response.text
    [error] = response.json()["errors"]
    assert (error["code"], error["parameter"]) == ("invalidImages", "inputs.images.0")


def test_worker_killed_during_delivery(make_stack: StackFactory) -> None:
    with running_receiver() as receiver:
        stack = make_stack(env={"TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8"})
        api = Api(stack)
        url = receiver.answer("/slow", (200, {}, 30), (200, {}, 0))
        task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
        api.post([task])
        wait_for(lambda: len(receiver.requests("/slow")) == 1, 20, "the first attempt")
        stack.workers[0].kill()  # mid-delivery
        stack.start_worker()
        [state] = wait_state(api, task["taskUUID"], "delivered", timeout=40)
        first, second = receiver.requests("/slow")
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert state["state"] == "delivered"
        api.close()


def lose_delivery_job(stack: Stack, task_uuid: str) -> None:
    """What a lost delivery job looks like: the delivery is still pending, but its arq job
    is neither queued nor leased (arq dropped it after an error, say)."""
    client = stack.redis_client()
    suffix = f":{task_uuid}:0:webhook"
    [member] = [
        raw.decode()
        for raw in client.zrange("tw:q:delayed", 0, -1)
        if raw.decode().endswith(suffix)
    ]
    job_id = member.partition("|")[2]
    client.zrem("tw:q:delayed", member)
    client.delete(f"arq:job:{job_id}", f"arq:in-progress:{job_id}")
    client.close()


def redeliver(api: Api, task_uuid: str) -> dict[str, Any]:
    response = api.http.post(
        f"/v1/tasks/{task_uuid}/webhooks/redeliver", headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert response.status_code in (200, 202), response.text
    [item] = response.json()["data"]
    assert response.status_code == (202 if item["resent"] else 200)
    return dict(item)


def pending_after_first_attempt(api: Api, receiver: Receiver, path: str) -> str:
    """A task whose delivery failed once and waits (on the schedule) for its next attempt."""
    url = receiver.answer(path, (500, {}, 0), (200, {}, 0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    api.post([task])
    wait_for(lambda: webhook_state(api, task["taskUUID"])[0].get("attempts") == 1, 20, "attempt 1")
    return str(task["taskUUID"])


SLOW_SCHEDULE = {**WEBHOOK_ENV, "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,2,2"}


def test_a_delivery_whose_job_was_lost_is_found_by_the_sweep(make_stack: StackFactory) -> None:
    with running_receiver() as receiver:
        stack = make_stack(env={**SLOW_SCHEDULE, "TASKWIRE_WEBHOOK_SWEEP_INTERVAL_S": "0.5"})
        api = Api(stack)
        task_uuid = pending_after_first_attempt(api, receiver, "/lost")
        lose_delivery_job(stack, task_uuid)
        [state] = wait_state(api, task_uuid, "delivered")
        assert state["attempts"] == 2
        assert len(receiver.requests("/lost")) == 2
        client = stack.redis_client()
        assert client.zcard("tw:webhooks:pending") == 0  # the index forgets settled ones
        client.close()
        api.close()


def test_redeliver_resends_delivered_and_stuck_but_not_those_on_their_way(
    make_stack: StackFactory,
) -> None:
    with running_receiver() as receiver:
        stack = make_stack(
            env={
                **WEBHOOK_ENV,
                "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,10,10",
                "TASKWIRE_WEBHOOK_SWEEP_INTERVAL_S": "3600",
            }
        )
        api = Api(stack)
        task_uuid = pending_after_first_attempt(api, receiver, "/stuck")
        # pending with its job queued for the next attempt: already on its way
        item = redeliver(api, task_uuid)
        assert (item["resent"], item["webhook"]["state"]) == (False, "pending")
        # pending with its job lost: stuck, and re-sent on request
        lose_delivery_job(stack, task_uuid)
        assert redeliver(api, task_uuid)["resent"] is True
        [state] = wait_state(api, task_uuid, "delivered")
        assert state["attempts"] == 2
        # delivered: re-sent on request too (a receiver that lost it asks again)
        assert redeliver(api, task_uuid)["resent"] is True
        wait_for(lambda: len(receiver.requests("/stuck")) == 3, 20, "the re-sent delivery")
        [state] = wait_state(api, task_uuid, "delivered")
        assert state["attempts"] == 3
        assert len({r.headers["webhook-id"] for r in receiver.requests("/stuck")}) == 1
        api.close()
