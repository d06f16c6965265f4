"""API keys managed at run time, end to end: the CLI and the admin API against two API
processes (and a third with the admin API on) on one Redis, with a worker. A change is in
force on every API process within a second, without restarts."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devenv.procs import python_argv, wait_until
from devenv.stack import Stack, StackConfig
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, KEY_B, TEST_SETTINGS, text_task, write_catalog

ADMIN_TOKEN = "tw-admin-token-0123456789"
KEY_LIMITS = {KEY_B: {"max_running": 3}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_binary: str) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("apikeys")
    shared = Stack(
        StackConfig(
            root=root,
            api_keys=[KEY_A, KEY_B],
            catalog_path=write_catalog(root),
            env={**TEST_SETTINGS, "TASKWIRE_KEY_LIMITS": json.dumps(KEY_LIMITS)},
        )
    ).start(workers=1)
    shared.start_api()
    # a third API process, the only one with the admin API on
    shared.config.env["TASKWIRE_ADMIN_TOKEN"] = ADMIN_TOKEN
    shared.start_api()
    shared.config.env.pop("TASKWIRE_ADMIN_TOKEN")
    yield shared
    shared.stop()


def cli(stack: Stack, *args: str) -> str:
    """Run `python -m service.keys ...` against the stack's Redis; its stdout."""
    done = subprocess.run(
        python_argv("-m", "service.keys", *args),
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "twk_" not in done.stderr
    return done.stdout


def created_key(output: str) -> str:
    """The key a create or rotate printed (the line after the notice), checked to be there
    exactly once."""
    lines = output.splitlines()
    assert lines[0].startswith("New API key (shown this once")
    key = lines[1].strip()
    assert key.startswith("twk_") and output.count(key) == 1
    return key


def field(output: str, name: str) -> str:
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return parts[1]
    raise AssertionError(f"{name} not in {output!r}")


def auth(url: str, key: str) -> httpx.Response:
    """The cheapest authenticated request: an authentication task and nothing else."""
    return httpx.post(f"{url}/v1", json=[{"taskType": "authentication", "apiKey": key}])


def accepted_everywhere(stack: Stack, key: str, urls: list[str] | None = None) -> bool:
    return all(auth(url, key).status_code == 200 for url in urls or stack.api_urls)


def refused_everywhere(stack: Stack, key: str) -> bool:
    return all(auth(url, key).status_code == 401 for url in stack.api_urls)


def seconds_until(condition: Any, within_s: float = 5.0) -> float:
    started = time.monotonic()
    wait_until(condition, within_s, "the change to reach every API process")
    return time.monotonic() - started


def test_env_keys_and_their_overrides_still_work(stack: Stack) -> None:
    for url in stack.api_urls:
        assert auth(url, KEY_A).status_code == 200
        assert auth(url, KEY_B).status_code == 200
    client = stack.redis_client()
    try:
        tenant = client.hgetall(f"tw:tenant:{owner_id(key_digest(KEY_B))}")
        assert tenant == {b"max_r": b"3"}
    finally:
        client.close()


def test_create_then_revoke_reach_every_api_within_a_second(stack: Stack) -> None:
    output = cli(stack, "create", "--name", "acme")
    key = created_key(output)
    took = seconds_until(lambda: accepted_everywhere(stack, key))
    assert took < 1.0, took
    key_id = field(output, "keyId")
    listing = cli(stack, "list")
    assert key_id in listing and "acme" in listing and key not in listing
    assert key not in cli(stack, "list", "--json")
    client = stack.redis_client()
    try:
        for name in client.scan_iter():
            assert key.encode() not in name
            if client.type(name) == b"hash":
                assert not any(key.encode() in v for v in client.hgetall(name).values())
    finally:
        client.close()
    for process in stack.apis:
        assert key not in process.log_text()

    assert f"revoked {key_id}" in cli(stack, "revoke", key_id)
    took = seconds_until(lambda: refused_everywhere(stack, key))
    assert took < 1.0, took
    answer = auth(stack.api_urls[1], key)
    assert answer.json()["errors"][0]["code"] == "invalidApiKey"
    assert "revoked" in cli(stack, "list")


def test_an_expired_key_is_refused_with_a_clear_message(stack: Stack) -> None:
    key = created_key(cli(stack, "create", "--name", "brief", "--expires-in", "3s"))
    wait_until(lambda: accepted_everywhere(stack, key), 2, "the key to work")
    wait_until(lambda: refused_everywhere(stack, key), 10, "the key to expire")
    error = auth(stack.api_url, key).json()["errors"][0]
    assert error["code"] == "invalidApiKey" and "expired at" in error["message"], error


def test_rotate_keeps_the_owner_and_its_tasks(stack: Stack) -> None:
    output = cli(stack, "create", "--name", "rotating")
    old, owner = created_key(output), field(output, "owner")
    wait_until(lambda: accepted_everywhere(stack, old), 2, "the key to work")
    task = text_task(deliveryMethod="async")
    submitted = httpx.post(
        f"{stack.api_url}/v1", json=[task], headers={"Authorization": f"Bearer {old}"}
    )
    assert submitted.status_code == 200, submitted.text

    rotated = cli(stack, "rotate", field(output, "keyId"), "--grace", "3s")
    new = created_key(rotated)
    assert field(rotated, "owner") == owner and field(rotated, "replaces") == field(output, "keyId")
    took = seconds_until(lambda: accepted_everywhere(stack, new))
    assert took < 1.0 and accepted_everywhere(stack, old)  # both during the grace window
    lookup = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]
    for url in stack.api_urls:
        seen = httpx.post(f"{url}/v1", json=lookup, headers={"Authorization": f"Bearer {new}"})
        assert seen.status_code == 200, seen.text
        assert seen.json()["data"][0]["taskUUID"] == task["taskUUID"]
    wait_until(lambda: refused_everywhere(stack, old), 10, "the grace to end")
    error = auth(stack.api_url, old).json()["errors"][0]
    assert "grace period ended" in error["message"], error
    assert accepted_everywhere(stack, new)


