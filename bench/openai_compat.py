"""The OpenAI-compatible door: a chat completion through taskwire (`POST
/v1/chat/completions`) vs the same request straight to the simulator, in interleaved pairs:
the whole answer (non-streamed) and the time to the first content chunk (streamed)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from bench.common import API_KEY, MODEL, SIM_KEY, median, percentile, table
from devenv.stack import Stack


def _body(model: str, prompt: str, seed: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "seed": seed,
        "max_completion_tokens": 4096,
        "temperature": 1.0,
        "top_p": 0.95,
    }
    if stream:
        body["stream"] = True
    return body


async def _call(
    client: httpx.AsyncClient, url: str, key: str, body: dict[str, Any]
) -> tuple[float, float]:
    """(seconds to the answer's end, seconds to its first content) of one request."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    elapsed = time.perf_counter() - started
    return elapsed, first if first is not None else elapsed


async def chat_latency(stack: Stack, samples: int, warmup: int = 20) -> dict[str, Any]:
    """Interleaved pairs, alternating which goes first: non-streamed (whole answer) and
    streamed (time to first content) chat completions, direct and through taskwire."""
    prompt = f"bench openai {uuid.uuid4().hex[:8]} [[sim:tokens=20]]"
    direct_url = f"{stack.sim_url}/v1/chat/completions"
    through_url = f"{stack.api_url}/v1/chat/completions"
    runs: dict[str, list[float]] = {
        "direct": [],
        "through": [],
        "direct_ttft": [],
        "through_ttft": [],
    }
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(warmup + samples):
            for stream in (False, True):
                direct_body = _body("gpt-5.4-mini", prompt, i, stream)
                through_body = _body(MODEL, prompt, i, stream)
                if i % 2:
                    d = await _call(client, direct_url, SIM_KEY, direct_body)
                    t = await _call(client, through_url, API_KEY, through_body)
                else:
                    t = await _call(client, through_url, API_KEY, through_body)
                    d = await _call(client, direct_url, SIM_KEY, direct_body)
                if i < warmup:
                    continue
                if stream:
                    runs["direct_ttft"].append(d[1] * 1000)
                    runs["through_ttft"].append(t[1] * 1000)
                else:
                    runs["direct"].append(d[0] * 1000)
                    runs["through"].append(t[0] * 1000)
    return runs


def chat_table(run: dict[str, list[float]]) -> str:
    rows = []
    for label, d, t in (
        ("chat completion, whole answer", run["direct"], run["through"]),
        ("chat completion stream, first content", run["direct_ttft"], run["through_ttft"]),
    ):
        rows.append(
            [
                label,
                len(d),
                median(d),
                percentile(d, 99),
                median(t),
                percentile(t, 99),
                median(t) - median(d),
                median(t) / median(d),
            ]
        )
    return table(
        [
            "request",
            "pairs",
            "direct median ms",
            "direct p99 ms",
            "taskwire median ms",
            "taskwire p99 ms",
            "added median ms",
            "ratio",
        ],
        rows,
    )
