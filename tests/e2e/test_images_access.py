"""Uploaded images are their owner's: served for the owner's key or a signed, expiring
imageURL; links are built on the API's public base URL, never on a client's Host header;
routes that take image URLs get signed ones when the public base URL is configured."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from core.tokens import ImageTokens
from devenv.procs import free_port
from devenv.stack import Stack, StackConfig
from service.auth import key_digest, owner_id
from tests.conftest import KEY_A, KEY_B, MODEL, TEST_SETTINGS, Api, StackFactory, text_task

GIF = b"GIF89a" + b"\0" * 32
HOSTILE = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}

PASSING_CATALOG = f"""
[models."{MODEL}"]
name = "GPT-5.4 Mini"
context_window = 400_000
max_output_tokens = 128_000
price = {{ input = 0.75, output = 4.50 }}

[[models."{MODEL}".routes]]
name = "passing"
adapter = "openai-chat"
base_url = "${{TASKWIRE_SIM_URL}}"
model = "gpt-5.4-mini"
api_key_env = "TASKWIRE_SIM_API_KEY"
timeout_s = 3
image_urls = "pass"
"""


def upload(api: Api, **kwargs: Any) -> dict[str, Any]:
    task = {
        "taskType": "imageUpload",
        "taskUUID": str(uuid.uuid4()),
        "image": "data:image/gif;base64," + base64.b64encode(GIF).decode(),
    }
    response = api.post([task], **kwargs)
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    return dict(item)


def test_images_are_served_to_their_owner_only(api: Api, stack: Stack) -> None:
    item = upload(api)
    url = item["imageURL"]
    path = urlsplit(url).path
    assert url.startswith(f"{stack.api_url}/v1/images/{item['imageUUID']}.gif?token=")
    anonymous = httpx.Client(base_url=stack.api_url, timeout=30)
    # the signed URL, no key: a browser or an upstream can fetch it
    served = anonymous.get(url)
    assert served.status_code == 200 and served.content == GIF
    assert served.headers["content-type"] == "image/gif"
    # the bare path needs the owner's key; another key's image is not found
    assert anonymous.get(path).status_code == 401
    owned = anonymous.get(path, headers={"Authorization": f"Bearer {KEY_A}"})
    assert owned.status_code == 200 and owned.content == GIF
    other = anonymous.get(path, headers={"Authorization": f"Bearer {KEY_B}"})
    assert other.status_code == 404
    assert other.json()["errors"][0]["code"] == "imageNotFound"
    # a token is bound to its image, and cannot be altered or outlive its expiry
    token = url.partition("?token=")[2]
    second = upload(api)
    response = anonymous.get(f"{urlsplit(second['imageURL']).path}?token={token}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "invalidImageToken"
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert anonymous.get(f"{path}?token={tampered}").status_code == 401
    client = redis.Redis.from_url(stack.redis_url)
    secret = client.get("tw:secret:stream-token")
    client.close()
    assert secret is not None
    owner = owner_id(key_digest(KEY_A))
    expired = ImageTokens(secret, 60).issue(owner, item["imageUUID"], now=time.time() - 3600)
    response = anonymous.get(f"{path}?token={expired}")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "expiredImageToken"
    # a genuine token of KEY_B's for KEY_A's image finds nothing
    theirs = ImageTokens(secret, 60).issue(owner_id(key_digest(KEY_B)), item["imageUUID"])
    assert anonymous.get(f"{path}?token={theirs}").status_code == 404
    anonymous.close()


def test_links_ignore_a_clients_host_and_forwarded_headers(api: Api, stack: Stack) -> None:
    item = upload(api, headers=HOSTILE)
    assert item["imageURL"].startswith(f"{stack.api_url}/v1/images/")
    task = text_task("[[sim:tokens=2]]", deliveryMethod="async")
    [ack] = api.post([task], headers=HOSTILE).json()["data"]
    assert ack["links"]["stream"].startswith(f"{stack.api_url}/v1/tasks/{task['taskUUID']}/")
    [state] = api.post(
        [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], headers=HOSTILE
    ).json()["data"]
    assert state["links"]["stream"].startswith(f"{stack.api_url}/v1/tasks/")


def test_forwarded_headers_of_a_trusted_proxy(make_stack: StackFactory) -> None:
    stack = make_stack(env={"TASKWIRE_TRUSTED_PROXIES": "127.0.0.0/8"})
    api = Api(stack)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"}
    item = upload(api, headers=forwarded)
    assert item["imageURL"].startswith("https://api.example.com/v1/images/")
    # the proxy's word is needed: a Host header alone still counts for nothing
    item = upload(api, headers={"Host": "evil.example"})
    assert item["imageURL"].startswith(f"{stack.api_url}/v1/images/")
    api.close()


@pytest.fixture
def public_stack(tmp_path: Path, redis_binary: str) -> Iterator[Stack]:
    """A stack whose public base URL is its own API address (with a trailing slash), and
    whose only route takes image URLs."""
    port = free_port()
    catalog = tmp_path / "models.toml"
    catalog.write_text(PASSING_CATALOG)
    stack = Stack(
        StackConfig(
            root=tmp_path / "stack",
            api_keys=[KEY_A, KEY_B],
            api_port=port,
            catalog_path=catalog,
            env={**TEST_SETTINGS, "TASKWIRE_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}/"},
        )
    ).start(workers=1)
    yield stack
    stack.stop()


def test_routes_taking_urls_get_signed_image_urls(public_stack: Stack) -> None:
    api = Api(public_stack)
    item = upload(api, headers=HOSTILE)
    assert item["imageURL"].startswith(f"{public_stack.api_url}/v1/images/")
    marker = uuid.uuid4().hex
    [result] = api.post([text_task(marker, inputs={"images": [item["imageUUID"]]})]).json()["data"]
    assert result["status"] == "success", result
    calls = httpx.get(f"{public_stack.sim_url}/_sim/calls", params={"contains": marker}).json()
    [sent] = calls["last"]["images"]
    assert sent["kind"] == "url"
    assert sent["url"].startswith(f"{public_stack.api_url}/v1/images/{item['imageUUID']}.gif?")
    # the upstream can fetch it without a key
    fetched = httpx.get(sent["url"], timeout=30)
    assert fetched.status_code == 200 and fetched.content == GIF
    api.close()
