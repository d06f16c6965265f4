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
    [item] = api.post([text_task(includeCost=False)]).json()["data"]
    assert "usage" not in item and "cost" not in item
    assert "reasoningContent" not in item and "toolCalls" not in item


def test_cost_is_included_by_default(api: Api) -> None:
    # Runware's page: includeCost "boolean default: true"
    [item] = api.post([text_task("Default cost")]).json()["data"]
    assert item["cost"] > 0
    assert "usage" not in item  # includeUsage defaults to false


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
    ({"taskUUID": str(uuid.uuid1())}, "invalidTaskUUID", "taskUUID"),
    ({"model": "acme:nope@1"}, "unknownModel", "model"),
    ({"model": 5}, "invalidModel", "model"),
    ({"messages": []}, "invalidMessages", "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalidRole", "messages.0.role"),
    ({"messages": [{"role": "user", "content": ""}]}, "invalidContent", "messages.0.content"),
    (
        {
            "model": "taskwire:tiny@1",  # its route does not continue an assistant prefill
            "settings": {"maxTokens": 100},
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        },
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
    ({"tools": [{"type": "function", "name": "f"}]}, "invalidTools", "tools.0"),
    (
        {"settings": {"tools": [{"type": "function", "function": {"name": "bad name"}}]}},
        "invalidName",
        "settings.tools.0.function.name",
    ),
    ({"settings": {"toolChoice": {"type": "any"}}}, "invalidToolChoice", "settings.toolChoice"),
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


# --- Runware page shapes: tools, taskUUID spelling, prefill, context window, capabilities


def _sim_last_call(stack, marker: str) -> dict:
    calls = httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()
    assert calls["count"] >= 1
    return calls["last"]["body"]


@pytest.mark.parametrize("where", ["tools", "settings.tools"])
def test_openai_shaped_tools_reach_the_upstream_as_one_form(api: Api, stack, where: str) -> None:
    marker = uuid.uuid4().hex
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    fields = {"tools": [tool]} if where == "tools" else {"settings": {"tools": [tool]}}
    [item] = api.post([text_task(f"{marker} call get_weather city=Oslo", **fields)]).json()["data"]
    assert item["toolCalls"][0]["name"] == "get_weather"
    assert item["toolCalls"][0]["input"] == {"city": "Oslo"}
    assert _sim_last_call(stack, marker)["tools"] == [tool]


def test_task_uuid_in_capitals_is_echoed_and_is_one_task(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    lower = str(uuid.uuid4())
    upper = lower.upper()
    task = text_task(f"Spelling {marker}", seed=4, taskUUID=upper)
    response = api.post([task])
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    assert item["taskUUID"] == upper and item["status"] == "success"
    # the lower-case spelling is the same task: same body, no new work, its own spelling back
    again = api.post([{**task, "taskUUID": lower}])
    assert again.status_code == 200, again.text
    assert again.json()["data"][0]["taskUUID"] == lower
    assert again.json()["data"][0]["text"] == item["text"]
    assert (
        httpx.get(f"{stack.sim_url}/_sim/calls", params={"contains": marker}).json()["count"] == 1
    )
    [found] = api.get_response(lower).json()["data"]
    assert found["taskUUID"] == lower and found["text"] == item["text"]
    # the stream link of either spelling opens the one task's events
    for spelling in (upper, lower):
        [shown] = api.get_response(spelling).json()["data"]
        events = httpx.get(shown["links"]["stream"], timeout=10)
        assert events.status_code == 200, events.text
        assert lower in events.text.lower() and "[DONE]" in events.text
    upper_link = api.get_response(lower).json()["data"][0]["links"]["stream"].replace(lower, upper)
    events = httpx.get(upper_link, timeout=10)
    assert events.status_code == 200 and f'"taskUUID":"{upper}"' in events.text
    # a different body under either spelling conflicts
    changed = {**task, "taskUUID": lower, "messages": [{"role": "user", "content": "other"}]}
    conflict = api.post([changed])
    assert conflict.status_code == 409
    assert conflict.json()["errors"][0]["taskUUID"] == lower
    # URL paths take any spelling too (the task exists; it has no webhook)
    response = api.http.post(
        f"/v1/tasks/{upper}/webhooks/redeliver", headers={"Authorization": f"Bearer {KEY_A}"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "invalidWebhookURL"


def test_an_assistant_prefill_is_continued(api: Api, stack) -> None:
    marker = uuid.uuid4().hex
    prompt = f"Prefill {marker}"
    [whole] = api.post([text_task(prompt, seed=9)]).json()["data"]
    words = whole["text"].split(" ")
    prefill = " ".join(words[:3])
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": prefill},
    ]
    response = api.post([text_task(seed=9, messages=messages)])
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]
    # the answer carries on from the prefill: prefill + continuation reads as the answer to
    # the prompt alone, continued for as many new tokens as an answer has
    assert item["text"].startswith(" " + " ".join(words[3:]) + " ")
    assert (prefill + item["text"]).startswith(whole["text"])
    assert len(item["text"].split()) == len(words)
    sent = _sim_last_call(stack, marker)["messages"]
    assert sent[-1] == {"role": "assistant", "content": prefill}


def test_a_prompt_over_the_context_window_is_refused(api: Api) -> None:
    # taskwire:tiny@1 has an 8,000-token window: 7,500 words cannot fit with 1,000 more
    long = " ".join(["word"] * 7_500)
    task = text_task(long, model="taskwire:tiny@1", settings={"maxTokens": 1000})
    error = _only_error(api.post([task]))
    assert error["code"] == "contextLengthExceeded"
    assert error["parameter"] == "messages"
    assert "8000" in error["message"]
    # the same prompt with a smaller maxTokens fits (no refusal of a prompt that fits)
    fits = text_task(
        " ".join(["word"] * 6_000),
        model="taskwire:tiny@1",
        settings={"maxTokens": 1000},
        deliveryMethod="async",
    )
    assert api.post([fits]).status_code == 200


def test_models_list_says_what_the_model_can_do(api: Api) -> None:
    response = api.http.get("/v1/models", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 200
    models = {model["id"]: model for model in response.json()["data"]}
    main = models[MODEL]
    assert main["capabilities"] == {
        "imageInput": True,
        "tools": True,
        "structuredOutput": True,
        "thinkingLevels": ["off", "low", "medium", "high"],
        "assistantPrefill": True,
    }
    assert main["pricing"]["cached_input"] == 0.08
    assert models["taskwire:tiny@1"]["capabilities"]["assistantPrefill"] is False


# --- never a 500 for client input


def _raw_post(api: Api, body: bytes, path: str = "/v1") -> httpx.Response:
    return api.http.post(
        path,
        content=body,
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "body",
    [
        b'[{"taskType":"\\ud800"}]',
        b'[{"taskType":"getResponse","taskUUID":"\\udfff"}]',
        b'[{"taskType":"textInference","taskUUID":"x","model":"\\udc00\\ud800"}]',
    ],
    ids=["task-type", "task-uuid", "reversed-pair"],
)
def test_lone_surrogates_are_refused_as_json(api: Api, body: bytes) -> None:
    response = _raw_post(api, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["errors"][0]["code"] == "invalidRequestBody"


@pytest.mark.parametrize("field", ["providerSettings", "jsonSchema", "tools"])
def test_over_deep_free_form_objects_are_refused(api: Api, field: str) -> None:
    deep = "{}"
    for _ in range(300):
        deep = '{"a":' + deep + "}"
    task = text_task(outputFormat="JSON") if field == "jsonSchema" else text_task()
    body = json.dumps([task])[:-2]
    if field == "tools":
        body += f', "tools": [{{"type": "function", "name": "f", "schema": {deep}}}]}}]'
    else:
        body += f', "{field}": {deep}}}]'
    response = _raw_post(api, body.encode())
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["parameter"] == ("tools.0.schema" if field == "tools" else field)
    assert "deeper than 64" in error["message"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(api: Api, number: str) -> None:
    body = json.dumps([text_task()])[:-2] + f', "providerSettings": {{"x": {number}}}}}]'
    response = _raw_post(api, body.encode())
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "invalidRequestBody"


def test_a_trailing_slash_is_served_or_a_json_404(api: Api) -> None:
    response = _raw_post(api, b'[{"taskType":"ping","ping":true}]', path="/v1/")
    assert response.status_code == 200, response.text
    assert response.json() == {"data": [{"taskType": "ping", "pong": True}]}
    response = api.http.get("/v1/models/", headers={"Authorization": f"Bearer {KEY_A}"})
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "notFound"


def test_a_header_key_that_differs_from_the_authentication_task_is_401(api: Api) -> None:
    response = api.post([{"taskType": "authentication", "apiKey": KEY_B}, text_task()])
    assert response.status_code == 401
    error = response.json()["errors"][0]
    assert error == {**error, "code": "invalidApiKey", "parameter": "apiKey"}


def test_query_parameter_errors_name_the_parameter(api: Api) -> None:
    response = api.http.post(
        f"/v1/tasks/{uuid.uuid4()}/webhooks/redeliver",
        params={"resultIndex": 9},
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error == {**error, "code": "invalidResultIndex", "parameter": "resultIndex"}
    response = api.http.post(
        f"/v1/tasks/{uuid.uuid4()}/webhooks/redeliver",
        params={"resultIndex": "two"},
        headers={"Authorization": f"Bearer {KEY_A}"},
    )
    assert response.json()["errors"][0]["parameter"] == "resultIndex"
