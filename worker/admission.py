"""How much new work a worker takes: only what its event loop can run without falling behind.

A worker with free slots used to claim everything due. Its jobs mostly wait on the network,
but each costs a few milliseconds of CPU, so a deep enough backlog saturated the loop: every
running job slowed down (an interactive result beside a batch flood took a second instead of
30 ms) and the backlog sat in the worker, where nobody else could see or shed it.

The loop's lag (how late a short timer fires) says when it is saturated. Above `batch_lag_s`
the worker takes no new batch work (async results, webhook deliveries), so interactive work
keeps a responsive loop; above `interactive_lag_s` it takes nothing new. Work it does not
take stays queued in Redis, where other workers can claim it and the API can see the wait
and refuse new interactive work with 503 serverBusy instead of letting latency grow.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

ALL_CLASSES = "ibh"
INTERACTIVE_ONLY = "i"


@dataclass(slots=True)
class LagMonitor:
    """Measures the event loop's lag every `interval_s`; `lag_s` is a smoothed value that
    follows a rise at once and a fall gradually."""

    batch_lag_s: float = 0.010
    interactive_lag_s: float = 0.050
    interval_s: float = 0.010
    batch_step: int = 16  # batch jobs taken per look at the lag
    lag_s: float = 0.0

    async def run(self) -> None:
        """Forever (the worker runs it beside its loop and cancels it when stopping)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            self.observe(loop.time() - started - self.interval_s)

    def observe(self, lag: float) -> None:
        lag = max(lag, 0.0)
        # up at once (a saturated loop must stop taking work now), down by a quarter a tick
        self.lag_s = lag if lag > self.lag_s else self.lag_s * 0.75 + lag * 0.25

    def classes(self) -> str:
        """The job classes a claim may take now ("" for none)."""
        if self.lag_s > self.interactive_lag_s:
            return ""
        if self.lag_s > self.batch_lag_s:
            return INTERACTIVE_ONLY
        return ALL_CLASSES
