"""What a job is given when it runs: a typed context, not arq's `ctx` dict.

arq calls job functions with a dict of string keys; the seam module (worker/queue.py) turns
that into a `JobContext` before taskwire code sees it, so jobs name what they use (the
process's dependencies, the job's identity, what the claim prefetched) and nothing else
depends on how arq spells its keys.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.jobs import JobInput

if TYPE_CHECKING:
    from worker.jobs import WorkerDeps


@dataclass(slots=True)
class StopSignal:
    """Raised for a running job that must stop: its task was cancelled (the worker heard it
    on the cancel channel) or its deadline passed. The first reason given is kept."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    code: str | None = None  # the error code the result is recorded with

    def request(self, code: str) -> None:
        if self.code is None:
            self.code = code
        self.event.set()


@dataclass(slots=True)
class Claim:
    """What the claim that leased a job knew of it, and how the worker tells it to stop."""

    job_class: str  # the scheduler's class: "i", "b" or "h"
    job_input: JobInput | None  # the task record's fields (results), if read
    prefetched: bool  # whether job_input was read at claim time
    stop: StopSignal = field(default_factory=StopSignal)


@dataclass(slots=True)
class JobContext:
    deps: WorkerDeps
    job_id: str
    job_try: int  # 1 on the first run; a re-run after a crash or hand-back counts up
    claim: Claim
    # Set by a job that settled itself (its own script removed its lease and arq keys),
    # so the runner skips arq's bookkeeping for it.
    settled: bool = field(default=False)

    @property
    def job_class(self) -> str:
        return self.claim.job_class

    @property
    def stop(self) -> StopSignal:
        """Set when the job must stop (cancelled, or past its deadline)."""
        return self.claim.stop

    def take_prefetched(self) -> tuple[bool, JobInput | None]:
        """(whether the claim read the task record, what it read), once."""
        found = (self.claim.prefetched, self.claim.job_input)
        self.claim.prefetched = False
        self.claim.job_input = None
        return found
