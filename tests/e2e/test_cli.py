"""The `taskwire` CLI against the real stack: a 1,000-line run, a killed run resumed without a
second upstream call, `get`, `ls`, `ask --stream`; and `GET /v1/tasks` (pages, status
filter, scoping to the key)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from devenv.procs import wait_until
from devenv.stack import Stack
from tests.conftest import KEY_A, KEY_B, MODEL, Api, StackFactory, without_stream_url


def cli(stack: Stack, *args: str, key: str = KEY_A) -> list[str]:
    return [sys.executable, "-m", "cli", "--base-url", stack.api_url, "--api-key", key, *args]


def run_cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(stack, *args), capture_output=True, text=True, timeout=timeout, check=False
    )


def openai_line(custom_id: str, prompt: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def read_output(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(raw) for raw in path.read_text().splitlines() if raw.endswith("}")]


def sim_calls(stack: Stack, marker: str) -> int:
    response = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker})
    return int(response.json()["count"])


def test_a_thousand_lines_through_the_stack(stack: Stack, tmp_path: Path) -> None:
    marker = f"thousand-{uuid.uuid4().hex[:8]}"
    source = tmp_path / "tasks.jsonl"
    lines = []
    for i in range(1000):
        if i % 2:
            lines.append(openai_line(f"req-{i}", f"{marker} {i}"))
        else:  # a plain textInference line: keyed by its line number
            task = {
                "taskType": "textInference",
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{marker} {i}"}],
            }
            lines.append(json.dumps(task))
    lines.append('{"custom_id": "bad", "url": "/v1/embeddings", "body": {}}')
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    started = time.monotonic()
    done = run_cli(stack, "run", str(source), "-o", str(out))
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr  # the one line that cannot be mapped
    entries = read_output(out)
    assert len(entries) == 1001
    keys = {e.get("custom_id") or f"line:{e['line']}" for e in entries}
    assert len(keys) == 1001
    ok = [e for e in entries if e["status"] == "success"]
    assert len(ok) == 1000 and all(e["results"][0]["text"] for e in ok)
    [bad] = [e for e in entries if e["status"] == "error"]
    assert bad["line"] == 1001 and bad["error"]["code"] == "unsupportedField"
    assert "done 1000, failed 1 (unsupportedField 1)" in done.stderr
    assert sim_calls(stack, marker) == 1000
    print(f"1,000 lines in {elapsed:.1f} s ({1000 / elapsed:.0f} tasks/s), CLI start included")
    # a second run finds everything written and sends nothing
    again = run_cli(stack, "run", str(source), "-o", str(out))
    assert "already in output 1001" in again.stderr, again.stderr
    assert len(read_output(out)) == 1001 and sim_calls(stack, marker) == 1000

    # taskwire get prints what getResponse says
    task_uuid = ok[0]["taskUUID"]
    got = run_cli(stack, "get", task_uuid)
    assert got.returncode == 0, got.stderr
    api = Api(stack)
    try:
        expected = api.get_response(task_uuid).json()["data"]
    finally:
        api.close()
    assert without_stream_url(json.loads(got.stdout)) == without_stream_url(expected)
    missing = run_cli(stack, "get", str(uuid.uuid4()))
    assert missing.returncode == 1 and "taskFailedOrNotFound" in missing.stderr


def test_a_killed_run_resumes_without_calling_upstream_twice(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = make_stack(upstream_timeout_s=15)
    marker = f"resume-{uuid.uuid4().hex[:8]}"
    failing = f"failing-{uuid.uuid4().hex[:8]}"
    n = 240
    lines = [
        # answers spread over ~5 s, so the run is killed with tasks in every state
        openai_line(f"r{i}", f"{marker} {i} [[sim:ttft={20 * i}]]")
        for i in range(n)
    ]
    lines += [openai_line(f"f{i}", f"{failing} {i} [[sim:status=400]]") for i in range(3)]
    source = tmp_path / "batch.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--chunk", "20", "--max-in-flight", "60"]
    proc = subprocess.Popen(cli(stack, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(read_output(out)) >= 40, 60, "40 results written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = len(read_output(out))
    assert 40 <= first < n + 3, "the run was killed mid-way"
    resumed = run_cli(stack, *args)
    assert resumed.returncode == 1, resumed.stderr  # the three failing lines
    assert f"{first} lines already there" in resumed.stderr
    entries = read_output(out)
    assert sorted(e["custom_id"] for e in entries) == sorted(
        [f"r{i}" for i in range(n)] + [f"f{i}" for i in range(3)]
    )
    assert sum(e["status"] == "success" for e in entries) == n
    # each line reached the upstream once, killed run and re-run together
    assert sim_calls(stack, marker) == n
    assert sim_calls(stack, failing) == 3

    # GET /v1/tasks: this key's tasks, newest first, in pages, by status, and no other key's
    http = httpx.Client(base_url=stack.api_url, timeout=30)
    try:

        def listing(key: str = KEY_A, **params: Any) -> list[dict[str, Any]]:
            entries: list[dict[str, Any]] = []
            cursor = None
            while True:
                query = {**params, **({"cursor": cursor} if cursor else {})}
                response = http.get(
                    "/v1/tasks", params=query, headers={"Authorization": f"Bearer {key}"}
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert len(body["data"]) <= params.get("limit", 20)
                entries.extend(body["data"])
                cursor = body["nextCursor"]
                if cursor is None:
                    return entries

        listed = listing(limit=17)
        by_uuid = {e["taskUUID"] for e in entries}
        assert {e["taskUUID"] for e in listed} == by_uuid and len(listed) == n + 3
        created = [e["createdAt"] for e in listed]
        assert created == sorted(created, reverse=True)
        assert all("text" not in item for e in listed for item in e["results"])
        errors = listing(limit=2, status="error")
        failed = {e["taskUUID"] for e in entries if e["status"] == "error"}
        assert {e["taskUUID"] for e in errors} == failed and len(failed) == 3
        assert errors[0]["results"][0]["error"]["code"]
        assert len(listing(limit=100, status="success")) == n
        assert listing(status="processing") == [] and listing(status="partial") == []
        with_text = http.get(
            "/v1/tasks",
            params={"limit": 1, "include": "text", "status": "success"},
            headers={"Authorization": f"Bearer {KEY_A}"},
        ).json()["data"]
        assert with_text[0]["results"][0]["text"]
        assert listing(key=KEY_B) == []  # scoped to the key
        for params, code in [
            ({"limit": 101}, "invalidLimit"),
            ({"status": "done"}, "invalidStatus"),
            ({"cursor": "nonsense"}, "invalidCursor"),
        ]:
            response = http.get(
                "/v1/tasks", params=params, headers={"Authorization": f"Bearer {KEY_A}"}
            )
            assert response.status_code == 400 and response.json()["errors"][0]["code"] == code
        assert http.get("/v1/tasks").status_code == 401
    finally:
        http.close()
    # taskwire ls shows the same
    shown = run_cli(stack, "ls", "--status", "error", "--json", "--all")
    assert shown.returncode == 0, shown.stderr
    assert {json.loads(raw)["taskUUID"] for raw in shown.stdout.splitlines()} == failed
    table = run_cli(stack, "ls", "-n", "5")
    assert len(table.stdout.splitlines()) == 5


def test_ask_stream_prints_text_as_it_arrives(stack: Stack) -> None:
    marker = f"stream-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        cli(stack, "ask", "--stream", f"{marker} [[sim:tokens=40,tps=20]]"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    first = os.read(proc.stdout.fileno(), 65536)
    assert first and proc.poll() is None  # text shown while the answer is still coming
    rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    text = (first + rest).decode()
    assert text.endswith("\n") and len(text.split()) >= 10
    assert sim_calls(stack, marker) == 1
