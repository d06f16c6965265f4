"""POST /v1's own door (service/api.py `task_door`): what it keeps of the framework's layers
it skips. No processes: the app is built but not started, its state stubbed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.responses import Response

from core.settings import Settings
from service import api
from service.app import create_app


def started_app(**settings: Any) -> Any:
    built = app_settings(**settings)
    app = create_app(built)
    # what the lifespan would hold; the door reads only the settings itself
    app.state.taskwire = SimpleNamespace(settings=built)
    return app


def app_settings(**settings: Any) -> Settings:
    return Settings(api_keys=["k"], **settings)  # type: ignore[arg-type]


async def test_the_door_is_made_once_per_startup() -> None:
    app = create_app(app_settings())
    assert api.task_door(app) is None  # not started: FastAPI's route answers
    app.state.taskwire = SimpleNamespace(settings=app_settings())
    door = api.task_door(app)
    assert door is not None and api.task_door(app) is door
    # another startup's state (the app started again): a door of its own
    app.state.taskwire = SimpleNamespace(settings=app_settings())
    again = api.task_door(app)
    assert again is not None and again is not door and api.task_door(app) is again


async def test_requests_reach_answer_tasks_with_the_public_origin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = started_app(public_base_url="https://api.example.com/tw/")
    seen: list[Any] = []

    async def answer(request: Any, state: Any) -> Response:
        seen.append((str(request.base_url), request.scope["route"].path, request.app))
        return api.json_response({"data": []}, 200)

    monkeypatch.setattr(api, "answer_tasks", answer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/v1", "/v1/"):
            reply = await client.post(path, content=b"[]")
            assert reply.status_code == 200 and reply.json() == {"data": []}
    assert seen == [
        ("https://api.example.com/tw/", "/v1", app),
        ("https://api.example.com/tw/", "/v1/", app),
    ]


async def test_an_unexpected_exception_is_the_apps_json_500_and_raised_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = started_app()

    async def broken(request: Any, state: Any) -> Response:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "answer_tasks", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.post("/v1", content=b"[]")
    assert answer.status_code == 500
    [error] = answer.json()["errors"]
    assert error["code"] == "internalError"
    transport = httpx.ASGITransport(app=app)  # uvicorn is told, as Starlette would tell it
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="a bug"):
            await client.post("/v1", content=b"[]")
