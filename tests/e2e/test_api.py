"""The task API end to end: real API, worker, simulator and Redis processes."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import KEY_A, KEY_B, MODEL, Api, text_task, wait_for_log


def test_sync_task_returns_the_result(api: Api) -> None:
    task = text_task("Say hello", seed=42, includeUsage=True, includeCost=True)
    response = api.post([task])
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert item["taskType"] == "textInference"
    assert item["taskUUID"] == task["taskUUID"]
    assert item["resultIndex"] == 0
    assert item["status"] == "success"
    assert item["seed"] == 42
    assert item["finishReason"] == "stop"
    assert isinstance(item["text"], str) and len(item["text"].split()) == 24
    usage = item["usage"]
    assert usage["completionTokens"] == 24
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert usage["thinkingTokens"] == 0 and usage["cachedTokens"] == 0
    expected_cost = (usage["promptTokens"] * 0.75 + usage["completionTokens"] * 4.50) / 1e6
    assert item["cost"] == pytest.approx(expected_cost)


def test_same_seed_and_prompt_give_the_same_text(api: Api) -> None:
    first = api.post([text_task("Determinism check", seed=7)]).json()["data"][0]
    second = api.post([text_task("Determinism check", seed=7)]).json()["data"][0]
    third = api.post([text_task("Determinism check", seed=8)]).json()["data"][0]
    assert first["text"] == second["text"]
    assert first["text"] != third["text"]


def test_usage_and_cost_only_when_asked(api: Api) -> None:
    [item] = api.post([text_task()]).json()["data"]
    assert "usage" not in item and "cost" not in item
    assert "reasoningContent" not in item and "toolCalls" not in item


def test_single_object_body_and_authentication_task(api: Api) -> None:
    task = text_task()
    response = api.http.post("/v1", json=[{"taskType": "authentication", "apiKey": KEY_A}, task])
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["status"] == "success"
    response = api.post(text_task())  # a bare object, not an array
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1


def test_ping(api: Api) -> None:
    response = api.post([{"taskType": "ping", "ping": True}])
    assert response.status_code == 200
    assert response.json() == {"data": [{"taskType": "ping", "pong": True}]}


def test_async_task_then_get_response(api: Api) -> None:
    task = text_task("Async please", deliveryMethod="async", seed=3)
    response = api.post([task])
    assert response.status_code == 200
    [ack] = response.json()["data"]
    assert ack == {
        "taskType": "textInference",
        "taskUUID": task["taskUUID"],
        "status": "processing",
        "links": {"stream": ack["links"]["stream"]},
    }
    stream_link = f"{api.stack.api_url}/v1/tasks/{task['taskUUID']}/events?token="
    assert ack["links"]["stream"].startswith(stream_link)
    [item] = api.wait_final(task["taskUUID"])
    assert item["links"]["stream"].startswith(stream_link)
    assert item["status"] == "success"
    assert item["seed"] == 3
    assert item["resultIndex"] == 0


def test_number_results_run_with_distinct_seeds(api: Api, stack) -> None:
    task = text_task("Four variations", numberResults=4, seed=100)
    response = api.post([task])
    assert response.status_code == 200, response.text
    items = response.json()["data"]
    assert [item["resultIndex"] for item in items] == [0, 1, 2, 3]
    assert [item["seed"] for item in items] == [100, 101, 102, 103]
    assert len({item["text"] for item in items}) == 4
    # one job per result: four result lines, each for its own index
    finished = wait_for_log(
        stack.workers[0].log_path,
        lambda line: (
            line.get("event") == "result.finished" and line.get("task_uuid") == task["taskUUID"]
        ),
        count=4,
    )
    assert sorted(line["result_index"] for line in finished) == [0, 1, 2, 3]


def test_random_seeds_are_distinct_and_reported(api: Api) -> None:
    items = api.post([text_task("Random seeds", numberResults=3)]).json()["data"]
    seeds = [item["seed"] for item in items]
    assert len(set(seeds)) == 3
    assert all(0 <= seed < 2**32 for seed in seeds)


def test_max_tokens_cuts_with_finish_reason_length(api: Api) -> None:
    [item] = api.post([text_task(settings={"maxTokens": 5})]).json()["data"]
    assert item["finishReason"] == "length"
    assert len(item["text"].split()) == 5


def test_stop_sequences_and_system_prompt_reach_the_upstream(api: Api) -> None:
    settings = {"systemPrompt": "Be brief"}
    [plain] = api.post([text_task("Stop test", seed=5)]).json()["data"]
    [base] = api.post([text_task("Stop test", seed=5, settings=settings)]).json()["data"]
    assert base["text"] != plain["text"]  # the simulator saw the system prompt
    words = base["text"].split(" ")
    stop = " " + words[3]
    [item] = api.post(
        [text_task("Stop test", seed=5, settings={**settings, "stopSequences": [stop]})]
    ).json()["data"]
    assert item["finishReason"] == "stop"
    assert item["text"] == base["text"][: base["text"].index(stop)]


def test_batch_mixes_good_and_bad_tasks(api: Api) -> None:
    good = text_task("Good one")
    bad = text_task("Bad one", settings={"temperature": 5})
    ping = {"taskType": "ping", "ping": True}
    response = api.post([good, bad, ping])
    assert response.status_code == 200
    body = response.json()
    assert [item["taskType"] for item in body["data"]] == ["textInference", "ping"]
    assert body["data"][0]["taskUUID"] == good["taskUUID"]
    assert body["data"][0]["status"] == "success"
    [error] = body["errors"]
    assert error["code"] == "invalidTemperature"
    assert error["parameter"] == "settings.temperature"
    assert error["taskUUID"] == bad["taskUUID"]
    assert error["taskType"] == "textInference"
    # the bad task was not stored
    assert api.get_response(bad["taskUUID"]).status_code == 404


def test_all_tasks_failing_takes_the_first_errors_status(api: Api) -> None:
    response = api.post(
        [
            text_task(settings={"topP": 2}),
            {"taskType": "getResponse", "taskUUID": str(uuid.uuid4())},
        ]
    )
    assert response.status_code == 400
    codes = [error["code"] for error in response.json()["errors"]]
    assert codes == ["invalidTopP", "taskFailedOrNotFound"]
    assert "data" not in response.json()


# --- validation: every class of error, with code and parameter


def _only_error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    errors = response.json()["errors"]
    assert len(errors) >= 1
    return errors[0]


INVALID_CASES = [
    ({"taskUUID": "not-a-uuid"}, "invalidTaskUUID", "taskUUID"),
    ({"taskUUID": str(uuid.uuid4()).upper()}, "invalidTaskUUID", "taskUUID"),
    ({"taskUUID": str(uuid.uuid1())}, "invalidTaskUUID", "taskUUID"),
    ({"model": "acme:nope@1"}, "unknownModel", "model"),
    ({"model": 5}, "invalidModel", "model"),
    ({"messages": []}, "invalidMessages", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalidRole", "messages.0.role"),
    ({"messages": [{"role": "user", "content": ""}]}, "invalidContent", "messages.0.content"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        "invalidMessages",
        "messages.1.role",
    ),
    ({"deliveryMethod": "carrier-pigeon"}, "invalidDeliveryMethod", "deliveryMethod"),
    ({"numberResults": 5}, "invalidNumberResults", "numberResults"),
    ({"numberResults": 0}, "invalidNumberResults", "numberResults"),
    ({"numberResults": "2"}, "invalidNumberResults", "numberResults"),
    ({"seed": -1}, "invalidSeed", "seed"),
    ({"seed": 2**63 - 1, "numberResults": 2}, "invalidSeed", "seed"),
    ({"includeCost": "yes"}, "invalidIncludeCost", "includeCost"),
    ({"includeUsage": 1}, "invalidIncludeUsage", "includeUsage"),
    ({"webhookURL": "ftp://example.com/hook"}, "invalidWebhookURL", "webhookURL"),
    ({"inputs": {"images": []}}, "invalidImages", "inputs.images"),
    ({"settings": {"systemPrompt": ""}}, "invalidSystemPrompt", "settings.systemPrompt"),
    ({"settings": {"temperature": 2.5}}, "invalidTemperature", "settings.temperature"),
    ({"settings": {"topP": -0.1}}, "invalidTopP", "settings.topP"),
    ({"settings": {"maxTokens": 0}}, "invalidMaxTokens", "settings.maxTokens"),
    ({"settings": {"maxTokens": 128_001}}, "invalidMaxTokens", "settings.maxTokens"),
    ({"settings": {"stopSequences": "END"}}, "invalidStopSequences", "settings.stopSequences"),
    ({"settings": {"frequencyPenalty": 3}}, "invalidFrequencyPenalty", "settings.frequencyPenalty"),
    ({"settings": {"presencePenalty": -3}}, "invalidPresencePenalty", "settings.presencePenalty"),
    ({"settings": {"thinkingLevel": "extreme"}}, "invalidThinkingLevel", "settings.thinkingLevel"),
    (
        {"tools": [{"type": "function", "name": "bad name", "schema": {}}]},
        "invalidName",
        "tools.0.name",
    ),
    ({"tools": [{"type": "function", "name": "f"}]}, "missingSchema", "tools.0.schema"),
    ({"toolChoice": {"type": "tool"}}, "invalidToolChoice", "toolChoice"),
    ({"toolChoice": {"type": "auto"}}, "invalidToolChoice", "toolChoice"),
    ({"outputFormat": "XML"}, "invalidOutputFormat", "outputFormat"),
    ({"jsonSchema": {"type": "object"}}, "invalidJsonSchema", "jsonSchema"),
    ({"providerSettings": []}, "invalidProviderSettings", "providerSettings"),
]


@pytest.mark.parametrize(
    ("fields", "code", "parameter"),
    INVALID_CASES,
    ids=[case[1] + ":" + case[2] for case in INVALID_CASES],
)
def test_invalid_fields_are_rejected_with_code_and_parameter(
    api: Api, fields: dict, code: str, parameter: str
) -> None:
    task = text_task()
    task.update(fields)
    error = _only_error(api.post([task]))
    assert error["code"] == code
    assert error["parameter"] == parameter
    assert error["taskType"] == "textInference"
    assert error["message"]


@pytest.mark.parametrize("field", ["taskUUID", "model", "messages"])
def test_missing_required_fields(api: Api, field: str) -> None:
    task = text_task()
    del task[field]
    error = _only_error(api.post([task]))
    assert error["code"] == "missing" + field[0].upper() + field[1:]
    assert error["parameter"] == field


def test_unknown_fields_are_named(api: Api) -> None:
    error = _only_error(api.post([text_task(colour="blue")]))
    assert error == {**error, "code": "unknownParameter", "parameter": "colour"}
    error = _only_error(api.post([text_task(settings={"temprature": 1})]))
    assert error["code"] == "unknownParameter"
    assert error["parameter"] == "settings.temprature"
    assert "temperature" in error["message"]  # the message lists what is allowed


def test_unknown_task_type(api: Api) -> None:
    error = _only_error(api.post([{"taskType": "imageInference", "taskUUID": str(uuid.uuid4())}]))
    assert error["code"] == "invalidTaskType"
    assert error["parameter"] == "taskType"


def test_max_tokens_over_the_models_output_limit(api: Api) -> None:
    error = _only_error(
        api.post([text_task(model="taskwire:tiny@1", settings={"maxTokens": 2000})])
    )
    assert error["code"] == "invalidMaxTokens"
    assert error["parameter"] == "settings.maxTokens"
    assert "1000" in error["message"]
    response = api.post([text_task(model="taskwire:tiny@1", settings={"maxTokens": 1000})])
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalidRequestBody"),
        (b"", "invalidRequestBody"),
        (b"[]", "invalidRequestBody"),
        (b"42", "invalidRequestBody"),
        (b"[" * 100_000 + b"]" * 100_000, "invalidRequestBody"),
        (b"\xff\xfe", "invalidRequestBody"),
    ],
    ids=["malformed", "empty", "empty-array", "number", "deeply-nested", "not-utf8"],
)
def test_malformed_bodies_get_400_never_500(api: Api, body: bytes, code: str) -> None:
    response = api.http.post(
        "/v1",
        content=body,
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == code


def test_body_over_the_limit_gets_413(api: Api) -> None:
    huge = text_task("x" * (11 * 1024 * 1024))
    response = api.post([huge])
    assert response.status_code == 413
    assert response.json()["errors"][0]["code"] == "payloadTooLarge"


def test_missing_and_invalid_api_keys(api: Api) -> None:
    response = api.http.post("/v1", json=[text_task()])
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "missingApiKey"
    response = api.post([text_task()], key="wrong-key")
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "invalidApiKey"
    response = api.http.post(
        "/v1", json=[{"taskType": "authentication", "apiKey": "nope"}, text_task()]
    )
    assert response.status_code == 401


# --- idempotency and ownership


def test_resubmitting_the_same_body_starts_no_new_work(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    task = text_task(f"Idempotent {marker}", seed=11)
    first = api.post([task])
    second = api.post([task])
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    calls = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()
    assert calls["count"] == 1
    # async re-submit of a finished task answers with its current state
    again = api.post([{**task}])
    assert again.json()["data"][0]["status"] == "success"


def test_resubmitting_with_a_different_body_conflicts(api: Api) -> None:
    task = text_task("Original")
    assert api.post([task]).status_code == 200
    changed = {**task, "messages": [{"role": "user", "content": "Changed"}]}
    response = api.post([changed])
    assert response.status_code == 409
    error = response.json()["errors"][0]
    assert error["code"] == "conflictTaskUUID"
    assert error["taskUUID"] == task["taskUUID"]


def test_another_key_cannot_see_a_task(api: Api) -> None:
    task = text_task("Mine", deliveryMethod="async")
    api.post([task])
    api.wait_final(task["taskUUID"])
    response = api.get_response(task["taskUUID"], key=KEY_B)
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "taskFailedOrNotFound"
    # and the same taskUUID is free for the other key: a separate task
    response = api.post([task], key=KEY_B)
    assert response.status_code == 200
    assert response.json()["data"][0]["status"] == "processing"


def test_get_response_for_unknown_task(api: Api) -> None:
    response = api.get_response(str(uuid.uuid4()))
    assert response.status_code == 404
    error = response.json()["errors"][0]
    assert error["code"] == "taskFailedOrNotFound"
    assert error["taskType"] == "getResponse"


def test_unknown_paths_answer_in_the_protocol_error_format(api: Api) -> None:
    response = api.http.get("/v2/nothing")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "notFound"
    response = api.http.get("/v1")
    assert response.status_code == 405


def test_api_key_never_appears_in_logs(api: Api, stack) -> None:
    api.post([text_task("log check")])
    api.post([text_task()], key="wrong-key-that-must-not-be-logged")
    for process in [stack.api, *stack.workers, stack.sim]:
        text = process.log_text()
        assert KEY_A not in text
        assert "wrong-key-that-must-not-be-logged" not in text


def test_completion_log_line_has_the_operational_fields(api: Api, stack) -> None:
    task = text_task("log fields", numberResults=2)
    api.post([task])
    lines = wait_for_log(
        stack.workers[0].log_path,
        lambda line: (
            line.get("task_uuid") == task["taskUUID"]
            and line["event"] in ("result.finished", "task.finished")
        ),
        count=3,
    )
    results = [line for line in lines if line["event"] == "result.finished"]
    assert len(results) == 2
    for line in results:
        for field in (
            "model",
            "route",
            "attempts",
            "latency_ms",
            "prompt_tokens",
            "completion_tokens",
            "status",
        ):
            assert line[field] is not None, field
        assert line["model"] == MODEL and line["route"] == "simulator"
    [summary] = [line for line in lines if line["event"] == "task.finished"]
    assert summary["status"] == "success" and summary["results"] == 2


def test_logs_are_json_lines_off_a_terminal(stack) -> None:
    raw = stack.workers[0].log_text().splitlines()
    assert raw
    parsed = [json.loads(line) for line in raw if line.startswith("{")]
    assert len(parsed) >= len(raw) - 2  # at most a stray non-JSON line from the interpreter
