"""Headless Chromium: the playground streams an answer, drops the connection, re-attaches
through the task's stream link, and ends with the same text as getResponse; an EventSource
on another origin stops reconnecting once a finished stream ends."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import KEY_A, Api, StackFactory, text_task

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("TASKWIRE_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_playground_streams_and_resumes(browser, make_stack: StackFactory) -> None:
    stack = make_stack()
    page = browser.new_page()  # type: ignore[attr-defined]
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{stack.api_url}/playground")
    page.get_by_test_id("key").fill(KEY_A)
    page.get_by_test_id("key").dispatch_event("change")
    page.wait_for_function("document.getElementById('model').value === 'openai:gpt@5.4-mini'")
    page.get_by_test_id("prompt").fill("A poem, slowly. [[sim:tokens=80,tps=40,reasoning=5]]")
    page.get_by_test_id("send").click()
    # some text has arrived, then the reader drops the connection and re-attaches mid-answer
    page.wait_for_function("document.getElementById('output').textContent.split(' ').length > 8")
    before = page.get_by_test_id("output").text_content() or ""
    page.get_by_test_id("reattach").click()
    page.wait_for_function("document.body.dataset.reattached === '1'")
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=30_000)
    streamed = page.get_by_test_id("output").text_content() or ""
    assert len(streamed) > len(before) > 0
    assert streamed.startswith(before)
    assert page.get_by_test_id("check").get_attribute("data-match") == "yes"
    # and the page's text is getResponse's, checked from outside the browser too
    task_uuid = page.evaluate("state.taskUUID")
    api = Api(stack)
    [item] = api.wait_final(task_uuid)
    api.close()
    assert streamed == item["text"]
    assert page.get_by_test_id("reasoning").text_content().strip() == item["reasoningContent"]
    assert not console_errors, console_errors
    page.close()


@contextlib.contextmanager
def frontend() -> Iterator[str]:
    """A page on another origin than the API's: its own local HTTP server (a real address,
    as Chromium only lets local pages make requests to local addresses)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>front end</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_event_source_on_another_origin_stops_after_the_end(browser, stack) -> None:
    """A page of another origin opens an EventSource on a task's stream link as it is: it
    gets the answer and [DONE]; when the server then closes, the browser's one reconnect is
    answered 204 and the EventSource stops for good, instead of replaying [DONE] forever."""
    api = Api(stack)
    task = text_task("[[sim:tokens=12,tps=60]]", deliveryMethod="async", seed=31)
    [ack] = api.post([task]).json()["data"]
    link = ack["links"]["stream"]
    assert link.startswith(f"{stack.api_url}/v1/tasks/")  # absolute: usable from anywhere
    page = browser.new_page()  # type: ignore[attr-defined]
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/events" in r.url else None)
    with frontend() as origin:
        page.goto(origin)
        page.evaluate(
            """(url) => {
                window.seen = { opens: 0, done: 0, text: "", final: null };
                const source = new EventSource(url);
                window.source = source;
                source.onopen = () => { window.seen.opens += 1; };
                source.onmessage = (event) => {
                    if (event.data === "[DONE]") { window.seen.done += 1; return; }
                    const chunk = JSON.parse(event.data);
                    if (chunk.delta && chunk.delta.text) window.seen.text += chunk.delta.text;
                    if (chunk.finishReason) window.seen.final = chunk;
                };
            }""",
            link,
        )
        # EventSource.CLOSED: the browser gave up reconnecting (retry is 1 s)
        page.wait_for_function("window.source.readyState === EventSource.CLOSED", timeout=20_000)
        seen = page.evaluate("window.seen")
        [item] = api.wait_final(task["taskUUID"])
        api.close()
        assert seen["done"] == 1 and seen["opens"] == 1
        assert seen["text"] == item["text"]
        assert seen["final"]["seed"] == item["seed"] == 31
        assert len(requests) == 2  # the stream, then one reconnect answered 204
        assert not console_errors, console_errors
    page.close()
