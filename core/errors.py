"""One error tree for taskwire: Runware error codes, HTTP statuses and retry semantics."""

from __future__ import annotations

from typing import Any, ClassVar

# Codes of results that were stopped rather than failed (docs/protocol.md, "Cancelling").
TASK_CANCELLED = "taskCancelled"  # a client cancelled the task (or disconnected, opted in)
TASK_EXPIRED = "taskExpired"  # the task's cancelAfter deadline passed


class TaskwireError(Exception):
    """Base of every error taskwire reports to a client.

    `code` is the protocol's camelCase error code, `status` the HTTP status the service uses
    when this error decides the response, `parameter` the dotted path of the offending field.
    """

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "invalidRequest"
    # Seconds a client should wait before trying again (sent as Retry-After), if it applies.
    retry_after: float | None = None

    def __init__(self, message: str, *, code: str | None = None, parameter: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.parameter = parameter

    def to_item(self, **scope: Any) -> dict[str, Any]:
        """The error as a protocol `errors[]` item, scoped to a task when given."""
        item: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            item["parameter"] = self.parameter
        item.update({key: value for key, value in scope.items() if value is not None})
        return item


# --- client errors (the service answers with these)


class InvalidRequest(TaskwireError):
    status = 400


class AuthenticationFailed(TaskwireError):
    status = 401
    default_code = "invalidApiKey"


class TaskNotFound(TaskwireError):
    status = 404
    default_code = "taskFailedOrNotFound"


class TaskConflict(TaskwireError):
    status = 409
    default_code = "conflictTaskUUID"


class PayloadTooLarge(TaskwireError):
    status = 413
    default_code = "payloadTooLarge"


class RateLimited(TaskwireError):
    """A per-key limit was hit; the message names the limit, Retry-After says when to retry
    (whole seconds, at least 1)."""

    status = 429
    default_code = "rateLimitExceeded"  # the request-rate buckets

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = 1):
        super().__init__(message, code=code)
        self.retry_after = max(retry_after, 1)


class TokenLimitExceeded(RateLimited):
    """The key's upstream tokens for this minute are spent."""

    default_code = "tokenLimitExceeded"


class QueueLimitExceeded(RateLimited):
    """The key already has its quota of results waiting to run."""

    default_code = "queueLimitExceeded"


class ServiceUnavailable(TaskwireError):
    status = 503
    default_code = "serviceUnavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 1):
        super().__init__(message, code=code)
        self.retry_after = retry_after


# --- upstream errors (providers raise these at their boundary; results carry their code)


class UpstreamError(TaskwireError):
    """An upstream call failed. `retryable` says whether another attempt may succeed."""

    status = 502
    default_code = "inferenceError"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, code=code)
        self.http_status = http_status
        self.retry_after = retry_after


class UpstreamRateLimited(UpstreamError):
    default_code = "providerRateLimit"
    retryable = True


class UpstreamTimeout(UpstreamError):
    default_code = "timeoutProvider"
    retryable = True


class UpstreamUnreachable(UpstreamError):
    default_code = "noAvailableServer"
    retryable = True


class UpstreamServerError(UpstreamError):
    default_code = "inferenceError"
    retryable = True


class UpstreamStreamBroken(UpstreamError):
    """The upstream closed or garbled its stream part-way through."""

    default_code = "inferenceError"
    retryable = True


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (4xx other than 429): retrying cannot help."""

    default_code = "inferenceError"
    retryable = False
