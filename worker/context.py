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

# The stop code of a run whose lease was lost (another claim holds its job). Never recorded:
# such a run is dropped without a trace.
LEASE_LOST = "leaseLost"


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


@dataclass(slots=True, eq=False)
class Claim:
    """What the claim that leased a job knew of it, and how the worker tells it to stop.
    One per run: a job claimed again (after its lease lapsed) gets a new one."""

    job_class: str  # the scheduler's class: "i", "b" or "h"
    job_input: JobInput | None  # the task record's fields (results), if read
    prefetched: bool  # whether job_input was read at claim time
    token: str = ""  # the claim's token (core/scheduler.py); '' for a run without a claim
    # What the claim read for arq's run_job (worker/queue.py): the job's serialised payload
    # (None: the key is gone) and this run's try number (0: not read by the claim).
    payload: bytes | None = None
    job_try: int = 0
    stop: StopSignal = field(default_factory=StopSignal)
    # Set by a job that settled itself (its own script removed its lease and arq keys),
    # so the runner skips arq's bookkeeping for it.
    settled: bool = False
    # Set when a script said the lease is lost (another claim holds the job, or another run
    # settled it): the run stops and leaves no trace, arq's bookkeeping included.
    lost: bool = False

    def lose(self) -> None:
        self.lost = True
        self.stop.request(LEASE_LOST)


@dataclass(slots=True)
class JobContext:
    deps: WorkerDeps
    job_id: str
    job_try: int  # 1 on the first run; a re-run after a crash or hand-back counts up
    claim: Claim

    @property
    def settled(self) -> bool:
        """Whether the job settled itself (its own script removed its lease and arq keys),
        so the runner skips arq's bookkeeping for it."""
        return self.claim.settled

    @settled.setter
    def settled(self, value: bool) -> None:
        self.claim.settled = value

    @property
    def token(self) -> str:
        """The claim's token: what shows a script the lease is still this run's."""
        return self.claim.token

    @property
    def lease_lost(self) -> bool:
        """Another claim holds the job now: this run must leave no trace."""
        return self.claim.lost

    def lose_lease(self) -> None:
        """A script refused this run (lease lost): stop it and skip arq's bookkeeping."""
        self.claim.lose()

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
