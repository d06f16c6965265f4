"""Validation of the wire protocol's task objects (no processes needed)."""

from __future__ import annotations

import uuid

import pytest

from core.protocol import TaskErrors, TextInferenceTask, parse_task


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
    assert parsed.includeCost is False and parsed.includeUsage is False
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
    unknown = errors_of(task(tools=[tool], toolChoice={"type": "tool", "name": "g"}))
    assert unknown[0]["parameter"] == "toolChoice.name"
    assert parse_task(task(toolChoice={"type": "none"}))


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
