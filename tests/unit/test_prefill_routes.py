"""A task ending with an assistant prefill runs only on routes that continue one."""

from __future__ import annotations

from typing import Any

import pytest

from core.catalog import Catalog, ModelSpec
from core.protocol import TextInferenceTask
from worker.inference import Inference

MODEL = {
    "air": "m:x@1",
    "name": "X",
    "context_window": 1000,
    "max_output_tokens": 100,
    "price": {"input": 1, "output": 2},
    "routes": [
        {
            "name": "responses",
            "adapter": "openai-responses",
            "base_url": "http://127.0.0.1:1/v1",
            "model": "x",
            "api_key_env": "X_KEY",
        },
        {
            "name": "chat",
            "adapter": "openai-chat",
            "base_url": "http://127.0.0.1:1/v1",
            "model": "x",
            "api_key_env": "X_KEY",
        },
    ],
}


class _Healthy:
    async def cooling(self, _model: ModelSpec) -> dict[str, float]:
        return {}


def _inference(model: ModelSpec) -> Inference:
    adapters: dict[str, Any] = {"openai-chat": object(), "openai-responses": object()}
    return Inference(
        Catalog({model.air: model}),
        client=None,  # type: ignore[arg-type]
        adapters=adapters,
        policy=None,  # type: ignore[arg-type]
        health=_Healthy(),  # type: ignore[arg-type]
        images=None,  # type: ignore[arg-type]
        environ={"X_KEY": "k"},
    )


async def test_prefill_tasks_skip_routes_that_do_not_continue_one() -> None:
    model = ModelSpec.model_validate(MODEL)
    inference = _inference(model)
    task = TextInferenceTask.model_validate(
        {
            "taskType": "textInference",
            "taskUUID": "3f2b6c1e-7d4a-4e9b-9a1c-2b7e5d8f0a13",
            "model": model.air,
            "messages": [
                {"role": "user", "content": "Count"},
                {"role": "assistant", "content": "One,"},
            ],
        }
    )
    everything = await inference.candidates(model)
    assert [route.name for route, _ in everything] == ["responses", "chat"]
    only = await inference.candidates(model, prefill=task.ends_with_prefill)
    assert [route.name for route, _ in only] == ["chat"]


async def test_no_route_for_a_prefill_stops_the_result() -> None:
    spec = {**MODEL, "routes": MODEL["routes"][:1]}
    model = ModelSpec.model_validate(spec)
    with pytest.raises(Exception, match="No upstream route"):
        await _inference(model).candidates(model, prefill=True)
