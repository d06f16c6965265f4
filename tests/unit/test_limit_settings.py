"""Per-key limit overrides from settings, and the 429s that name the limit hit."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.errors import QueueLimitExceeded, RateLimited, TokenLimitExceeded
from core.limits import LimitHit
from core.settings import Settings
from service.auth import key_digest, owner_id
from service.limits import limit_error, override_owners, read_cost

KEY = "tw-unit-key-0123456789"


def settings(limits: dict[str, dict[str, float]]) -> Settings:
    return Settings(api_keys=[KEY], key_limits=limits)  # type: ignore[arg-type]


def test_overrides_by_key_are_hashed_to_the_owner_id() -> None:
    owners = override_owners(settings({KEY: {"rps": 5}, "00112233aabbccdd": {"burst": 2}}))
    assert set(owners) == {owner_id(key_digest(KEY)), "00112233aabbccdd"}
    assert owners[owner_id(key_digest(KEY))].rps == 5


def test_a_name_that_is_neither_a_key_nor_an_owner_id_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="neither an accepted API key") as refused:
        override_owners(settings({"some-other-secret-key": {"rps": 5}}))
    assert "some-other-secret-key" not in str(refused.value)


def test_unknown_or_invalid_override_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        settings({"00112233aabbccdd": {"requests_per_second": 5}})
    with pytest.raises(ValidationError):
        settings({"00112233aabbccdd": {"rps": -1}})


def test_each_limit_has_its_code_and_names_itself() -> None:
    cases = [
        (LimitHit("rate", 2, 0.3), RateLimited, "rateLimitExceeded", "request rate limit"),
        (LimitHit("read_rate", 5, 0.1), RateLimited, "rateLimitExceeded", "read rate limit"),
        (LimitHit("tokens", 1000, 42.5), TokenLimitExceeded, "tokenLimitExceeded", "tokens per"),
        (LimitHit("queued", 10, 5), QueueLimitExceeded, "queueLimitExceeded", "queued-results"),
    ]
    for hit, kind, code, named in cases:
        error = limit_error(hit)
        assert isinstance(error, kind) and error.code == code and error.status == 429
        assert named in error.message and f"{hit.limit:g}" in error.message
        assert error.retry_after is not None and error.retry_after >= max(hit.retry_after_s, 1)


def test_reads_cost_one_token_each() -> None:
    tasks = [
        {"taskType": "getResponse"},
        {"taskType": "imageUpload"},
        {"taskType": "ping"},
        {"taskType": "textInference"},
        "not a task",
    ]
    assert read_cost(tasks) == 2


def test_read_cost_ignores_task_types_that_are_not_strings() -> None:
    from service.limits import read_cost

    tasks = [
        {"taskType": ["getResponse"]},
        {"taskType": {"a": 1}},
        {"taskType": "getResponse"},
        {"taskType": "imageUpload"},
        "not a task",
    ]
    assert read_cost(tasks) == 2