def test_limits_set_at_run_time_take_effect(stack: Stack) -> None:
    output = cli(stack, "create", "--name", "limited")
    key, owner = created_key(output), field(output, "owner")
    wait_until(lambda: accepted_everywhere(stack, key), 2, "the key to work")
    shown = cli(stack, "set-limits", owner, "--rps", "0.01", "--burst", "2")
    assert "rps" in shown and "0.01" in shown
    headers = {"Authorization": f"Bearer {key}"}
    tasks = [text_task(deliveryMethod="async") for _ in range(3)]
    answer = httpx.post(f"{stack.api_urls[1]}/v1", json=tasks, headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["data"]) == 2 and body["errors"][0]["code"] == "rateLimitExceeded"
    # back to the defaults (no request rate limit)
    cli(stack, "set-limits", field(output, "keyId"), "--reset", "all")
    more = [text_task(deliveryMethod="async") for _ in range(3)]
    answer = httpx.post(f"{stack.api_url}/v1", json=more, headers=headers)
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text


def test_the_admin_api(stack: Stack) -> None:
    off, on = stack.api_urls[0], stack.api_urls[2]
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # off unless the token is set: 404, whatever is sent
    assert httpx.get(f"{off}/admin/keys").status_code == 404
    assert httpx.get(f"{off}/admin/keys", headers=bearer).status_code == 404
    # on: 401 without the token or with a wrong one
    assert httpx.get(f"{on}/admin/keys").status_code == 401
    wrong = httpx.get(f"{on}/admin/keys", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["code"] == "invalidAdminToken"
    assert httpx.post(f"{on}/admin/keys", json={"name": "x"}).status_code == 401

    made = httpx.post(
        f"{on}/admin/keys", json={"name": "from http", "limits": {"rps": 5}}, headers=bearer
    )
    assert made.status_code == 201, made.text
    data = made.json()["data"]
    key, key_id, owner = data["apiKey"], data["keyId"], data["owner"]
    assert data["limits"] == {"rps": 5}
    took = seconds_until(lambda: accepted_everywhere(stack, key))
    assert took < 1.0, took
    listing = httpx.get(f"{on}/admin/keys", headers=bearer).json()["data"]
    assert any(row["keyId"] == key_id for row in listing) and key not in json.dumps(listing)

    limits = httpx.put(
        f"{on}/admin/keys/{key_id}/limits", json={"rps": None, "max_queued": 7}, headers=bearer
    )
    assert limits.json()["data"] == {"owner": owner, "limits": {"max_queued": 7}}, limits.text
    bad = httpx.put(f"{on}/admin/keys/{owner}/limits", json={"rps": -1}, headers=bearer)
    assert bad.status_code == 400

    turned = httpx.post(f"{on}/admin/keys/{key_id}/rotate", json={"graceS": 0}, headers=bearer)
    assert turned.status_code == 201, turned.text
    fresh = turned.json()["data"]
    assert fresh["owner"] == owner and fresh["replaces"]["status"] == "revoked"
    seconds_until(
        lambda: refused_everywhere(stack, key) and accepted_everywhere(stack, fresh["apiKey"])
    )
    gone = httpx.post(f"{on}/admin/keys/{fresh['keyId']}/revoke", headers=bearer)
    assert gone.status_code == 200 and gone.json()["data"]["status"] == "revoked"
    seconds_until(lambda: refused_everywhere(stack, fresh["apiKey"]))
    missing = httpx.post(f"{on}/admin/keys/0123456789ab/revoke", headers=bearer)
    assert missing.status_code == 404
