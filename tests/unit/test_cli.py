"""The CLI's line conversion (OpenAI batch lines, derived taskUUIDs) and resume bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli.convert import LineError, LineReader, chat_to_task
from cli.output import ResultWriter, read_written, result_entry
from core.protocol import TASK_UUID_PATTERN, TextInferenceTask, parse_task


def batch_line(custom_id: str, body: dict[str, Any]) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def test_a_chat_completion_request_becomes_a_valid_text_inference_task() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in French."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a":2,"b":2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
        ],
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "n": 2,
        "tools": [
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    }
    reader = LineReader("tasks.jsonl", {"gpt-4o-mini": "openai:gpt@5.4-mini"})
    line = reader.read(1, batch_line("req-1", body))
    task = line.task
    assert task["model"] == "openai:gpt@5.4-mini"
    assert task["settings"]["systemPrompt"] == "Be brief.\n\nAnswer in French."
    assert task["messages"][0] == {"role": "user", "content": "What is 2+2?"}
    assert task["messages"][1] == {
        "role": "assistant",
        "tools": [{"id": "c1", "name": "add", "input": {"a": 2, "b": 2}}],
    }
    assert task["messages"][2] == {"role": "tool", "id": "c1", "content": "4"}
    assert task["settings"]["maxTokens"] == 50
    assert task["settings"]["temperature"] == 0.2 and task["settings"]["topP"] == 0.9
    assert task["settings"]["stopSequences"] == ["END"]
    assert task["seed"] == 7 and task["numberResults"] == 2
    assert task["settings"]["toolChoice"] == {"type": "any"}
    assert task["outputFormat"] == "JSON" and task["jsonSchema"] == {"type": "object"}
    # the service's own parser takes it as it is
    parsed = parse_task({**task, "deliveryMethod": "async"})
    assert isinstance(parsed, TextInferenceTask)
    assert TASK_UUID_PATTERN.fullmatch(line.task_uuid)
    assert line.key == "req-1"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
            "body.logprobs",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "image_url",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]},
            "messages.0.name",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}]}, "body.model"),
        ({"model": "m", "messages": [{"role": "system", "content": "x"}]}, "no user message"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 5,
                "max_completion_tokens": 6,
            },
            "differ",
        ),
    ],
)
def test_what_cannot_be_mapped_is_refused_naming_it(body: dict[str, Any], names: str) -> None:
    with pytest.raises(LineError, match=names):
        chat_to_task(body)


def test_batch_line_fields_are_checked() -> None:
    reader = LineReader("f")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(LineError, match="/v1/embeddings"):
        reader.read(
            1,
            json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": body}),
        )
    with pytest.raises(LineError, match="not JSON"):
        reader.read(2, "{oops")
    reader.read(3, batch_line("dup", body))
    with pytest.raises(LineError, match="earlier line"):
        reader.read(4, batch_line("dup", body))


def test_task_uuids_are_stable_per_namespace_and_line() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    plain = json.dumps(
        {"taskType": "textInference", "model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    first, again, other = LineReader("a.jsonl"), LineReader("a.jsonl"), LineReader("b.jsonl")
    ids = [first.read(1, batch_line("k", body)).task_uuid, first.read(2, plain).task_uuid]
    # an identical line is a task of its own (the second of its kind)
    ids.append(first.read(3, plain).task_uuid)
    assert len(set(ids)) == 3
    # the same lines read again (whatever their line numbers) name the same tasks
    assert again.read(9, batch_line("k", body)).task_uuid == ids[0]
    assert again.read(1, plain).task_uuid == ids[1]
    assert again.read(2, plain).task_uuid == ids[2]
    # another namespace, other tasks
    assert other.read(1, batch_line("k", body)).task_uuid != ids[0]
    # a textInference line's own taskUUID is kept
    own = "3f2b6c1e-7d4a-4e9b-9a1c-2b7e5d8f0a13"
    line = first.read(4, json.dumps({**json.loads(plain), "taskUUID": own}))
    assert line.task_uuid == own and line.key == "line:4"


def test_resume_reads_keys_and_cuts_a_half_written_last_line(tmp_path: Path) -> None:
    reader = LineReader("t")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    a, b = reader.read(1, batch_line("a", body)), reader.read(2, batch_line("b", body))
    out = tmp_path / "results.jsonl"
    writer = ResultWriter.append_to(out)
    writer.write(
        result_entry(a, [{"taskUUID": a.task_uuid, "resultIndex": 0, "status": "success"}])
    )
    writer.close()
    with out.open("a") as f:
        f.write('{"custom_id":"b","line":2,"taskUU')  # killed mid-write
    written = read_written(out)
    assert written.dropped_partial and written.lines == 1
    assert written.has(a, a.key) and not written.has(b, b.key)
    assert out.read_text().endswith("\n") and out.read_text().count("\n") == 1
    # appending goes on from the whole line
    writer = ResultWriter.append_to(out)
    writer.write(result_entry(b, [{"taskUUID": b.task_uuid, "resultIndex": 0, "status": "error"}]))
    writer.close()
    entries = [json.loads(raw) for raw in out.read_text().splitlines()]
    assert [(e["custom_id"], e["status"]) for e in entries] == [("a", "success"), ("b", "error")]
    assert read_written(tmp_path / "missing.jsonl").lines == 0
