"""The OpenAI Responses API over taskwire tasks: `POST /v1/responses` (sync, stream,
background), `GET /v1/responses/{id}` (poll, or `?stream=true&starting_after=N` to resume
the event stream) and `POST /v1/responses/{id}/cancel`.

A response is one textInference task (`resp_<taskUUID without hyphens>`); its state and
events are the task's, rendered by service/openai_responses_render.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from core.errors import TaskwireError
from core.events import Event, TaskEvents
from core.keys import TaskRef
from core.protocol import TASK_UUID_PATTERN
from core.store import TaskRecord
from service.cancel import TaskCancels
from service.delivery import collect_results, confirmed
from service.limits import check_reads
from service.openai_chat import EFFORTS
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
from service.openai_responses_render import ResponseRenderer
from service.state import AppState, State

router = APIRouter(route_class=MeteredRoute)  # counted in taskwire_api_openai_requests

IGNORED = frozenset(
    {
        "store",
        "metadata",
        "user",
        "parallel_tool_calls",
        "truncation",
        "include",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "max_tool_calls",
    }
)
HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "tools",
        "tool_choice",
        "text",
        "stream",
        "background",
        "seed",
    }
)


@dataclass
class ResponsesRequest:
    task: dict[str, Any]
    params: ParamMap
    stream: bool
    background: bool


def _content(content: Any, where: str, images: list[tuple[str, str]] | None) -> Any:
    if not isinstance(content, list):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_image" and images is not None:
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise bad_value(
                    "An input_image part needs `image_url` (a URL or data URI; file_id is not "
                    "supported).",
                    f"{where}.{j}.image_url",
                )
            images.append((url, f"{where}.{j}.image_url"))
        elif kind != "refusal":
            raise bad_value(
                f"Content part type {kind!r} is not supported here.", f"{where}.{j}.type"
            )
    if not texts:
        raise bad_value("A message needs at least one text part.", where)
    return "\n".join(texts)


def _input(value: Any, images: list[tuple[str, str]], params: ParamMap) -> list[dict[str, Any]]:
    if isinstance(value, str):
        params.add("messages.0", "input")
        params.add("messages", "input")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_value("input must be a string or a non-empty array of items.", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise bad_value("Each input item must be an object.", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                text = _content(item.get("content"), f"{where}.content", None)
                out.append({"role": "system", "content": text})
            elif role == "user":
                text = _content(item.get("content"), f"{where}.content", images)
                out.append({"role": "user", "content": text})
            elif role == "assistant":
                text = _content(item.get("content"), f"{where}.content", None)
                out.append({"role": "assistant", "content": text})
            else:
                raise bad_value(f"Unsupported role {role!r}.", f"{where}.role")
            params.add(f"messages.{len(out) - 1}", where)
        elif kind == "function_call":
            arguments = item.get("arguments")
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise bad_value(
                    "A function_call's arguments must be a JSON object (as text).",
                    f"{where}.arguments",
                )
            call = {"id": item.get("call_id"), "name": item.get("name"), "input": parsed}
            # consecutive calls (and the assistant text before them) are one assistant turn
            last = out[-1] if out and out[-1]["role"] == "assistant" else None
            if last is None:
                last = {"role": "assistant"}
                out.append(last)
                params.add(f"messages.{len(out) - 1}", where)
            calls = last.setdefault("tools", [])
            j, k = len(out) - 1, len(calls)
            calls.append(call)
            params.add(f"messages.{j}.tools.{k}.id", f"{where}.call_id")
            params.add(f"messages.{j}.tools.{k}.name", f"{where}.name")
            params.add(f"messages.{j}.tools.{k}.input", f"{where}.arguments")
            params.add(f"messages.{j}.tools.{k}", where)
        elif kind == "function_call_output":
            output = _content(item.get("output"), f"{where}.output", None)
            out.append({"role": "tool", "id": item.get("call_id"), "content": output})
            j = len(out) - 1
            params.add(f"messages.{j}", where)
            params.add(f"messages.{j}.id", f"{where}.call_id")
            params.add(f"messages.{j}.content", f"{where}.output")
        elif kind == "reasoning":
            continue  # a previous answer's reasoning, handed back: not sent upstream
        else:
            raise bad_value(f"Input item type {kind!r} is not supported.", f"{where}.type")
    if not out:
        raise bad_value("input has no message.", "input")
    return out


def _tools(tools: Any) -> Any:
    if not isinstance(tools, list):
        return tools
    out = []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad_value("Only function tools are supported.", f"tools.{k}.type")
        shown = {
            key: value
            for key, value in tool.items()
            if key in ("type", "name", "description", "parameters") and value is not None
        }
        shown.setdefault("parameters", {"type": "object", "properties": {}})
        out.append(shown)
    return out


def _tool_choice(choice: Any, params: ParamMap) -> dict[str, Any]:
    params.add("toolChoice", "tool_choice")
    named = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        params.add("toolChoice.name", "tool_choice.name")
        return {"type": "tool", "name": choice.get("name")}
    raise bad_value(
        'tool_choice must be "auto", "none", "required" or {"type": "function", "name": …}.',
        "tool_choice",
    )


def _text_format(text: Any, task: dict[str, Any], params: ParamMap) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    params.add("outputFormat", "text.format")
    if kind == "text":
        return
    if kind == "json_object":
        task["outputFormat"] = "JSON"
        return
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise bad_value(
                "text.format json_schema needs `schema` (an object).", "text.format.schema"
            )
        task["outputFormat"] = "JSON"
        task["jsonSchema"] = schema
        params.add("jsonSchema", "text.format.schema")
        return
    raise bad_value(
        "text.format.type must be text, json_object or json_schema.", "text.format.type"
    )


def map_responses(body: dict[str, Any], task_uuid: str) -> ResponsesRequest:
    body = {key: value for key, value in body.items() if value is not None}
    for name in body:
        if name not in HANDLED and name not in IGNORED:
            code = (
                "unsupported_parameter"
                if name in ("previous_response_id", "conversation", "prompt")
                else "unknown_parameter"
            )
            raise bad_value(f"Unrecognized or unsupported request argument: {name}", name, code)
    stream = body.get("stream", False)
    background = body.get("background", False)
    for name, value in (("stream", stream), ("background", background)):
        if not isinstance(value, bool):
            raise bad_value(f"{name} must be a boolean.", name)
    params = ParamMap()
    images: list[tuple[str, str]] = []
    messages = _input(body.get("input"), images, params)
    task: dict[str, Any] = {
        "taskType": "textInference",
        "taskUUID": task_uuid,
        "model": body.get("model"),
        "messages": messages,
        "deliveryMethod": "stream" if stream else ("async" if background else "sync"),
        "includeUsage": True,
        "includeCost": False,
    }
    params.add("taskUUID", None)
    if images:
        task["inputs"] = {"images": [url for url, _where in images]}
        for k, (_url, where) in enumerate(images):
            params.add(f"inputs.images.{k}", where)
    if "seed" in body:
        task["seed"] = body["seed"]
    settings: dict[str, Any] = {}
    simple = {
        "instructions": "systemPrompt",
        "max_output_tokens": "maxTokens",
        "temperature": "temperature",
        "top_p": "topP",
    }
    for name, field in simple.items():
        if name in body:
            settings[field] = body[name]
        params.add(f"settings.{field}", name)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        effort = reasoning["effort"]
        level = EFFORTS.get(effort) if isinstance(effort, str) else None
        if level is None:
            raise bad_value(
                f"reasoning.effort must be one of {', '.join(EFFORTS)}.", "reasoning.effort"
            )
        settings["thinkingLevel"] = level
    if settings:
        task["settings"] = settings
    if "tools" in body:
        task["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        task["toolChoice"] = _tool_choice(body["tool_choice"], params)
    if "text" in body:
        _text_format(body["text"], task, params)
    return ResponsesRequest(task, params, stream, background)


def task_uuid_of(response_id: str) -> str:
    """The taskUUID of `resp_<32 hex digits>` (404 in OpenAI's shape for anything else)."""
    hex_part = response_id.removeprefix("resp_")
    try:
        value = str(uuid.UUID(hex=hex_part)) if response_id.startswith("resp_") else ""
    except ValueError:
        value = ""
    if not TASK_UUID_PATTERN.fullmatch(value):
        raise not_found(response_id)
    return value


def not_found(response_id: str) -> OpenAIError:
    return OpenAIError(
        f"No response found with id '{response_id}'.",
        status=404,
        param="response_id",
        code="not_found",
    )


async def record_of(state: AppState, ref: TaskRef, response_id: str) -> TaskRecord:
    record = await state.store.get(ref)
    if record is None:
        raise not_found(response_id)
    return record


async def rendered(state: AppState, record: TaskRecord) -> ResponseRenderer:
    """The response as its stored events and record say now."""
    renderer = ResponseRenderer(record.ref.uuid, record.request, record.created_ms)
    final = record.results.get(0)
    if final is None:
        for event_id, body in await state.store.read_events(record.ref):
            renderer.render(Event(event_id, body))
    if final is not None and not renderer.done:
        renderer.settle(final)
    return renderer


@router.post("/v1/responses")
async def create_response(request: Request, state: State) -> Response:
    headers: dict[str, str] = {}
    try:
        owner = authenticate(request, state)
        body = await read_json_object(request, state)
        task_uuid = task_uuid_for(owner, request)
        headers[TASK_UUID_HEADER] = task_uuid
        mapped = map_responses(body, task_uuid)
        task = build_task(mapped.task, mapped.params)
        raw = {"endpoint": "responses", "taskUUID": task_uuid, "body": body}
        async with contextlib.AsyncExitStack() as subscriptions:
            submitted = await submit_one(
                intake_for(owner, state), task, raw, subscriptions, mapped.params
            )
            record = await record_of(state, submitted.ref, task_uuid)
            sub = submitted.accepted.sub
            if mapped.stream:
                assert sub is not None
                events = TaskEvents(sub, state.store, submitted.ref, replay=not submitted.created)
                frames = ResponseRenderer(task_uuid, record.request, record.created_ms)
                return stream_answer(
                    frames_body(
                        events,
                        frames,
                        keepalive_s=state.settings.sse_keepalive_s,
                        cleanup=subscriptions.pop_all(),
                    ),
                    headers,
                )
            if sub is not None:
                deadline = asyncio.get_running_loop().time() + state.settings.sync_timeout_s
                await collect_results(
                    sub, state.store, submitted.ref, 1, deadline, read_first=not submitted.created
                )
                record = await record_of(state, submitted.ref, task_uuid)
        return json_answer((await rendered(state, record)).snapshot(), 200, headers)
    except OpenAIError as exc:
        return exc.response(headers)
    except TaskwireError as exc:
        return from_taskwire(exc).response(headers)
    except (RedisError, OSError):
        return storage_unavailable().response(headers)


@router.get("/v1/responses/{response_id}")
async def get_response(
    response_id: str,
    request: Request,
    state: State,
) -> Response:
    try:
        owner = authenticate(request, state)
        task_uuid = task_uuid_of(response_id)
        stream = request.query_params.get("stream", "false").lower() == "true"
        after = request.query_params.get("starting_after")
        starting_after = -1
        if after is not None:
            if not after.isdigit():
                raise bad_value("starting_after must be a sequence number.", "starting_after")
            starting_after = int(after)
        try:
            await check_reads(state.read_bucket, owner, [{"taskType": "getResponse"}])
        except TaskwireError as exc:
            raise from_taskwire(exc) from None
        ref = TaskRef(owner, task_uuid)
        record = await record_of(state, ref, response_id)
        headers = {TASK_UUID_HEADER: task_uuid}
        if not stream:
            return json_answer((await rendered(state, record)).snapshot(), 200, headers)
        cleanup = contextlib.AsyncExitStack()
        try:
            sub = await cleanup.enter_async_context(
                state.hub.subscribe(state.store.keys.events(ref))
            )
            await confirmed(sub)
        except BaseException:
            await cleanup.aclose()
            raise
        frames = ResponseRenderer(
            task_uuid, record.request, record.created_ms, starting_after=starting_after
        )
        body = frames_body(
            TaskEvents(sub, state.store, ref),
            frames,
            keepalive_s=state.settings.sse_keepalive_s,
            cleanup=cleanup,
        )
        return stream_answer(body, headers)
    except OpenAIError as exc:
        return exc.response()
    except TaskwireError as exc:
        return from_taskwire(exc).response()
    except (RedisError, OSError):
        return storage_unavailable().response()


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, state: State) -> Response:
    try:
        owner = authenticate(request, state)
        task_uuid = task_uuid_of(response_id)
        ref = TaskRef(owner, task_uuid)
        cancels = TaskCancels(state.store, state.hub, state.deliveries)
        try:
            await cancels.cancel(ref, task_uuid, state.settings.cancel_wait_s)
        except TaskwireError as exc:
            if exc.status == 404:
                raise not_found(response_id) from None
            raise
        record = await record_of(state, ref, response_id)
        renderer = await rendered(state, record)
        headers = {TASK_UUID_HEADER: task_uuid}
        # a running result told to stop that has not confirmed yet is cancelled all the same
        shown = renderer.snapshot("cancelled") if not renderer.done else renderer.snapshot()
        return json_answer(shown, 200, headers)
    except OpenAIError as exc:
        return exc.response()
    except TaskwireError as exc:
        return from_taskwire(exc).response()
    except (RedisError, OSError):
        return storage_unavailable().response()
