"""Prometheus metrics end to end: tasks through two API processes and a worker (its probe
port set), then the API's and the worker's /metrics scraped and read. The queue's depth
must come from exactly one of the two API processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devenv.procs import free_port, wait_until
from devenv.stack import Stack
from tests.conftest import KEY_A, MODEL, Api, StackFactory, text_task
from tests.receiver import Receiver, running_receiver

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, found), value in samples.items()
        if sample == name and set(labels.items()) <= set(found)
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def metrics_stack(make_stack: StackFactory) -> tuple[Stack, str]:
    stack = make_stack(
        workers=0,
        apis=2,
        env={
            "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
            # tests take the lock at once; production waits a scrape interval
            "TASKWIRE_METRICS_QUEUE_HANDOVER_S": "0",
        },
    )
    port = free_port()
    stack.start_worker(extra_env={"TASKWIRE_WORKER_HTTP_PORT": str(port)})
    return stack, f"http://127.0.0.1:{port}"


def test_api_and_worker_metrics_after_real_tasks(
    metrics_stack: tuple[Stack, str], receiver: Receiver
) -> None:
    stack, worker_url = metrics_stack
    api = Api(stack)
    try:
        sync = api.post([text_task("[[sim:tokens=4,ttft=20]]")])
        assert sync.status_code == 200, sync.text
        hook = text_task(
            "[[sim:tokens=4]]", deliveryMethod="async", webhookURL=receiver.answer("/hook")
        )
        assert api.post([hook]).status_code == 200
        retried = text_task(f"[[sim:status=503,fail=1]] {uuid.uuid4()}", deliveryMethod="async")
        assert api.post([retried]).status_code == 200
        refused = api.post([text_task(model="nobody:nothing@1")])
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "unknownModel"
        unauthorised = api.post([text_task()], key="tw-not-a-key")
        assert unauthorised.status_code == 401
        api.wait_final(hook["taskUUID"])
        api.wait_final(retried["taskUUID"])
        wait_until(lambda: len(receiver.requests("/hook")) == 1, 20, "the webhook")
    finally:
        api.close()

    # --- the API that answered
    first = scrape(stack.api_urls[0])
    requests = "taskwire_api_requests_total"
    assert (
        get(first, requests, task_type="textInference", delivery_method="sync", status="200") == 1
    )
    assert (
        get(first, requests, task_type="textInference", delivery_method="async", status="200") == 2
    )
    assert (
        get(first, requests, task_type="textInference", delivery_method="sync", status="400") == 1
    )
    assert get(first, requests, task_type="none", delivery_method="none", status="401") == 1
    rejected = "taskwire_api_rejected_total"
    assert get(first, rejected, reason="unknownModel") == 1
    assert total(first, rejected) == 2  # and the unknown key
    assert get(first, "taskwire_api_sync_wait_seconds_count", outcome="complete") == 1
    assert get(first, "taskwire_api_streams_open") == 0

    # --- the worker: read once its last bookkeeping is done (it follows the answers)
    def worker_done() -> bool:
        samples = scrape(worker_url)
        return (
            total(samples, "taskwire_worker_results_total") == 3
            and total(samples, "taskwire_webhook_attempts_total") == 1
        )

    wait_until(worker_done, 20, "the worker's metrics")
    worker = scrape(worker_url)
    labels = {"model": MODEL, "route": "simulator"}
    assert (
        get(worker, "taskwire_worker_results_total", status="success", error_code="", **labels) == 3
    )
    assert total(worker, "taskwire_upstream_request_seconds_count", outcome="ok", **labels) == 3
    assert total(worker, "taskwire_upstream_request_seconds_count", **labels) == 4  # + the 503
    assert get(worker, "taskwire_upstream_ttft_seconds_count", **labels) == 3
    assert total(worker, "taskwire_upstream_retries_total", **labels) == 1
    assert get(worker, "taskwire_webhook_attempts_total", outcome="2xx", state="delivered") == 1
    assert get(worker, "taskwire_webhook_delivery_lag_seconds_count") == 1
    for job_class in ("interactive", "batch", "webhook"):
        assert get(worker, "taskwire_worker_jobs_running", **{"class": job_class}) == 0
    assert total(worker, "taskwire_route_cooldowns_total") == 0

    # --- the queue's depth: from exactly one of the two API processes
    def queue_series(samples: Samples) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
        return [key for key in samples if key[0].startswith("taskwire_queue_")]

    def one_exporter() -> bool:
        exported = [queue_series(scrape(url)) for url in stack.api_urls]
        return sorted(len(found) > 0 for found in exported) == [False, True]

    wait_until(one_exporter, 20, "one API process to export the queue")
    scrapes = [scrape(url) for url in stack.api_urls]
    found = [key for samples in scrapes for key in queue_series(samples)]
    waiting = sorted(
        dict(labels)["class"] for name, labels in found if name == "taskwire_queue_waiting"
    )
    assert waiting == ["batch", "interactive", "webhook"]  # each class once, over both
    assert [name for name, _ in found].count("taskwire_queue_scheduled") == 1
    assert [name for name, _ in found].count("taskwire_queue_leased") == 1
    assert sum(get(samples, "taskwire_metrics_queue_exporter") for samples in scrapes) == 1
    exporter = next(samples for samples in scrapes if queue_series(samples))
    for job_class in ("interactive", "batch", "webhook"):  # all done: nothing waits
        assert get(exporter, "taskwire_queue_waiting", **{"class": job_class}) == 0
    assert get(exporter, "taskwire_queue_leased") == 0


def test_metrics_token_guards_the_api_scrape(make_stack: StackFactory) -> None:
    stack = make_stack(workers=0, env={"TASKWIRE_METRICS_TOKEN": "scrape-secret"})
    url = f"{stack.api_url}/metrics"
    refused = httpx.get(url, timeout=5)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-it"}, timeout=5)
    assert wrong.status_code == 401
    scraped = httpx.get(url, headers={"Authorization": "Bearer scrape-secret"}, timeout=5)
    assert scraped.status_code == 200
    assert "# TYPE taskwire_api_requests_total counter" in scraped.text
    # probes stay open (the kubelet sends no token)
    assert httpx.get(f"{stack.api_url}/livez", timeout=5).status_code == 200


def test_the_openai_door_is_counted(make_stack: StackFactory) -> None:
    stack = make_stack(workers=1)
    auth = {"Authorization": f"Bearer {KEY_A}"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "[[sim:tokens=3]]"}]}
    with httpx.Client(base_url=stack.api_url, headers=auth, timeout=30) as http:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            assert s.status_code == 200 and "[DONE]" in s.read().decode()
        bad = http.post("/v1/chat/completions", json={**chat, "logprobs": True})
        assert bad.status_code == 400
        unknown = http.post("/v1/chat/completions", json={**chat, "model": "nope:1@1"})
        assert unknown.status_code == 404
        created = http.post("/v1/responses", json={"model": MODEL, "input": "[[sim:tokens=2]]"})
        assert created.status_code == 200
        assert http.get(f"/v1/responses/{created.json()['id']}").status_code == 200
    samples = scrape(stack.api_url)
    name = "taskwire_api_openai_requests_total"
    chat_counts = {
        (stream, status): get(
            samples, name, endpoint="chat.completions", stream=stream, status=status
        )
        for stream, status in (
            ("false", "200"),
            ("true", "200"),
            ("false", "400"),
            ("false", "404"),
        )
    }
    assert chat_counts == {
        ("false", "200"): 1,
        ("true", "200"): 1,
        ("false", "400"): 1,
        ("false", "404"): 1,
    }
    assert get(samples, name, endpoint="responses.create", stream="false", status="200") == 1
    assert get(samples, name, endpoint="responses.get", stream="false", status="200") == 1
    rejected = "taskwire_api_rejected_total"
    assert get(samples, rejected, reason="unsupportedParameter") == 1
    assert get(samples, rejected, reason="unknownModel") == 1
