"""The exception tree, and how each error reaches the client.

    ProxyError                    status, source, retryable, flag (the ledger's / access log's outcome)
    ├── ClientError               source="client": the request is at fault, nothing goes upstream
    │   ├── Unauthorized          401  missing or unknown client key                       flag UAUTH
    │   ├── NotFound              404  unknown path                                        flag NR
    │   ├── ModelNotFound         404  no route for the request's model                    flag NR
    │   ├── MethodNotAllowed      405                                                      flag NR
    │   ├── BadRequest            400  body is not JSON, or lacks what the endpoint needs  flag BADREQ
    │   └── PayloadTooLarge       413  body over [server] max_body_bytes                   flag TOOBIG
    ├── UpstreamError             source="upstream"
    │   ├── UpstreamConnectError  502  could not connect (retryable)                       flag UF
    │   ├── UpstreamTimeout       504  connect/read timeout                                flag UT
    │   └── UpstreamProtocolError 502  the upstream broke the protocol mid-response        flag UPE
    └── ConfigError               a bad config file: stops start-up with a message naming the key

Parsers raise only `FrameError` (proxy.parsers.sse); it costs usage accuracy, never a forwarded byte, and is
not a ProxyError. The client sees a ProxyError in its provider's own error format (see `openai_error_body`),
before the first byte as a real HTTP status.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

Source = Literal["client", "upstream", "proxy"]


class ProxyError(Exception):
    status: ClassVar[int] = 500
    source: ClassVar[Source] = "proxy"
    retryable: ClassVar[bool] = False
    flag: ClassVar[str] = "PE"
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(ProxyError):
    source = "client"
    status = 400
    error_type = "invalid_request_error"


class Unauthorized(ClientError):
    status = 401
    flag = "UAUTH"
    code = "invalid_api_key"


class NotFound(ClientError):
    status = 404
    flag = "NR"
    code = "unknown_url"


class ModelNotFound(ClientError):
    status = 404
    flag = "NR"
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    flag = "NR"
    code = "method_not_allowed"


class BadRequest(ClientError):
    status = 400
    flag = "BADREQ"
    code = "invalid_request"


class PayloadTooLarge(ClientError):
    status = 413
    flag = "TOOBIG"
    code = "request_too_large"


class UpstreamError(ProxyError):
    source = "upstream"
    status = 502
    flag = "UPE"
    error_type = "upstream_error"


class UpstreamConnectError(UpstreamError):
    retryable = True
    flag = "UF"
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    retryable = True
    flag = "UT"
    code = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    flag = "UPE"
    code = "upstream_protocol_error"


class ConfigError(Exception):
    """A bad config file. The message names the file and the offending key."""


class _OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _OpenAIError(msgspec.Struct):
    error: _OpenAIErrorDetail


_encode = msgspec.json.Encoder().encode


def openai_error_body(error: ProxyError) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}`, the shape the OpenAI SDKs parse."""
    return _encode(_OpenAIError(_OpenAIErrorDetail(error.message, error.error_type, None, error.code)))
