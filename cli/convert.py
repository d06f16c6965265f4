"""Input lines of `taskwire run`: a textInference body, or an OpenAI batch line whose chat
completion request is converted client-side; each gets a taskUUID derived from it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

# uuid5 namespace of the CLI; a run's own namespace (--namespace, by default the input
# file's name) is derived from it.
CLI_NAMESPACE = uuid.UUID("6f1c2d3e-8a4b-5c6d-9e0f-a1b2c3d4e5f6")

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")

# Chat-completions fields and where they go; anything else is refused.
_SIMPLE_SETTINGS = {
    "temperature": "temperature",
    "top_p": "topP",
    "frequency_penalty": "frequencyPenalty",
    "presence_penalty": "presencePenalty",
}
_BODY_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "tools",
        "tool_choice",
        "response_format",
        "frequency_penalty",
        "presence_penalty",
        "reasoning_effort",
        "stream",
    }
)
_REASONING = {"none": "off", "minimal": "low", "low": "low", "medium": "medium", "high": "high"}


class LineError(Exception):
    """A line that cannot become a task: `code` and a message naming what is wrong."""

    def __init__(self, message: str, code: str = "invalidLine"):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Line:
    """One input line as a task: its key (custom_id, or None) and line number (1-based)."""

    number: int
    custom_id: str | None
    task_uuid: str
    task: dict[str, Any]

    @property
    def key(self) -> str:
        return self.custom_id if self.custom_id is not None else f"line:{self.number}"


def run_namespace(name: str) -> uuid.UUID:
    return uuid.uuid5(CLI_NAMESPACE, name)


def derived_uuid(namespace: uuid.UUID, material: str) -> str:
    """A uuid5 of `material` in `namespace`, with the version bits of a v4 (the protocol
    takes only v4 taskUUIDs): the same line always names the same task."""
    raw = bytearray(uuid.uuid5(namespace, material).bytes)
    raw[6] = (raw[6] & 0x0F) | 0x40
    return str(uuid.UUID(bytes=bytes(raw)))


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_openai_batch(obj: dict[str, Any]) -> bool:
    return "body" in obj or "custom_id" in obj or "url" in obj


def chat_to_task(body: Any, model_map: dict[str, str] | None = None) -> dict[str, Any]:
    """A chat completions request body as a textInference task (no taskUUID, no delivery
    method). Raises LineError for what has no textInference counterpart."""
    if not isinstance(body, dict):
        raise LineError("`body` must be a chat completions request object.")
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:
        raise LineError(
            f"body.{unknown[0]} cannot be mapped to a textInference task (mapped: "
            f"{', '.join(sorted(_BODY_FIELDS))}).",
            code="unsupportedField",
        )
    if body.get("stream") not in (None, False):
        raise LineError("body.stream must be false or absent in a batch.", "unsupportedField")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LineError("body.model is required (an AIR id, e.g. openai:gpt@5.4-mini).")
    task: dict[str, Any] = {
        "taskType": "textInference",
        "model": (model_map or {}).get(model, model),
        "includeUsage": True,
    }
    settings: dict[str, Any] = {}
    system, messages = _messages(body.get("messages"))
    task["messages"] = messages
    if system:
        settings["systemPrompt"] = system
    max_tokens = body.get("max_tokens")
    max_completion = body.get("max_completion_tokens")
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise LineError("body.max_tokens and body.max_completion_tokens differ; give one.")
    if (limit := max_completion if max_completion is not None else max_tokens) is not None:
        settings["maxTokens"] = limit
    for name, setting in _SIMPLE_SETTINGS.items():
        if body.get(name) is not None:
            settings[setting] = body[name]
    stop = body.get("stop")
    if stop is not None:
        settings["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("seed") is not None:
        task["seed"] = body["seed"]
    if body.get("n") is not None:
        task["numberResults"] = body["n"]
    if body.get("tools") is not None:
        settings["tools"] = body["tools"]  # the protocol takes OpenAI's tool shape as is
    if body.get("tool_choice") is not None:
        settings["toolChoice"] = _tool_choice(body["tool_choice"])
    if body.get("response_format") is not None:
        task.update(_response_format(body["response_format"]))
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in _REASONING:
            raise LineError(f"body.reasoning_effort must be one of {', '.join(_REASONING)}.")
        settings["thinkingLevel"] = _REASONING[effort]
    if settings:
        task["settings"] = settings
    return task


def _text_content(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise LineError(
                    f"{where}.content.{i} is a {kind!r} part: only text parts can be mapped "
                    "(images go in a textInference line's inputs.images).",
                    code="unsupportedField",
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise LineError(f"{where}.content must be a string or a list of text parts.")


def _messages(raw: Any) -> tuple[str | None, list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise LineError("body.messages must be a non-empty list.")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"body.messages.{i}"
        if not isinstance(message, dict):
            raise LineError(f"{where} must be an object.")
        extra = sorted(set(message) - {"role", "content", "tool_calls", "tool_call_id"})
        if extra:
            raise LineError(f"{where}.{extra[0]} cannot be mapped.", code="unsupportedField")
        role = message.get("role")
        content = _text_content(message.get("content"), where)
        if role in ("system", "developer"):
            if content:
                system.append(content)
        elif role == "user":
            out.append({"role": "user", "content": content})
        elif role == "assistant":
            mapped: dict[str, Any] = {"role": "assistant"}
            if content:
                mapped["content"] = content
            if message.get("tool_calls"):
                mapped["tools"] = [
                    _tool_call(c, f"{where}.tool_calls.{j}")
                    for j, c in enumerate(message["tool_calls"])
                ]
            out.append(mapped)
        elif role == "tool":
            out.append({"role": "tool", "id": message.get("tool_call_id"), "content": content})
        else:
            raise LineError(f"{where}.role {role!r} cannot be mapped.")
    if not out:
        raise LineError("body.messages has no user message.")
    return ("\n\n".join(system) or None), out


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise LineError(f"{where} must be a function tool call.")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise LineError(f"{where}.function.arguments is not JSON.") from None
    return {"id": call.get("id"), "name": function.get("name"), "input": arguments}


def _tool_choice(choice: Any) -> dict[str, Any]:
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    raise LineError("body.tool_choice must be auto, none, required or a named function.")


def _response_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"outputFormat": "JSON"}
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema")
        if not isinstance(schema, dict):
            raise LineError("body.response_format.json_schema.schema must be an object.")
        return {"outputFormat": "JSON", "jsonSchema": schema}
    raise LineError("body.response_format must be text, json_object or json_schema.")


class LineReader:
    """Turns input lines into tasks, deriving each taskUUID in the run's namespace: from the
    line's custom_id, else from its canonical JSON (and how many identical lines came
    before, so duplicates stay separate tasks). A textInference line's own taskUUID is used
    as it is."""

    def __init__(self, namespace: str, model_map: dict[str, str] | None = None):
        self.namespace = run_namespace(namespace)
        self.model_map = model_map or {}
        self._seen_ids: set[str] = set()
        self._seen_bodies: dict[str, int] = {}

    def read(self, number: int, text: str) -> Line:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise LineError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise LineError("a line must be a JSON object.")
        custom_id = obj.get("custom_id")
        if custom_id is not None:
            if not isinstance(custom_id, str) or not custom_id:
                raise LineError("custom_id must be a non-empty string.")
            if custom_id in self._seen_ids:
                raise LineError(
                    f"custom_id {custom_id!r} was used by an earlier line.",
                    code="duplicateCustomId",
                )
            self._seen_ids.add(custom_id)
        task = self._task(obj)
        own = task.get("taskUUID")
        if isinstance(own, str):
            task_uuid = own
        elif custom_id is not None:
            task_uuid = derived_uuid(self.namespace, f"custom_id:{custom_id}")
        else:
            body = canonical_json(obj)
            seen = self._seen_bodies.get(body, 0)
            self._seen_bodies[body] = seen + 1
            task_uuid = derived_uuid(self.namespace, f"line:{seen}:{body}")
        task["taskUUID"] = task_uuid
        return Line(number, custom_id, task_uuid, task)

    def _task(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("taskType") == "textInference":
            task = dict(obj)
            task.pop("custom_id", None)
            if isinstance(task.get("model"), str):
                task["model"] = self.model_map.get(task["model"], task["model"])
            return task
        if not is_openai_batch(obj):
            raise LineError(
                'a line is a textInference task ({"taskType":"textInference",...}) or an '
                'OpenAI batch line ({"custom_id","method","url","body"}).'
            )
        extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
        if extra:
            raise LineError(f"{extra[0]} is not a batch line field.", code="unsupportedField")
        if obj.get("method", "POST") != "POST":
            raise LineError("method must be POST.", code="unsupportedField")
        if obj.get("url", CHAT_PATHS[0]) not in CHAT_PATHS:
            raise LineError(
                f"url {obj.get('url')!r} cannot be mapped: only /v1/chat/completions becomes "
                "a textInference task.",
                code="unsupportedField",
            )
        return chat_to_task(obj.get("body"), self.model_map)
