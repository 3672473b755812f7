"""Our typed exceptions, and the one mapping of any failure to (status, OpenAI error body), free of HTTP so
that the batch worker files the same errors the API answers. deployments/http_errors.py turns the mapping into
responses and SSE events; anything that is not one of ours is a 500 with a request id, never a disguised 4xx.

The exceptions carry plain data (no references to clients or sockets) so they pickle across Ray hops.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("llmserve.errors")


class LLMServeError(Exception):
    status: int = 500
    type: str = "internal_error"
    code: str = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code

    def __reduce__(self):  # keep param/code across pickling (Ray re-raises remote exceptions)
        return (_rebuild, (type(self), self.message, self.param, self.code, self.retry_after_s))

    def to_error_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _rebuild(
    cls: type[LLMServeError], message: str, param: str | None, code: str, retry_after_s: int | None = None
) -> LLMServeError:
    return cls(message, param=param, code=code, retry_after_s=retry_after_s)


class InvalidRequest(LLMServeError):
    status, type, code = 400, "invalid_request_error", "invalid_value"


class AuthenticationFailed(LLMServeError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class PermissionDenied(LLMServeError):
    status, type, code = 403, "invalid_request_error", "permission_denied"


class NotFound(LLMServeError):
    status, type, code = 404, "invalid_request_error", "not_found"


class PayloadTooLarge(LLMServeError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(LLMServeError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class QuotaExceeded(LLMServeError):
    """The key's budget is spent: retrying will not help (sent with x-should-retry: false)."""

    status, type, code = 429, "insufficient_quota", "insufficient_quota"


class ServiceUnavailable(LLMServeError):
    status, type, code = 503, "service_unavailable", "service_unavailable"


class EngineError(LLMServeError):
    """The engine failed this request (recoverable: the next request may succeed)."""

    status, type, code = 502, "api_error", "engine_error"


def unwrap(exc: BaseException) -> BaseException:
    """Ray re-raises a remote exception as RayTaskError(<cls>), an instance of both classes whose
    original is in `.cause`: follow causes to our typed error if there is one."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        cause = getattr(seen, "cause", None)
        if isinstance(cause, BaseException):
            seen = cause
            continue
        if isinstance(seen, LLMServeError):
            return seen
        seen = seen.__cause__
    return exc


def typed(exc: BaseException) -> BaseException:
    """Our typed error for `exc` where there is one (unwrapping Ray, converting Serve's back-pressure and
    Redis being away)."""
    # Imported here: the foundation stays importable without loading Ray (the CLI's --help).
    from ray.serve.exceptions import BackPressureError
    from redis import exceptions as rx

    exc = unwrap(exc)
    if isinstance(exc, BackPressureError):  # a deployment's queue (max_queued_requests) is full
        return ServiceUnavailable("the server is at capacity; retry shortly", code="overloaded", retry_after_s=1)
    # Redis down, frozen or loading, no free connection in time, or a replica during a Sentinel failover
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError | rx.TryAgainError):
        return ServiceUnavailable(f"state store unavailable: {type(exc).__name__}", retry_after_s=1)
    return exc


def error_body(exc: BaseException, request_id: str | None) -> tuple[int, dict]:
    """(HTTP status, OpenAI error body) for any failure; unknown ones are logged and become a 500 that names the
    request id, with nothing of the exception in it."""
    exc = typed(exc)
    if isinstance(exc, LLMServeError):
        return exc.status, exc.to_error_body()
    logger.error("request %s failed: %r", request_id, exc, exc_info=exc)
    message = f"internal server error (request id {request_id})" if request_id else "internal server error"
    return 500, {"error": {"message": message, "type": "internal_error", "param": None, "code": "internal_error"}}
