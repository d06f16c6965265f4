"""Wire models of the client-facing task protocol (docs/protocol.md) and their error mapping."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from core.errors import InvalidRequest

MAX_SEED = 2**63 - 1
# The longest cancelAfter deadline (a day, the default task retention).
MAX_CANCEL_AFTER_S = 86_400
# Free-form JSON objects (providerSettings, jsonSchema, tool schemas, tool call inputs) may nest
# this deep; deeper documents are refused (they are never a real schema or setting).
MAX_JSON_DEPTH = 64
# A UUID v4, hyphenated, in any letter case: the page says "UUID v4" and nothing more.
TASK_UUID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE
)


def canonical_uuid(value: str) -> str:
    """The one spelling of a taskUUID that keys, fingerprints and conflicts use."""
    return value.lower()


def _check_task_uuid(value: str) -> str:
    if not TASK_UUID_PATTERN.fullmatch(value):
        raise ValueError("must be a hyphenated UUID v4, e.g. 3f2b6c1e-7d4a-4e9b-9a1c-2b7e5d8f0a13")
    return value


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    """At most MAX_JSON_DEPTH levels of nesting, and only finite numbers (JSON has no NaN)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError("numbers must be finite (JSON has no NaN or Infinity)")
        children = node.values() if isinstance(node, dict) else node
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


TaskUUID = Annotated[str, AfterValidator(_check_task_uuid)]
HttpURL = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_check_http_url)]
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json_object)]


class WireModel(BaseModel):
    """Strict JSON types, unknown fields rejected: what a client sends is what it meant."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=False)


class ToolCall(WireModel):
    id: str = Field(min_length=1, max_length=256)
    name: ToolName
    input: JsonObject


class Message(WireModel):
    role: Literal["user", "assistant", "system", "tool"]
    content: str | None = Field(default=None, min_length=1)
    tools: list[ToolCall] | None = Field(default=None, min_length=1)
    id: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _shape_by_role(self) -> Message:
        if self.role in ("user", "system"):
            if self.content is None:
                raise ValueError(f"a {self.role} message needs `content`")
            if self.tools is not None or self.id is not None:
                raise ValueError(f"a {self.role} message takes only `role` and `content`")
        elif self.role == "assistant":
            if self.content is None and self.tools is None:
                raise ValueError("an assistant message needs `content` or `tools`")
            if self.id is not None:
                raise ValueError("an assistant message takes no `id` (tool calls carry theirs)")
        else:
            if self.id is None or self.content is None:
                raise ValueError("a tool message needs `id` (the call it answers) and `content`")
            if self.tools is not None:
                raise ValueError("a tool message takes no `tools`")
        return self


class Tool(WireModel):
    """A function tool, and the one form every adapter reads: the function's JSON Schema is
    `parameters` here, sent as `schema` or `parameters` (serialised as `schema`)."""

    type: Literal["function"]
    name: ToolName
    description: str = Field(default="", max_length=8192)
    parameters: JsonObject = Field(
        validation_alias=AliasChoices("schema", "parameters"), serialization_alias="schema"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_schema(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "schema" in data and "parameters" in data:
                raise ValueError("give the function's JSON Schema once: `schema` or `parameters`")
            if "schema" not in data and "parameters" not in data:
                raise ValueError("a tool needs its function's JSON Schema under `schema`")
        return data


class ToolFunction(WireModel):
    name: ToolName
    description: str = Field(default="", max_length=8192)
    parameters: JsonObject = Field(default_factory=lambda: {"type": "object", "properties": {}})


class FunctionTool(WireModel):
    """OpenAI's shape, `{"type": "function", "function": {name, description, parameters}}`."""

    type: Literal["function"]
    function: ToolFunction

    def flat(self) -> Tool:
        return Tool.model_validate(
            {
                "type": "function",
                "name": self.function.name,
                "description": self.function.description,
                "parameters": self.function.parameters,
            }
        )


# Union tags appear in pydantic's error locations; errors_from_validation drops them so a
# parameter reads as the client wrote it (`tools.0.function.name`).
_UNION_TAGS = frozenset({"<tool>", "<function tool>"})


def _tool_shape(value: Any) -> str:
    is_function = isinstance(value, FunctionTool) or (
        isinstance(value, dict) and "function" in value
    )
    return "<function tool>" if is_function else "<tool>"


AnyTool = Annotated[
    Annotated[Tool, Tag("<tool>")] | Annotated[FunctionTool, Tag("<function tool>")],
    Discriminator(_tool_shape),
]


def _tools_as_one_form(tools: list[Tool | FunctionTool]) -> list[Tool | FunctionTool]:
    return [tool.flat() if isinstance(tool, FunctionTool) else tool for tool in tools]


# Validated tools are all `Tool`s (so stored requests hold one form); the union is the input.
ToolList = Annotated[
    list[AnyTool], Field(min_length=1, max_length=128), AfterValidator(_tools_as_one_form)
]


