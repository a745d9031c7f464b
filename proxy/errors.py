"""The exception tree, and how each error reaches the client.

    ProxyError                    status, error_type and code; each dialect renders them in its own format
    ├── ClientError               the request is at fault, nothing goes upstream
    │   ├── Unauthorized          401  missing or unknown client key
    │   ├── NotFound              404  unknown path
    │   ├── ModelNotFound         404  no route for the request's model
    │   ├── MethodNotAllowed      405
    │   ├── BadRequest            400  body is not JSON, or lacks what the endpoint needs
    │   ├── RequestTimeout        408  the request body did not arrive within [server] body_timeout_s
    │   ├── PayloadTooLarge       413  body over [server] max_body_bytes
    │   └── HeadersTooLarge       431  more request headers than MAX_REQUEST_HEADERS
    ├── UpstreamError             the provider failed or could not be reached
    │   ├── UpstreamConnectError  502  could not connect
    │   ├── UpstreamTimeout       504  connect/read timeout
    │   └── UpstreamProtocolError 502  the upstream broke the protocol mid-response
    ├── ShuttingDown              503  the proxy is shutting down (a new request while draining, or a stream
    │                                  still running when the grace period ended)
    ├── ConfigError               a bad config file: stops start-up with a message naming the key
    └── StartupError              the ledger cannot be opened at start-up: one line, exit 1

Parsers raise only `FrameError` (proxy.parsers.sse); it costs usage accuracy, never a forwarded byte, and is
not a ProxyError. The client sees a ProxyError in its provider's own error format (`Dialect.error_response`),
before the first byte as a real HTTP status, and after it as the dialect's in-stream error (`stream_error`).
"""

from __future__ import annotations

from typing import ClassVar


class ProxyError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(ProxyError):
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(ClientError):
    status = 401
    code = "invalid_api_key"


class NotFound(ClientError):
    status = 404
    code = "unknown_url"


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class BadRequest(ClientError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class HeadersTooLarge(ClientError):
    status = 431
    code = "request_header_fields_too_large"


class UpstreamError(ProxyError):
    status = 502
    error_type = "upstream_error"


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class ShuttingDown(ProxyError):
    status = 503
    error_type = "server_error"
    code = "shutting_down"


class ConfigError(Exception):
    """A bad config file. The message names the file and the offending key."""


class StartupError(Exception):
    """Start-up cannot complete (the ledger cannot be opened or written): one line saying what and where."""
