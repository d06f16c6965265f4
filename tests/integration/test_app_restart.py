"""One application object started twice (an embedder restarting it, a test client entered
twice): the fast doors of POST /v1 and the task socket are made from the startup that uses
them, never from an earlier one whose Redis clients and event hub are closed; and a
startup's shutdown closes its Redis connections (none left to the garbage collector)."""

from __future__ import annotations

from core.settings import Settings
from devenv.redis import RedisServer
from service import api
from service.app import create_app
from service.ws import socket_door


async def test_each_startup_makes_its_own_doors(redis_server: RedisServer) -> None:
    app = create_app(Settings(api_keys=["k"], redis_url=redis_server.url))  # type: ignore[call-arg]
    doors = []
    for _ in range(2):
        async with app.router.lifespan_context(app):
            made = (api.task_door(app), socket_door(app))
            assert made[0] is not None and made[1] is not None
            assert (api.task_door(app), socket_door(app)) == made  # made once per startup
            doors.append(made)
        assert app.state.task_door is None and app.state.socket_door is None
    assert doors[0][0] is not doors[1][0] and doors[0][1] is not doors[1][1]