class ToolChoice(WireModel):
    type: Literal["auto", "any", "tool", "none"]
    name: ToolName | None = None

    @model_validator(mode="after")
    def _name_for_tool(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError('toolChoice of type "tool" needs `name`')
        if self.type != "tool" and self.name is not None:
            raise ValueError('`name` is only allowed with toolChoice type "tool"')
        return self


class TaskSettings(WireModel):
    systemPrompt: str | None = Field(default=None, min_length=1, max_length=200_000)
    temperature: float = Field(default=1.0, ge=0, le=2)
    topP: float = Field(default=0.95, ge=0, le=1)
    maxTokens: int = Field(default=4096, ge=1, le=128_000)
    stopSequences: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=16
    )
    frequencyPenalty: float | None = Field(default=None, ge=-2, le=2)
    presencePenalty: float | None = Field(default=None, ge=-2, le=2)
    thinkingLevel: Literal["off", "low", "medium", "high"] | None = None
    tools: ToolList | None = None
    toolChoice: ToolChoice | None = None


class Inputs(WireModel):
    images: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=16)


class TextInferenceTask(WireModel):
    taskType: Literal["textInference"]
    taskUUID: TaskUUID
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=4096)
    deliveryMethod: Literal["sync", "async", "stream"] = "sync"
    numberResults: int = Field(default=1, ge=1, le=4)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    includeCost: bool = True
    includeUsage: bool = False
    webhookURL: HttpURL | None = None
    inputs: Inputs | None = None
    settings: TaskSettings = Field(default_factory=TaskSettings)
    tools: ToolList | None = None
    toolChoice: ToolChoice | None = None
    outputFormat: Literal["TEXT", "JSON"] = "TEXT"
    jsonSchema: JsonObject | None = None
    providerSettings: JsonObject | None = None
    # taskwire extensions (docs/protocol.md, "Cancelling and deadlines"): seconds from
    # submission after which an unfinished result is stopped (taskExpired), and whether a
    # sync or stream task is cancelled when its client disconnects before it finished.
    cancelAfter: float | None = Field(default=None, gt=0, le=MAX_CANCEL_AFTER_S)
    cancelOnDisconnect: bool = False

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TextInferenceTask:
        last = self.messages[-1]
        if last.role == "system" or (last.role == "assistant" and last.tools is not None):
            raise InvalidRequest(
                "The last message must have role `user` or `tool`, or be an `assistant` "
                "message with `content` only (a prefill the model continues).",
                code="invalidMessages",
                parameter=f"messages.{len(self.messages) - 1}.role",
            )
        if self.seed is not None and self.seed + self.numberResults - 1 > MAX_SEED:
            raise InvalidRequest(
                f"seed + numberResults - 1 must not exceed {MAX_SEED}.",
                code="invalidSeed",
                parameter="seed",
            )
        if self.tools is not None and self.settings.tools is not None:
            raise InvalidRequest(
                "Give `tools` once: under `settings` or at the top level, not both.",
                code="invalidTools",
                parameter="settings.tools",
            )
        if self.toolChoice is not None and self.settings.toolChoice is not None:
            raise InvalidRequest(
                "Give `toolChoice` once: under `settings` or at the top level, not both.",
                code="invalidToolChoice",
                parameter="settings.toolChoice",
            )
        if self.cancelOnDisconnect and self.deliveryMethod == "async":
            raise InvalidRequest(
                "cancelOnDisconnect applies to sync and stream tasks (an async task has no "
                "connection to lose); use cancelAfter or taskCancel instead.",
                code="invalidCancelOnDisconnect",
                parameter="cancelOnDisconnect",
            )
        self._check_tool_choice()
        if self.jsonSchema is not None and self.outputFormat != "JSON":
            raise InvalidRequest(
                '`jsonSchema` needs `outputFormat: "JSON"`.',
                code="invalidJsonSchema",
                parameter="jsonSchema",
            )
        return self

    def _check_tool_choice(self) -> None:
        choice = self.effective_tool_choice
        if choice is None:
            return
        where = "toolChoice" if self.toolChoice is not None else "settings.toolChoice"
        names = {tool.name for tool in self.effective_tools or ()}
        if choice.type != "none" and not names:
            raise InvalidRequest(
                f'toolChoice "{choice.type}" needs `tools`.',
                code="invalidToolChoice",
                parameter=where,
            )
        if choice.name is not None and choice.name not in names:
            raise InvalidRequest(
                f"toolChoice names {choice.name!r}, which is not among the tools "
                f"({', '.join(sorted(names))}).",
                code="invalidToolChoice",
                parameter=f"{where}.name",
            )

    @property
    def effective_tools(self) -> list[Tool] | None:
        tools = self.tools if self.tools is not None else self.settings.tools
        if tools is None:
            return None
        return [tool if isinstance(tool, Tool) else tool.flat() for tool in tools]

    @property
    def ends_with_prefill(self) -> bool:
        """The conversation ends with an assistant message the model is to continue."""
        return self.messages[-1].role == "assistant"

    @property
    def effective_tool_choice(self) -> ToolChoice | None:
        return self.toolChoice if self.toolChoice is not None else self.settings.toolChoice


