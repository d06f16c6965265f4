"""Validation of the wire protocol's task objects (no processes needed)."""

from __future__ import annotations

import uuid

import pytest

from core.protocol import MAX_JSON_DEPTH, TaskErrors, TextInferenceTask, Tool, parse_task


def task(**fields):
    base = {
        "taskType": "textInference",
        "taskUUID": str(uuid.uuid4()),
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def errors_of(raw) -> list[dict]:
    with pytest.raises(TaskErrors) as caught:
        parse_task(raw)
    return [error.to_item() for error in caught.value.errors]


def test_defaults_follow_the_protocol() -> None:
    parsed = parse_task(task())
    assert isinstance(parsed, TextInferenceTask)
    assert parsed.deliveryMethod == "sync"
    assert parsed.numberResults == 1
    # Runware's page: includeCost "boolean default: true", includeUsage "default: false"
    assert parsed.includeCost is True and parsed.includeUsage is False
    assert parsed.settings.temperature == 1.0
    assert parsed.settings.topP == 0.95
    assert parsed.settings.maxTokens == 4096
    assert parsed.outputFormat == "TEXT"


def test_all_errors_of_a_task_are_reported() -> None:
    errors = errors_of(task(numberResults=9, settings={"temperature": -1}, extra=1))
    assert {e["code"] for e in errors} == {
        "invalidNumberResults",
        "invalidTemperature",
        "unknownParameter",
    }


def test_strict_types_do_not_coerce() -> None:
    assert errors_of(task(seed="5"))[0]["code"] == "invalidSeed"
    assert errors_of(task(settings={"maxTokens": 10.0}))[0]["code"] == "invalidMaxTokens"
    assert errors_of(task(includeCost="true"))[0]["code"] == "invalidIncludeCost"
    # an integer where a float is expected is fine (JSON has one number type)
    assert parse_task(task(settings={"temperature": 1})).settings.temperature == 1.0


def test_message_shapes_by_role() -> None:
    assert (
        errors_of(task(messages=[{"role": "tool", "content": "42"}]))[0]["parameter"]
        == "messages.0"
    )
    assert errors_of(task(messages=[{"role": "user", "content": "x", "id": "c1"}]))
    assert errors_of(task(messages=[{"role": "user"}]))
    ok = parse_task(
        task(
            messages=[
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "tools": [{"id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}],
                },
                {"role": "tool", "id": "c1", "content": "sunny"},
            ],
            tools=[{"type": "function", "name": "get_weather", "schema": {"type": "object"}}],
        )
    )
    assert isinstance(ok, TextInferenceTask)


def test_tools_and_tool_choice_rules() -> None:
    tool = {"type": "function", "name": "f", "description": "d", "schema": {"type": "object"}}
    parsed = parse_task(task(settings={"tools": [tool], "toolChoice": {"type": "any"}}))
    assert isinstance(parsed, TextInferenceTask)
    assert parsed.effective_tools is not None and parsed.effective_tools[0].name == "f"
    assert parsed.effective_tool_choice is not None
    twice = errors_of(task(tools=[tool], settings={"tools": [tool]}))
    assert twice[0] == {**twice[0], "code": "invalidTools", "parameter": "settings.tools"}
    assert "deprecated" not in twice[0]["message"]
    unknown = errors_of(task(tools=[tool], toolChoice={"type": "tool", "name": "g"}))
    assert unknown[0]["parameter"] == "toolChoice.name"
    # under settings (where Runware's page documents them), errors name that path
    unknown = errors_of(
        task(settings={"tools": [tool], "toolChoice": {"type": "tool", "name": "g"}})
    )
    assert unknown[0]["parameter"] == "settings.toolChoice.name"
    bad = {**tool, "name": "bad name"}
    assert errors_of(task(settings={"tools": [bad]}))[0]["parameter"] == "settings.tools.0.name"
    assert errors_of(task(tools=[bad]))[0]["parameter"] == "tools.0.name"
    assert parse_task(task(toolChoice={"type": "none"}))


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


@pytest.mark.parametrize(
    "given",
    [
        {"type": "function", "name": "get_weather", "description": "d", "schema": SCHEMA},
        {"type": "function", "name": "get_weather", "description": "d", "parameters": SCHEMA},
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "d", "parameters": SCHEMA},
        },
    ],
    ids=["schema", "parameters", "openai-shape"],
)
def test_tool_shapes_normalise_to_one_form(given: dict) -> None:
    for where in ("top", "settings"):
        fields = {"tools": [given]} if where == "top" else {"settings": {"tools": [given]}}
        parsed = parse_task(task(**fields))
        assert isinstance(parsed, TextInferenceTask)
        assert parsed.effective_tools == [
            Tool.model_validate(
                {"type": "function", "name": "get_weather", "description": "d", "schema": SCHEMA}
            )
        ]
        # what is stored (and re-read by the worker) is the one form
        stored = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
        tools = stored["tools"] if where == "top" else stored["settings"]["tools"]
        assert tools == [
            {"type": "function", "name": "get_weather", "description": "d", "schema": SCHEMA}
        ]
        assert TextInferenceTask.model_validate(stored).effective_tools == parsed.effective_tools


