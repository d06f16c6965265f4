"""`POST /v1/chat/completions`: OpenAI's Chat Completions request mapped onto a
textInference task, submitted through Intake like a native task, and answered from its
stored events (service/openai_chat_render.py).

The task's taskUUID is in the `x-taskwire-task-uuid` header and the completion's id
(`chatcmpl-<taskUUID>`), so `getResponse` and the task's event stream find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from core.errors import TaskwireError
from core.events import TaskEvents
from service.delivery import collect_results, sync_waits
from service.openai_chat_render import ChatChunks, completion_body
from service.openai_common import (
    TASK_UUID_HEADER,
    MeteredRoute,
    OpenAIError,
    ParamMap,
    authenticate,
    bad_value,
    build_task,
    frames_body,
    from_taskwire,
    intake_for,
    json_answer,
    read_json_object,
    storage_unavailable,
    stream_answer,
    submit_one,
    task_uuid_for,
)
from service.state import State

router = APIRouter(route_class=MeteredRoute)  # counted in taskwire_api_openai_requests

# Accepted and not acted on (docs/protocol.md lists them).
IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "prompt_cache_key",
        "safety_identifier",
        "logit_bias",
        "verbosity",
        "logprobs",
    }
)
HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "frequency_penalty",
        "presence_penalty",
        "tools",
        "tool_choice",
        "response_format",
        "reasoning_effort",
    }
)
EFFORTS = {
    "none": "off",
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}


@dataclass
class ChatRequest:
    task: dict[str, Any]
    params: ParamMap
    stream: bool
    include_usage: bool


def _text(content: Any, where: str, images: list[tuple[str, str]] | None) -> Any:
    """A message's content as text (parts joined by newlines); image parts go to `images`
    (with the parameter path of each) when the role allows them."""
    if not isinstance(content, list):
        return content  # a string, or something the task model refuses by name
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and images is not None:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_value(
                    "An image_url part needs `image_url.url`.", f"{where}.{j}.image_url"
                )
            images.append((url, f"{where}.{j}.image_url.url"))
        else:
            raise bad_value(
                f"Content part type {kind!r} is not supported here; use `text`"
                + (" or `image_url`." if images is not None else "."),
                f"{where}.{j}.type",
            )
    if not texts:
        raise bad_value("A message needs at least one text part.", where)
    return "\n".join(texts)


def _message(i: int, m: Any, images: list[tuple[str, str]], params: ParamMap) -> dict[str, Any]:
    where = f"messages.{i}"
    if not isinstance(m, dict):
        raise bad_value("Each message must be an object.", where)
    role = m.get("role")
    content = m.get("content")
    if role in ("system", "developer"):
        return {"role": "system", "content": _text(content, f"{where}.content", None)}
    if role == "user":
        return {"role": "user", "content": _text(content, f"{where}.content", images)}
    if role == "tool":
        params.add(f"{where}.id", f"{where}.tool_call_id")
        text = _text(content, f"{where}.content", None)
        return {"role": "tool", "id": m.get("tool_call_id"), "content": text}
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant"}
        text = _text(content, f"{where}.content", None) if content is not None else None
        if text:
            out["content"] = text
        calls = m.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise bad_value("tool_calls must be an array.", f"{where}.tool_calls")
            out["tools"] = [_call(f"{where}.tool_calls.{k}", c) for k, c in enumerate(calls)]
            params.add(f"{where}.tools", f"{where}.tool_calls")
            for k in range(len(calls)):
                params.add(f"{where}.tools.{k}.name", f"{where}.tool_calls.{k}.function.name")
                params.add(f"{where}.tools.{k}.input", f"{where}.tool_calls.{k}.function.arguments")
        return out
    raise bad_value(
        f"Unsupported role {role!r}; use system, developer, user, assistant or tool.",
        f"{where}.role",
    )


def _call(where: str, call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise bad_value("A tool call needs `function` with `name` and `arguments`.", where)
    arguments = function.get("arguments") or "{}"
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise bad_value(
            "A tool call's arguments must be a JSON object (as text).",
            f"{where}.function.arguments",
        )
    return {"id": call.get("id"), "name": function.get("name"), "input": parsed}


def _tools(tools: Any) -> Any:
    """OpenAI function tools as the task takes them (`strict` dropped: it is a hint)."""
    if not isinstance(tools, list):
        return tools
    out = []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_value("Only function tools are supported.", f"tools.{k}.type")
        function = tool.get("function")
        if isinstance(function, dict):
            function = {
                key: value
                for key, value in function.items()
                if key != "strict" and value is not None
            }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, params: ParamMap) -> dict[str, Any]:
    params.add("toolChoice", "tool_choice")
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict):
            params.add("toolChoice.name", "tool_choice.function.name")
            return {"type": "tool", "name": function.get("name")}
    raise bad_value(
        'tool_choice must be "auto", "none", "required" or '
        '{"type": "function", "function": {"name": …}}.',
        "tool_choice",
    )


def _response_format(fmt: Any, task: dict[str, Any], params: ParamMap) -> None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    params.add("outputFormat", "response_format")
    if kind == "text":
        return
    if kind == "json_object":
        task["outputFormat"] = "JSON"
        return
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_value(
                "response_format json_schema needs `json_schema.schema` (an object).",
                "response_format.json_schema.schema",
            )
        task["outputFormat"] = "JSON"
        task["jsonSchema"] = schema
        params.add("jsonSchema", "response_format.json_schema.schema")
        return
    raise bad_value(
        "response_format.type must be text, json_object or json_schema.", "response_format.type"
    )


def map_chat(body: dict[str, Any], task_uuid: str) -> ChatRequest:
    """A Chat Completions body as a textInference task (OpenAIError if it cannot be one)."""
    body = {key: value for key, value in body.items() if value is not None}
    for name in body:
        if name not in HANDLED and name not in IGNORED:
            raise bad_value(
                f"Unrecognized request argument supplied: {name}", name, "unknown_parameter"
            )
    if body.get("logprobs") is True:
        raise bad_value("logprobs are not supported.", "logprobs", "unsupported_parameter")
    params = ParamMap()
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_value("stream must be a boolean.", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise bad_value(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_value("messages must be a non-empty array.", "messages")
    images: list[tuple[str, str]] = []
    mapped = [_message(i, m, images, params) for i, m in enumerate(messages)]
    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": task_uuid,
        "model": body.get("model"),
        "messages": mapped,
        "deliveryMethod": "stream" if stream else "sync",
        "includeUsage": True,
        "includeCost": False,
    }
    params.add("taskUUID", None)
    if images:
        task["inputs"] = {"images": [url for url, _where in images]}
        for k, (_url, where) in enumerate(images):
            params.add(f"inputs.images.{k}", where)
    for name, field in (("n", "numberResults"), ("seed", "seed")):
        if name in body:
            task[field] = body[name]
            params.add(field, name)
    settings: dict[str, Any] = {}
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    simple = {
        limit: "maxTokens",
        "temperature": "temperature",
        "top_p": "topP",
        "frequency_penalty": "frequencyPenalty",
        "presence_penalty": "presencePenalty",
    }
    for name, field in simple.items():
        if name in body:
            settings[field] = body[name]
        params.add(f"settings.{field}", name)
    if "stop" in body:
        stop = body["stop"]
        settings["stopSequences"] = [stop] if isinstance(stop, str) else stop
        params.add("settings.stopSequences", "stop")
    if "reasoning_effort" in body:
        effort = (
            EFFORTS.get(body["reasoning_effort"])
            if isinstance(body["reasoning_effort"], str)
            else None
        )
        if effort is None:
            raise bad_value(
                f"reasoning_effort must be one of {', '.join(EFFORTS)}.", "reasoning_effort"
            )
        settings["thinkingLevel"] = effort
    if settings:
        task["settings"] = settings
    if "tools" in body:
        task["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        task["toolChoice"] = _tool_choice(body["tool_choice"], params)
    if "response_format" in body:
        _response_format(body["response_format"], task, params)
    return ChatRequest(task, params, stream, include_usage)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State) -> Response:
    headers: dict[str, str] = {}
    try:
        owner = authenticate(request, state)
        body = await read_json_object(request, state)
        task_uuid = task_uuid_for(owner, request)
        headers[TASK_UUID_HEADER] = task_uuid
        mapped = map_chat(body, task_uuid)
        task = build_task(mapped.task, mapped.params)
        raw = {"endpoint": "chat.completions", "taskUUID": task_uuid, "body": body}
        completion_id = f"chatcmpl-{task_uuid}"
        async with contextlib.AsyncExitStack() as subscriptions:
            submitted = await submit_one(
                intake_for(owner, state), task, raw, subscriptions, mapped.params
            )
            sub = submitted.accepted.sub
            assert sub is not None
            created = int(time.time())
            if not submitted.created:
                record = await state.store.get(submitted.ref)
                if record is not None:
                    created = int(record.created_ms // 1000)
            n = task.numberResults
            if mapped.stream:
                events = TaskEvents(sub, state.store, submitted.ref, replay=not submitted.created)
                chunks = ChatChunks(completion_id, task.model, created, n, mapped.include_usage)
                body_stream = frames_body(
                    events,
                    chunks,
                    keepalive_s=state.settings.sse_keepalive_s,
                    cleanup=subscriptions.pop_all(),
                )
                return stream_answer(body_stream, headers)
            deadline = asyncio.get_running_loop().time() + state.settings.sync_timeout_s
            results = await collect_results(
                sub, state.store, submitted.ref, n, deadline, read_first=not submitted.created
            )
        if len(results) < n and sync_waits.ending:
            # this process is shutting down: a 503 its client retries (OpenAI's SDK does),
            # on another process, where an Idempotency-Key waits for the same task
            raise OpenAIError(
                "This API process is shutting down before the completion finished; send the "
                f"request again (with the same Idempotency-Key it waits for task {task_uuid} "
                "instead of starting another).",
                status=503,
                kind="server_error",
                code="server_shutting_down",
                retry_after=1,
            )
        if len(results) < n:
            raise OpenAIError(
                f"The completion did not finish within {state.settings.sync_timeout_s:g} s; "
                f"it goes on as task {task_uuid} (getResponse, or retry with the same "
                "Idempotency-Key to wait again).",
                status=504,
                kind="server_error",
                code="timeout",
            )
        answer = completion_body(completion_id, task.model, created, n, results)
        return json_answer(answer, 200, headers)
    except OpenAIError as exc:
        return exc.response(headers)
    except TaskwireError as exc:
        return from_taskwire(exc).response(headers)
    except (RedisError, OSError):
        return storage_unavailable().response(headers)
