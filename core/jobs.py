"""What a job reads when it starts: its task's stored request and its own result slot.

Shared by the claim script (which prefetches these fields) and the task store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class JobInput:
    """What a result job needs: the stored request and whether its result is already final."""

    request: dict[str, Any]
    seed: int
    created_ms: float
    existing_result: dict[str, Any] | None
    # The task's cancel mark (an error code, e.g. "taskCancelled"), set by the cancel script
    # while this result's job was claimed: the job must not call upstream.
    cancel: str | None = None
    # The trace context stored with the task (core/tracing.py's carrier), if tracing was on.
    trace: str | None = None


# What a job reads of its task record (then its own result slot, "r:<index>").
JOB_INPUT_FIELDS = ("req", "seeds", "created", "cancel", "tc")


def job_input_from(fields: Sequence[bytes | None], index: int) -> JobInput | None:
    """A JobInput from HMGET of JOB_INPUT_FIELDS + the result slot (None: task gone)."""
    req, seeds, created, cancel, trace, existing = fields
    if req is None or seeds is None or created is None:
        return None
    return JobInput(
        request=json.loads(req),
        seed=int(json.loads(seeds)[index]),
        created_ms=float(created),
        existing_result=json.loads(existing) if existing is not None else None,
        cancel=cancel.decode() if isinstance(cancel, bytes) else cancel,
        trace=trace.decode() if isinstance(trace, bytes) else trace,
    )
