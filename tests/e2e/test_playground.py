"""The playground in headless Chromium: it streams an answer, drops the connection, re-attaches
through the task's streamURL, and ends with the same text as getResponse."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import KEY_A, Api, StackFactory

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
