"""OpenAI Chat Completions as the simulator speaks it: request parsing and response shapes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sim.generator import answer_tokens, apply_stop, count_prompt_tokens, reasoning_tokens
from sim.scenario import Scenario
from sim.timing import FLUSH, Pacer, SimulatedDrop, _Flush, hang_forever


@dataclass(slots=True)
class Choice:
    index: int
    tokens: list[str]
    reasoning: list[str]
    finish_reason: str


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def message_texts(messages: list[Any]) -> list[str]:
    texts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part.get("text", "")
                for part in content
                if isinstance(part, dict) and part.get("type") in ("text", "input_text")
            )
    return texts


def plan_choices(body: dict[str, Any], scenario: Scenario, prompt: str) -> list[Choice]:
    """The choices a Chat Completions request produces, honouring n, seed, stop and limits."""
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 8:
        raise BadRequest("n must be an integer between 1 and 8", "n")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise BadRequest("seed must be an integer", "seed")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadRequest(
            "max_completion_tokens must be a positive integer", "max_completion_tokens"
        )
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    choices = []
    for index in range(n):
        tokens = answer_tokens(seed, prompt, index, scenario.tokens)
        tokens, stopped = apply_stop(tokens, stop)
        finish = "stop"
        if limit is not None and len(tokens) > limit:
            tokens, finish = tokens[:limit], "length"
        reasoning = reasoning_tokens(seed, prompt, index, scenario.reasoning)
        choices.append(Choice(index, tokens, reasoning, finish if not stopped else "stop"))
    return choices


def usage_of(prompt_tokens: int, choices: list[Choice]) -> dict[str, Any]:
    completion = sum(len(c.tokens) + len(c.reasoning) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(len(c.reasoning) for c in choices),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_body(model: str, prompt_texts: list[str], choices: list[Choice]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_taskwire_sim",
        "choices": [
            {
                "index": c.index,
                "message": {
                    "role": "assistant",
                    "content": "".join(c.tokens),
                    "refusal": None,
                    **({"reasoning": "".join(c.reasoning)} if c.reasoning else {}),
                },
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage_of(count_prompt_tokens(prompt_texts), choices),
    }


async def completion_chunks(
    model: str,
    prompt_texts: list[str],
    choices: list[Choice],
    scenario: Scenario,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any] | str | _Flush]:
    """The streamed form: `chat.completion.chunk` objects, then "[DONE]"."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_taskwire_sim",
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            **base,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            body["usage"] = None
        return body

    pacer = Pacer(scenario)
    paced = scenario.tps > 0
    await pacer.first()
    for c in choices:
        yield chunk(c.index, {"role": "assistant", "content": "", "refusal": None})
    longest = max((len(c.reasoning) + len(c.tokens) for c in choices), default=0)
    for emitted, step in enumerate(range(longest), start=1):
        for c in choices:
            if step < len(c.reasoning):
                yield chunk(c.index, {"reasoning": c.reasoning[step]})
            elif step - len(c.reasoning) < len(c.tokens):
                yield chunk(c.index, {"content": c.tokens[step - len(c.reasoning)]})
        if scenario.drop_after is not None and emitted >= scenario.drop_after:
            yield FLUSH
            raise SimulatedDrop
        if scenario.hang_after is not None and emitted >= scenario.hang_after:
            yield FLUSH
            await hang_forever()
        if paced:
            yield FLUSH
        await pacer.next()
    for c in choices:
        yield chunk(c.index, {}, c.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": usage_of(count_prompt_tokens(prompt_texts), choices)}
    yield "[DONE]"
