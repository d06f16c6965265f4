"""Backoff between upstream attempts: capped exponential with jitter, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    base_s: float = 0.25
    cap_s: float = 8.0
    retry_after_cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to stop retrying.

        A Retry-After from the upstream is obeyed (plus a little jitter so a herd of
        workers does not return at the same instant) unless it exceeds `retry_after_cap_s`,
        in which case waiting is pointless for a live request and we stop.
        """
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            if retry_after > self.retry_after_cap_s:
                return None
            return retry_after + random.uniform(0, min(0.25, retry_after * 0.1 + 0.01))
        ceiling = min(self.cap_s, self.base_s * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)
