"""Backoff and Retry-After handling."""

from __future__ import annotations

import email.utils
import time

from worker.providers.base import parse_retry_after
from worker.retry import RetryPolicy


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=0.5, cap_s=2.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 2.0)]:
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays)


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay(2, None) is not None
    assert policy.delay(3, None) is None


def test_retry_after_is_obeyed_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=5, retry_after_cap_s=30)
    delay = policy.delay(1, 10.0)
    assert delay is not None and 10.0 <= delay <= 10.25
    assert policy.delay(1, 31.0) is None


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    parsed = parse_retry_after(future)
    assert parsed is not None and 18 <= parsed <= 21
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after(past) == 0.0