class GetResponseTask(WireModel):
    taskType: Literal["getResponse"]
    taskUUID: TaskUUID


class TaskCancelTask(WireModel):
    """Stop a task's results that are not final (docs/protocol.md, "Cancelling")."""

    taskType: Literal["taskCancel"]
    taskUUID: TaskUUID


class PingTask(WireModel):
    taskType: Literal["ping"]
    ping: bool = True


class ImageUploadTask(WireModel):
    taskType: Literal["imageUpload"]
    taskUUID: TaskUUID
    image: str = Field(min_length=1)


class AuthenticationTask(WireModel):
    taskType: Literal["authentication"]
    apiKey: str = Field(min_length=1, max_length=512)


TASK_MODELS: dict[str, type[WireModel]] = {
    "textInference": TextInferenceTask,
    "getResponse": GetResponseTask,
    "taskCancel": TaskCancelTask,
    "ping": PingTask,
    "imageUpload": ImageUploadTask,
    "authentication": AuthenticationTask,
}


def parse_task(raw: Any) -> WireModel:
    """Validate one task object, raising InvalidRequest errors that name the parameter.

    Raises `TaskErrors` carrying every problem found in the task (a client fixing a request
    wants to see all of them at once).
    """
    if not isinstance(raw, dict):
        raise TaskErrors([InvalidRequest("Each task must be a JSON object.", code="invalidTask")])
    task_type = raw.get("taskType")
    if task_type is None:
        raise TaskErrors(
            [
                InvalidRequest(
                    "Missing required parameter 'taskType'.",
                    code="missingTaskType",
                    parameter="taskType",
                )
            ]
        )
    model = TASK_MODELS.get(task_type) if isinstance(task_type, str) else None
    if model is None:
        raise TaskErrors(
            [
                InvalidRequest(
                    f"Unsupported taskType {_describe(task_type)}; allowed: "
                    f"{', '.join(TASK_MODELS)}.",
                    code="invalidTaskType",
                    parameter="taskType",
                )
            ]
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise TaskErrors(errors_from_validation(exc, model)) from None
    except InvalidRequest as exc:
        raise TaskErrors([exc]) from None


def _describe(value: Any) -> str:
    """A client's value for an error message: short strings quoted, anything else by its
    JSON type (never the repr of an arbitrarily deep structure)."""
    if isinstance(value, str):
        return repr(value[:64] + ("…" if len(value) > 64 else ""))
    if isinstance(value, bool) or value is None:
        return "a JSON " + ("boolean" if isinstance(value, bool) else "null")
    if isinstance(value, int | float):
        return "a JSON number"
    return "a JSON object" if isinstance(value, dict) else "a JSON array"


class TaskErrors(Exception):
    """All validation errors of one task."""

    def __init__(self, errors: list[InvalidRequest]):
        super().__init__(errors[0].message if errors else "invalid task")
        self.errors = errors


def errors_from_validation(exc: ValidationError, root: type[BaseModel]) -> list[InvalidRequest]:
    """Translate pydantic errors into protocol errors: code from the field, dotted parameter."""
    found: list[InvalidRequest] = []
    for error in exc.errors(include_url=False):
        loc = [part for part in error["loc"] if part not in _UNION_TAGS]
        parameter = ".".join(str(part) for part in loc)
        names = [part for part in loc if isinstance(part, str)]
        field = names[-1] if names else "request"
        capital = field[:1].upper() + field[1:]
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = _fields_at(root, loc[:-1])
            hint = f" Allowed here: {', '.join(allowed)}." if allowed else ""
            found.append(
                InvalidRequest(
                    f"Unknown parameter '{parameter}'.{hint}",
                    code="unknownParameter",
                    parameter=parameter,
                )
            )
        elif kind == "missing":
            found.append(
                InvalidRequest(
                    f"Missing required parameter '{parameter}'.",
                    code=f"missing{capital}",
                    parameter=parameter,
                )
            )
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            found.append(
                InvalidRequest(
                    f"Invalid value for '{parameter or 'request'}': {message}.".replace("..", "."),
                    code=f"invalid{capital}",
                    parameter=parameter or None,
                )
            )
    return found


def _fields_at(root: type[BaseModel], path: list[int | str]) -> list[str]:
    """The accepted field names of the model found at `path` under `root`, for hints."""
    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if info is None:
            for candidate in getattr(model, "model_fields", {}).values():
                if candidate.alias == part:
                    info = candidate
        if info is None:
            return []
        model = _model_in(info.annotation)
        if model is None:
            return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
