"""The operator console end to end: /console and its JSON endpoints on real API, worker and
simulator processes. It is off (404) without TASKWIRE_ADMIN_TOKEN and refuses a missing or
wrong token (401); its snapshots show the queue by class and key, running jobs, route
cool-downs, failed results by code, failing webhook receivers and keys with their usage; a
re-send attempts a failing delivery again at once and never doubles one on its way. In
headless Chromium, an operator signs in, watches the queue fill by class and key, sees a
failing receiver, presses re-send (the receiver gets the delivery again) and sees the keys."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devenv.procs import wait_until
from devenv.stack import Stack, StackConfig
from service.auth import key_digest, owner_id
from tests.conftest import (
    KEY_A,
    KEY_B,
    TEST_CATALOG,
    TEST_SETTINGS,
    Api,
    StackFactory,
    text_task,
)
from tests.e2e.test_playground import CHROMIUM, CHROMIUM_ARGS
from tests.receiver import Receiver, running_receiver, wait_for

ADMIN_TOKEN = "tw-console-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OWNER_A = owner_id(key_digest(KEY_A))
OWNER_B = owner_id(key_digest(KEY_B))
FLAKY = "taskwire:flaky@1"
# A model of its own whose route the tests fail on purpose: its cool-down rests no other.
CATALOG = (
    TEST_CATALOG.format(timeout_s=2.0)
    + """
[models."taskwire:flaky@1"]
name = "Flaky"
context_window = 64_000
max_output_tokens = 8_000
price = { input = 1.0, output = 2.0 }

