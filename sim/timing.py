"""Pacing of simulated output (time to first token, tokens per second) and simulated faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from sim.scenario import Scenario


class _Flush:
    def __repr__(self) -> str:
        return "FLUSH"


# Yielded by event generators where output must leave now (before a pause, a hang or a
# drop). Events between flushes go out in one write: an unthrottled simulator sends its
# whole answer at once, the way a real server's tokens coalesce when they come that fast.
FLUSH = _Flush()


class SimulatedDrop(Exception):
    """Raised inside a streaming body: the server drops the connection mid-response."""


async def hang_forever() -> None:
    await asyncio.Event().wait()


class Pacer:
    """Sleeps so tokens leave at the scenario's rate, measured from the first token (no drift)."""

    def __init__(self, scenario: Scenario):
        self._scenario = scenario
        self._start = 0.0
        self._count = 0

    async def first(self) -> None:
        if self._scenario.hang:
            await hang_forever()
        if self._scenario.ttft_ms > 0:
            await asyncio.sleep(self._scenario.ttft_ms / 1000)
        self._start = time.perf_counter()

    async def step(self, emitted: int) -> AsyncIterator[_Flush]:
        """After the `emitted`-th step of output: drop the connection or go silent if the
        scenario says so (flushing what was produced first), else wait until the next
        token is due. Yields FLUSH where output must leave now."""
        scenario = self._scenario
        if scenario.drop_after is not None and emitted >= scenario.drop_after:
            yield FLUSH
            raise SimulatedDrop
        if scenario.hang_after is not None and emitted >= scenario.hang_after:
            yield FLUSH
            await hang_forever()
        if scenario.tps > 0:
            yield FLUSH
        await self.next()

    async def next(self) -> None:
        self._count += 1
        if self._scenario.tps <= 0:
            # Yield so one fast stream cannot starve the others on the loop.
            if self._count % 16 == 0:
                await asyncio.sleep(0)
            return
        due = self._start + self._count / self._scenario.tps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
