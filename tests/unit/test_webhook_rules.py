"""Signing compatibility, the retry schedule and the decision after each attempt."""

from __future__ import annotations

import time

import httpx
import pytest
from standardwebhooks import Webhook

from core.deliveries import DeliveryState
from core.webhooks import RetrySchedule, SecretState, new_secret, signature_header
from worker.webhooks import AttemptResult, WebhookDeliverer

SCHEDULE = RetrySchedule((0, 5, 300, 1800, 7200, 18000, 36000, 36000), jitter=0)


def deliverer() -> WebhookDeliverer:
    return WebhookDeliverer(
        deliveries=None,
        secrets=None,
        client=None,  # type: ignore[arg-type]
        schedule=SCHEDULE,
    )


def test_signatures_verify_with_the_reference_library() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = b'{"data":[{"text":"h\xc3\xa9"}]}'
    now = int(time.time())
    header = signature_header([secret], "msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": header}
    assert Webhook(secret).verify(body, headers) == {"data": [{"text": "hé"}]}
    other = new_secret()
    both = signature_header([other, secret], "msg_1", now, body)
    assert len(both.split(" ")) == 2
    Webhook(secret).verify(body, {**headers, "webhook-signature": both})
    Webhook(other).verify(body, {**headers, "webhook-signature": both})


def test_rotation_window() -> None:
    state = SecretState("new", "old", previous_until=1000.0)
    assert state.in_use(now=999) == ["new", "old"]
    assert state.in_use(now=1001) == ["new"]


def test_schedule_follows_svix_with_jitter() -> None:
    assert [SCHEDULE.delay_before(n) for n in range(1, 10)] == [
        0,
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
        None,
    ]
    jittered = RetrySchedule((0, 100), jitter=0.1)
    delays = {jittered.delay_before(2) for _ in range(50)}
    assert all(90 <= d <= 110 for d in delays) and len(delays) > 1  # type: ignore[operator]


def test_decisions() -> None:
    d = deliverer()
    start = DeliveryState()
    state, retry = d.next_state(start, AttemptResult(status=204))
    assert (state.state, retry, state.attempts) == ("delivered", None, 1)
    state, retry = d.next_state(start, AttemptResult(status=410))
    assert (state.state, retry) == ("failed", None)
    state, retry = d.next_state(start, AttemptResult(status=500))
    assert (state.state, retry, state.last_error) == ("pending", 5, "the receiver answered 500")
    state, retry = d.next_state(start, AttemptResult(status=302))
    assert "redirect" in (state.last_error or "") and retry == 5
    state, retry = d.next_state(start, AttemptResult(status=429, retry_after=60))
    assert retry == 60  # Retry-After beats the schedule's 5 s
    state, retry = d.next_state(start, AttemptResult(status=503, retry_after=10**9))
    assert retry == 36000  # within the schedule's longest wait
    state, retry = d.next_state(start, AttemptResult(error="no answer within 15 s"))
    assert retry == 5 and state.last_error == "no answer within 15 s"
    last = DeliveryState(attempts=7, cycle=7)
    state, retry = d.next_state(last, AttemptResult(status=500))
    assert (state.state, retry, state.attempts) == ("failed", None, 8)
    resent = state.resent(now=123.0)
    assert (resent.state, resent.cycle, resent.attempts) == ("pending", 0, 8)


class _Secrets:
    async def get(self, owner: str) -> SecretState:
        return SecretState(new_secret(), None, None)


class _Exploding:
    deadline_s = 1.0

    def __init__(self, exc: Exception):
        self.exc = exc

    async def request(self, *args: object, **kwargs: object) -> None:
        raise self.exc


@pytest.mark.parametrize(
    "exc", [httpx.InvalidURL("bad"), UnicodeError("idna"), RuntimeError("anything")]
)
async def test_any_failure_of_an_attempt_is_a_failed_attempt(exc: Exception) -> None:
    """Nothing an attempt raises (bar storage trouble) escapes the job and loses it."""
    d = WebhookDeliverer(
        deliveries=None,  # type: ignore[arg-type]
        secrets=_Secrets(),  # type: ignore[arg-type]
        client=_Exploding(exc),  # type: ignore[arg-type]
        schedule=SCHEDULE,
    )
    outcome = await d.attempt("http://public.test/", "msg_1", "owner", b"{}")
    assert outcome.status is None
    assert outcome.error == f"the attempt failed ({type(exc).__name__})"
    state, retry = d.next_state(DeliveryState(), outcome)
    assert (state.state, state.attempts, retry) == ("pending", 1, 5)