def test_tool_shape_errors_name_the_path_used() -> None:
    nameless = {"type": "function", "function": {"name": "no spaces", "parameters": SCHEMA}}
    [error] = errors_of(task(settings={"tools": [nameless]}))
    assert error["parameter"] == "settings.tools.0.function.name"
    both = {"type": "function", "name": "f", "schema": SCHEMA, "parameters": SCHEMA}
    assert errors_of(task(tools=[both]))[0]["parameter"] == "tools.0"
    neither = {"type": "function", "name": "f"}
    assert errors_of(task(tools=[neither]))[0]["code"] == "invalidTools"
    # OpenAI's shape may leave `parameters` out (a function without arguments)
    bare = parse_task(task(tools=[{"type": "function", "function": {"name": "now"}}]))
    assert isinstance(bare, TextInferenceTask) and bare.effective_tools is not None
    assert bare.effective_tools[0].parameters == {"type": "object", "properties": {}}


def test_task_uuid_in_any_letter_case() -> None:
    upper = str(uuid.uuid4()).upper()
    parsed = parse_task(task(taskUUID=upper))
    assert isinstance(parsed, TextInferenceTask) and parsed.taskUUID == upper  # echoed as sent
    assert parse_task({"taskType": "getResponse", "taskUUID": upper})
    not_v4 = "3f2b6c1e-7d4a-1e9b-9a1c-2b7e5d8f0a13"
    assert errors_of(task(taskUUID=not_v4))[0]["code"] == "invalidTaskUUID"
    assert errors_of(task(taskUUID=upper.replace("-", "")))[0]["code"] == "invalidTaskUUID"


def nested(depth: int) -> dict:
    """A JSON object `depth` levels deep."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("field", ["providerSettings", "jsonSchema", "toolSchema"])
def test_free_form_objects_have_a_depth_limit(field: str) -> None:
    def with_value(value: dict) -> dict:
        if field == "toolSchema":
            return task(tools=[{"type": "function", "name": "f", "schema": value}])
        if field == "jsonSchema":
            return task(outputFormat="JSON", jsonSchema=value)
        return task(providerSettings=value)

    assert parse_task(with_value(nested(MAX_JSON_DEPTH)))
    [error] = errors_of(with_value(nested(300)))
    parameter = "tools.0.schema" if field == "toolSchema" else field
    assert error["parameter"] == parameter
    assert f"deeper than {MAX_JSON_DEPTH}" in error["message"]
    # a list counts as a level too
    deep_list: list = []
    for _ in range(MAX_JSON_DEPTH):
        deep_list = [deep_list]
    assert errors_of(with_value({"x": deep_list}))[0]["parameter"] == parameter


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_free_form_objects_take_only_finite_numbers(number: float) -> None:
    [error] = errors_of(task(providerSettings={"reasoning": {"x": [1, number]}}))
    assert error == {**error, "code": "invalidProviderSettings", "parameter": "providerSettings"}
    [error] = errors_of(task(outputFormat="JSON", jsonSchema={"maximum": number}))
    assert error["parameter"] == "jsonSchema"


def test_a_conversation_may_end_with_an_assistant_prefill() -> None:
    prefill = [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "One,"}]
    parsed = parse_task(task(messages=prefill))
    assert isinstance(parsed, TextInferenceTask) and parsed.ends_with_prefill
    assert not parse_task(task()).ends_with_prefill  # type: ignore[union-attr]
    calls = [{"id": "c1", "name": "f", "input": {}}]
    pending = [{"role": "user", "content": "x"}, {"role": "assistant", "tools": calls}]
    assert errors_of(task(messages=pending))[0]["parameter"] == "messages.1.role"
    system_last = [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]
    assert errors_of(task(messages=system_last))[0]["code"] == "invalidMessages"


def test_seed_range() -> None:
    assert parse_task(task(seed=2**63 - 1)).seed == 2**63 - 1
    assert errors_of(task(seed=2**63))[0]["code"] == "invalidSeed"
    assert errors_of(task(seed=2**63 - 2, numberResults=4))[0]["parameter"] == "seed"


@pytest.mark.parametrize("value", ["http://example.com/hook", "https://h.example:8443/x?y=1"])
def test_webhook_urls_accepted(value: str) -> None:
    assert parse_task(task(webhookURL=value))


@pytest.mark.parametrize("value", ["example.com", "javascript:alert(1)", "http://", ""])
def test_webhook_urls_rejected(value: str) -> None:
    assert errors_of(task(webhookURL=value))[0]["code"] == "invalidWebhookURL"


def test_task_type_problems() -> None:
    assert errors_of({"taskUUID": "x"})[0]["code"] == "missingTaskType"
    assert errors_of({"taskType": 3})[0]["code"] == "invalidTaskType"
    assert errors_of([1, 2])[0]["code"] == "invalidTask"


def test_get_response_and_ping() -> None:
    u = str(uuid.uuid4())
    assert parse_task({"taskType": "getResponse", "taskUUID": u})
    assert errors_of({"taskType": "getResponse"})[0]["code"] == "missingTaskUUID"
    assert parse_task({"taskType": "ping", "ping": True})


def test_a_deeply_nested_task_type_is_described_not_printed() -> None:
    import pytest

    from core.protocol import TaskErrors, parse_task

    deep: dict[str, object] = {"a": 1}
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(TaskErrors) as caught:
        parse_task({"taskType": deep})
    assert "a JSON object" in caught.value.errors[0].message
    with pytest.raises(TaskErrors) as caught:
        parse_task({"taskType": "x" * 10_000})
    assert len(caught.value.errors[0].message) < 200
