"""What the simulated model produces for a request, whatever API it came through: answer
tokens, reasoning, a tool call or JSON, and the usage to report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sim.generator import answer_tokens, apply_stop, count_prompt_tokens, reasoning_tokens
from sim.scenario import Scenario

IMAGE_TOKENS = 85  # what one image adds to the prompt (OpenAI's low-detail figure)
REASONING_BY_EFFORT = {"none": 0, "minimal": 2, "low": 4, "medium": 8, "high": 16}
_ASSIGNMENT = re.compile(r"(\w+)=([^\s,\]]+)")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class ImageInput:
    kind: str  # "data" or "url"
    mime: str | None
    size: int | None  # decoded bytes, for data URIs
    url: str | None = None


@dataclass
class SimRequest:
    """A request in the terms every simulated API shares."""

    texts: list[str]
    images: list[ImageInput] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)  # {"name", "parameters"}
    tool_choice: str | dict[str, Any] | None = None  # "auto" | "required" | "none" | {"name"}
    json_mode: str | None = None  # None | "object" | "schema"
    json_schema: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    seed: int | None = None
    n: int = 1
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    # The text of a final assistant message (a prefill), also the last of `texts`: the
    # answer continues it.
    prefill: str | None = None

    @property
    def asked(self) -> list[str]:
        """The texts before any prefill: what the answer is generated from."""
        return self.texts[:-1] if self.prefill is not None else self.texts

    @property
    def prompt(self) -> str:
        return "\n".join(self.asked)


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass
class Generation:
    index: int
    tokens: list[str]
    reasoning: list[str]
    tool_call: ToolCall | None
    finish_reason: str  # stop | length | tool_calls


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def value_for(schema: dict[str, Any], name: str, hints: dict[str, str], seed: int) -> Any:
    """A value that fits a (simple) JSON schema, taking `name=value` hints from the prompt."""
    kind = schema.get("type", "string")
    if name in hints:
        raw = hints[name]
        if kind in ("integer", "number"):
            try:
                return int(raw) if kind == "integer" else float(raw)
            except ValueError:
                pass
        elif kind == "boolean":
            return raw.lower() == "true"
        else:
            return raw
    if schema.get("enum"):
        return schema["enum"][seed % len(schema["enum"])]
    if kind == "object":
        return object_for(schema, hints, seed)
    if kind == "array":
        return [value_for(schema.get("items", {}), name, hints, seed)]
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return (seed % 1000) / 10
    if kind == "boolean":
        return seed % 2 == 0
    return f"{name or 'value'}-{seed % 1000}"


def object_for(schema: dict[str, Any], hints: dict[str, str], seed: int) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    if not properties:
        return {"answer": f"sim-{seed % 1000}"}
    return {
        key: value_for(sub, key, hints, seed + i) for i, (key, sub) in enumerate(properties.items())
    }


def _chop(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _wanted_tool(request: SimRequest) -> dict[str, Any] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    if isinstance(choice, dict) and choice.get("name"):
        return next((t for t in request.tools if t["name"] == choice["name"]), None)
    # the prompt asks for it ("call get_weather"), or a tool call is required
    last = request.asked[-1].lower() if request.asked else ""
    for tool in request.tools:
        if f"call {tool['name'].lower()}" in last:
            return tool
    if choice == "required":
        return request.tools[0]
    return None


def _continued(
    request: SimRequest, seed: int | None, prompt: str, index: int, count: int
) -> list[str]:
    """The answer's tokens; after a prefill of k words, `count` tokens that follow the first k
    words of the answer to the prompt alone (so prefill + continuation extends that answer
    when the prefill is its beginning)."""
    if request.prefill is None:
        return answer_tokens(seed, prompt, index, count)
    done = len(request.prefill.split())
    return answer_tokens(seed, prompt, index, count + done)[done:]


def plan(request: SimRequest, scenario: Scenario) -> list[Generation]:
    """The generations (choices) a request produces, honouring seed, n, stop and limits."""
    if not 1 <= request.n <= 8:
        raise BadRequest("n must be between 1 and 8", "n")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise BadRequest("max tokens must be a positive integer", "max_tokens")
    prompt = request.prompt
    hints = dict(_ASSIGNMENT.findall(request.asked[-1] if request.asked else ""))
    effort = request.reasoning_effort
    reasoning_count = scenario.reasoning or (REASONING_BY_EFFORT.get(effort, 4) if effort else 0)
    seed = request.seed if request.seed is not None else None
    generations = []
    for index in range(request.n):
        reasoning = reasoning_tokens(seed, prompt, index, reasoning_count)
        tool = _wanted_tool(request)
        if tool is not None:
            arguments = object_for(tool.get("parameters") or {}, hints, (seed or 0) + index)
            call = ToolCall(
                f"call_{(seed or 0) + index:08d}",
                tool["name"],
                json.dumps(arguments, separators=(",", ":")),
            )
            generations.append(Generation(index, [], reasoning, call, "tool_calls"))
            continue
        if request.json_mode is not None:
            schema = request.json_schema if request.json_mode == "schema" else None
            document = (
                object_for(schema, hints, (seed or 0) + index)
                if schema
                else {"answer": "".join(answer_tokens(seed, prompt, index, 6))}
            )
            tokens = _chop(json.dumps(document, separators=(",", ":")))
        else:
            tokens = _continued(request, seed, prompt, index, scenario.tokens)
        tokens, _ = apply_stop(tokens, request.stop)
        finish = "stop"
        if request.max_tokens is not None and len(tokens) > request.max_tokens:
            tokens, finish = tokens[: request.max_tokens], "length"
        generations.append(Generation(index, tokens, reasoning, None, finish))
    return generations


def usage_of(request: SimRequest, generations: list[Generation], scenario: Scenario) -> Usage:
    prompt_tokens = count_prompt_tokens(request.texts) + IMAGE_TOKENS * len(request.images)
    reasoning = sum(len(g.reasoning) for g in generations)
    completion = sum(len(g.tokens) + (8 if g.tool_call else 0) for g in generations) + reasoning
    cached = min(scenario.cached, prompt_tokens)
    return Usage(prompt_tokens, completion, cached, reasoning)