[[models."taskwire:flaky@1".routes]]
name = "flaky"
adapter = "openai-chat"
base_url = "${TASKWIRE_SIM_URL}"
model = "flaky"
api_key_env = "TASKWIRE_SIM_API_KEY"
timeout_s = 2
"""
)
CONSOLE_ENV = {
    "TASKWIRE_ADMIN_TOKEN": ADMIN_TOKEN,
    "TASKWIRE_OUTBOUND_ALLOW_CIDRS": "127.0.0.0/8",
    # after a failed attempt the next one is half a minute away: a re-send brings it forward
    "TASKWIRE_WEBHOOK_SCHEDULE_S": "0,30,60",
    "TASKWIRE_WEBHOOK_JITTER": "0",
    "TASKWIRE_WEBHOOK_TIMEOUT_S": "8",
    "TASKWIRE_INTERACTIVE_WAIT_BUDGET_S": "0",  # no shedding: interactive work may wait
    "TASKWIRE_ROUTE_FAILURE_THRESHOLD": "2",
    "TASKWIRE_ROUTE_COOLDOWN_S": "60",
    "TASKWIRE_UPSTREAM_MAX_ATTEMPTS": "1",
}
ENDPOINTS = ["queue", "routes", "failures", "webhooks", "keys"]


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    """One worker, an API process with the admin API on, and a second one with it off."""
    root = tmp_path_factory.mktemp("console")
    catalog = root / "models.toml"
    catalog.write_text(CATALOG)
    shared = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B],
            catalog_path=catalog,
            env={**TEST_SETTINGS, **CONSOLE_ENV},
        )
    ).start(workers=1)
    shared.config.env.pop("TASKWIRE_ADMIN_TOKEN")
    shared.start_api()
    yield shared
    shared.stop()


def get(stack: Stack, name: str) -> Any:
    response = httpx.get(f"{stack.api_url}/admin/console/{name}", headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()["data"]


def resend(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{stack.api_url}/admin/console/webhooks/resend", json=body, headers=ADMIN, timeout=10
    )


def fail_flaky(api: Api, count: int) -> list[dict[str, Any]]:
    """`count` async tasks on the flaky model whose upstream answers 500; their items."""
    tasks = [
        text_task("[[sim:status=500]]", model=FLAKY, deliveryMethod="async") for _ in range(count)
    ]
    for task in tasks:
        response = api.post([task])
        assert response.status_code == 200, response.text
    return [api.wait_final(task["taskUUID"])[0] for task in tasks]


def test_console_is_off_without_the_admin_token(console_stack: Stack) -> None:
    off = console_stack.api_urls[1]
    assert httpx.get(f"{off}/console").status_code == 404
    for name in ENDPOINTS:
        assert httpx.get(f"{off}/admin/console/{name}", headers=ADMIN).status_code == 404
    refused = httpx.post(f"{off}/admin/console/webhooks/resend", json={"host": "x"}, headers=ADMIN)
    assert refused.status_code == 404


def test_console_needs_the_token(console_stack: Stack) -> None:
    on = console_stack.api_url
    page = httpx.get(f"{on}/console")
    assert page.status_code == 200  # the page holds no data: it asks for the token
    assert "taskwire console" in page.text and ADMIN_TOKEN not in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    for name in ENDPOINTS:
        url = f"{on}/admin/console/{name}"
        assert httpx.get(url).status_code == 401
        for wrong in ("nope", KEY_A, ADMIN_TOKEN + "x"):
            answer = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"})
            assert answer.status_code == 401
            assert answer.json()["errors"][0]["code"] == "invalidAdminToken"
        # the token in the query string is no token
        assert httpx.get(url, params={"token": ADMIN_TOKEN}).status_code == 401
    blind = httpx.post(f"{on}/admin/console/webhooks/resend", json={"host": "127.0.0.1"})
    assert blind.status_code == 401


@pytest.fixture(scope="module")
def shapes_receiver() -> Iterator[Receiver]:
    with running_receiver("127.0.0.2") as running:
        yield running


def test_snapshots(console_stack: Stack, shapes_receiver: Receiver) -> None:
    api = Api(console_stack)
    url = shapes_receiver.answer("/broken", (500, {}, 0.0))
    hooked = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    assert api.post([hooked]).status_code == 200
    failed = fail_flaky(api, 2)  # the threshold: the flaky route rests
    code = failed[0]["error"]["code"]
    assert all(item["status"] == "error" for item in failed)
    wait_for(lambda: len(shapes_receiver.requests("/broken")) == 1, 20, "the first attempt")

    # the failing receiver, by host, with its delivery
    def failing_host() -> dict[str, Any] | None:
        hosts = get(console_stack, "webhooks")["hosts"]
        return next((h for h in hosts if h["host"] == "127.0.0.2"), None)

    wait_until(lambda: failing_host() is not None, 10, "the failing host")
    host = failing_host()
    assert host is not None
    assert host["failing"] == 1 and host["inFlight"] == 0
    [delivery] = host["deliveries"]
    assert delivery["id"] == f"{OWNER_A}:{hooked['taskUUID']}:0:webhook"
    assert delivery["taskUUID"] == hooked["taskUUID"] and delivery["owner"] == OWNER_A
    assert delivery["state"] == "pending" and delivery["attempts"] == 1
    assert delivery["lastStatus"] == 500 and delivery["attempting"] is False
    assert "nextAttemptAt" in delivery and delivery["lastFailureAt"].endswith("Z")
    webhooks = get(console_stack, "webhooks")
    assert webhooks["pendingDeliveries"] >= 1 and webhooks["truncated"] is False

    # the queue: the delivery waits for its next attempt (scheduled), nothing is stuck
    queue = get(console_stack, "queue")
    assert [c["class"] for c in queue["classes"]] == ["interactive", "batch", "webhook"]
    assert all(
        set(c) == {"class", "waiting", "keysWaiting", "startedTotal"} for c in queue["classes"]
    )
    batch = next(c for c in queue["classes"] if c["class"] == "batch")
    assert batch["startedTotal"] >= 3  # the three async tasks above
    assert queue["scheduled"] >= 1
    assert set(queue["running"]) == {"total", "jobs", "truncated"}

    # routes: the flaky one rests, the others serve
    routes = get(console_stack, "routes")
    assert routes["threshold"] == 2 and routes["cooldownS"] == 60
    by_route = {(r["model"], r["route"]): r for r in routes["routes"]}
    flaky = by_route[(FLAKY, "flaky")]
    assert flaky["coolingDown"] is True and 0 < flaky["secondsLeft"] <= 60
    assert flaky["coolingUntil"].endswith("Z")
    assert by_route[("openai:gpt@5.4-mini", "simulator")]["coolingDown"] is False

    # failures by code, and the latest ones with their task
    failures = get(console_stack, "failures")
    assert failures["windowMinutes"] == 60
    row = next(r for r in failures["byCode"] if r["code"] == code)
    assert row["count"] >= 2 and row["last5Minutes"] >= 2
    latest = {f["taskUUID"]: f for f in failures["recent"]}
    for item in failed:
        entry = latest[item["taskUUID"]]
        assert entry["code"] == code and entry["model"] == FLAKY and entry["route"] == "flaky"
        assert entry["owner"] == OWNER_A and entry["message"] == item["error"]["message"]

    # keys: both settings keys, with usage
    keys = get(console_stack, "keys")
    owners = {o["owner"]: o for o in keys["owners"]}
    assert owners[OWNER_A]["source"] == "settings" and OWNER_B in owners
    usage = owners[OWNER_A]["usage"]
    assert usage["tasksLastHour"] >= 3 and usage["tasksRetained"] >= 3
    assert usage["tokensThisMinute"] + usage["tokensLastMinute"] > 0
    assert keys["defaults"]["max_running"] == 1000 and keys["truncated"] is False
    api.close()


@pytest.fixture(scope="module")
def resend_receiver() -> Iterator[Receiver]:
    with running_receiver("127.0.0.3") as running:
        yield running


def test_resend_attempts_now_and_never_doubles(
    console_stack: Stack, resend_receiver: Receiver
) -> None:
    api = Api(console_stack)
    # fails, then (re-sent) takes 3 s to answer 200
    url = resend_receiver.answer("/flaky", (500, {}, 0.0), (200, {}, 3.0))
    task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
    assert api.post([task]).status_code == 200
    delivery = f"{OWNER_A}:{task['taskUUID']}:0:webhook"
    wait_for(lambda: len(resend_receiver.requests("/flaky")) == 1, 20, "the first attempt")
    wait_until(
        lambda: any(h["host"] == "127.0.0.3" for h in get(console_stack, "webhooks")["hosts"]),
        10,
        "the failing host",
    )
    # the next attempt is 30 s away: a re-send of the host brings it forward
    first = resend(console_stack, {"host": "127.0.0.3"})
    assert first.status_code == 202, first.text
    data = first.json()["data"]
    assert data["outcomes"] == {"now": 1, "resent": 0, "running": 0, "due": 0, "gone": 0}
    assert data["deliveries"] == [{"id": delivery, "outcome": "now"}]
    wait_for(lambda: len(resend_receiver.requests("/flaky")) == 2, 10, "the re-sent attempt")
    # while that attempt is in flight, a re-send (of the host, or of it) leaves it alone
    for body in ({"host": "127.0.0.3"}, {"delivery": delivery}):
        again = resend(console_stack, body)
        assert again.status_code == 200, again.text
        assert again.json()["data"]["outcomes"]["running"] == 1
    hosts = get(console_stack, "webhooks")["hosts"]
    [shown] = next(h for h in hosts if h["host"] == "127.0.0.3")["deliveries"]
    assert shown["attempting"] is True and shown["id"] == delivery
    # delivered: the host is no longer failing, and the receiver got it twice, not more
    wait_until(
        lambda: (
            api.get_response(task["taskUUID"]).json()["data"][0]["webhook"]["state"] == "delivered"
        ),
        15,
        "the delivery",
    )
    assert not any(h["host"] == "127.0.0.3" for h in get(console_stack, "webhooks")["hosts"])
    time.sleep(0.5)
    assert len(resend_receiver.requests("/flaky")) == 2
    bodies = {r.headers["webhook-id"] for r in resend_receiver.requests("/flaky")}
    assert len(bodies) == 1  # the same delivery, not a copy
    api.close()


def test_resend_checks_its_body(console_stack: Stack) -> None:
    for body in (
        {},
        {"host": "127.0.0.1", "delivery": f"{OWNER_A}:x:0:webhook"},
        {"delivery": "nope"},
        {"delivery": f"{OWNER_A}:x:0"},
        {"host": ""},
        {"host": "a", "extra": 1},
    ):
        answer = resend(console_stack, body)
        assert answer.status_code == 400, (body, answer.text)
    # a delivery that does not exist is reported gone, and nothing is enqueued
    gone = resend(
        console_stack, {"delivery": f"{OWNER_A}:{'0' * 8}-0000-4000-8000-{'0' * 12}:0:webhook"}
    )
    assert gone.status_code == 200
    assert gone.json()["data"]["outcomes"]["gone"] == 1


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium, as the playground's test runs it (skipped if it is missing, unless
    TASKWIRE_REQUIRE_BROWSER is set)."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("TASKWIRE_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_console_in_chromium(browser: Any, make_stack: StackFactory) -> None:
    # no worker yet: what is submitted waits, and the console shows it by class and key
    stack = make_stack(workers=0, env=CONSOLE_ENV, catalog=CATALOG)
    api = Api(stack)
    for _ in range(3):
        assert api.post([text_task(deliveryMethod="async")]).status_code == 200
    assert api.post([text_task(deliveryMethod="async")], key=KEY_B).status_code == 200
    for _ in range(2):  # stream tasks of KEY_B: interactive; the reader hangs up at once
        with httpx.stream(
            "POST",
            f"{stack.api_url}/v1",
            json=[text_task(deliveryMethod="stream")],
            headers={"Authorization": f"Bearer {KEY_B}"},
            timeout=10,
        ) as response:
            assert response.status_code == 200
    managed = httpx.post(
        f"{stack.api_url}/admin/keys", json={"name": "acme console"}, headers=ADMIN
    ).json()["data"]

    page = browser.new_page()  # type: ignore[attr-defined]
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(f"{stack.api_url}/console")
    # a wrong token is refused and forgotten
    page.get_by_test_id("token").fill("wrong")
    page.get_by_test_id("signin-submit").click()
    # (waits are locators: the page's CSP forbids the eval behind wait_for_function)
    page.get_by_test_id("signin-error").filter(has_text="refused").wait_for()
    assert page.evaluate("sessionStorage.getItem('taskwire.console.token')") is None
    console_errors.clear()  # the browser logs those 401s; from here on, none
    page.get_by_test_id("token").fill(ADMIN_TOKEN)
    page.get_by_test_id("signin-submit").click()
    page.locator("body[data-state=live]").wait_for()

    # queue depth by class, and by key
    def waiting(name: str) -> str | None:
        found: str | None = page.get_by_test_id(f"queue-class-{name}").get_attribute("data-waiting")
        return found

    assert waiting("interactive") == "2" and waiting("batch") == "4"
    assert waiting("webhook") == "0"
    row_a = page.locator(f"[data-testid=queue-key][data-owner='{OWNER_A}']")
    row_b = page.locator(f"[data-testid=queue-key][data-owner='{OWNER_B}']")
    assert row_a.locator("[data-class=batch]").text_content() == "3"
    assert row_a.locator("[data-class=interactive]").text_content() == "0"
    assert row_b.locator("[data-class=interactive]").text_content() == "2"
    assert row_b.locator("[data-class=batch]").text_content() == "1"

    # keys: the settings keys and the managed one, with what each has queued
    keys = page.get_by_test_id("keys")
    assert keys.locator(f"[data-owner='{OWNER_A}']").count() == 1
    assert keys.locator(f"[data-key='{managed['keyId']}']").text_content() is not None
    assert "acme console" in (keys.text_content() or "")
    assert "active" in (keys.locator(f"[data-key='{managed['keyId']}']").text_content() or "")

    # a worker drains the queue; the console follows
    stack.start_worker()
    for name in ("interactive", "batch"):
        page.locator(f"[data-testid=queue-class-{name}][data-waiting='0']").wait_for(timeout=30_000)

    # a receiver that fails, then (re-sent) answers
    with running_receiver() as receiver:
        url = receiver.answer("/hook", (500, {}, 0.0), (200, {}, 0.0))
        task = text_task("[[sim:tokens=4]]", deliveryMethod="async", webhookURL=url)
        assert api.post([task]).status_code == 200
        wait_for(lambda: len(receiver.requests("/hook")) == 1, 20, "the first attempt")
        host = page.locator("[data-testid=webhook-host][data-host='127.0.0.1']")
        host.wait_for(timeout=10_000)
        assert host.get_attribute("data-failing") == "1"
        row = page.locator("[data-testid=webhook-delivery]")
        assert task["taskUUID"] in (row.text_content() or "")
        assert "answered 500" in (row.text_content() or "")
        page.locator("[data-testid=resend-host][data-host='127.0.0.1']").click()
        page.locator("body[data-last-resend]").wait_for()
        assert page.evaluate("JSON.parse(document.body.dataset.lastResend).now") == 1
        # the receiver got it again, long before its next scheduled attempt (30 s)
        wait_for(lambda: len(receiver.requests("/hook")) == 2, 10, "the re-sent attempt")
        host.wait_for(state="detached", timeout=10_000)
        assert "No receiver is failing." in (page.get_by_test_id("webhooks").text_content() or "")
        [item] = api.wait_final(task["taskUUID"])
        assert item["webhook"]["state"] == "delivered" and item["webhook"]["attempts"] == 2

    # never the token in a URL
    assert urls and not any(ADMIN_TOKEN in u for u in urls)
    assert not console_errors, console_errors
    page.close()
    api.close()
