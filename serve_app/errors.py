"""Our typed exceptions. One function (deployments/http_errors.py) maps them to HTTP; anything that is not
one of these is a 500 with a request id, never a disguised 4xx.

They carry plain data (no references to clients or sockets) so they pickle across Ray hops.
"""

from __future__ import annotations


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
