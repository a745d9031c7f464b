"""HTTP/1.1 chunked trailers for hypercorn, which only sends ASGI trailers over HTTP/2 and HTTP/3.

Why: the proxy reports the bill as trailer fields, known only once the stream has ended. HTTP/1.1 carries
them in the chunked encoding's final chunk (RFC 9112 §7.1.2, "Chunked Trailer Section"), announced by a
`Trailer` header (RFC 9110 §6.6.2) and sent when the client said `TE: trailers` (RFC 9110 §10.1.4). h11
writes them (`h11.EndOfMessage(headers=...)`), but hypercorn 0.18 drops the ASGI `http.response.trailers`
message on HTTP/1.x: its `HTTPStream.app_send` raises UnexpectedMessageError for it, so a response started
with `trailers: True` never gets its final chunk.

Theory of operation: two seams, both wrapped, nothing copied.

* `HTTPStream.app_send`: on HTTP/1.x, an `http.response.trailers` message after the body is turned into the
  protocol-neutral `Trailers` event (when the request's `TE` lists `trailers` and the version is 1.1),
  and the stream is closed as usual when `more_trailers` is false. Without `TE: trailers`, or on HTTP/1.0
  (no chunked encoding), the fields are dropped and the response ends normally: an app may always send them.
* `H11Protocol.stream_send`: a `Trailers` event is held; the `EndBody` that follows becomes
  `h11.EndOfMessage(headers=held)` instead of a bare one.

HTTP/2 and HTTP/3 keep hypercorn's own path. `install()` checks the hypercorn version and the seams first,
and refuses clearly if they are not what this was written against.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import h11

SUPPORTED_PREFIX = "0.18."
_installed = False


def _accepts_trailers(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"te" and any(
            token.split(b";")[0].strip().lower() == b"trailers" for token in value.split(b",")
        ):
            return True
    return False


def install() -> None:
    """Patch hypercorn once per process. Raises RuntimeError when the installed hypercorn does not fit."""
    global _installed
    if _installed:
        return
    version = importlib.metadata.version("hypercorn")
    if not version.startswith(SUPPORTED_PREFIX):
        raise RuntimeError(
            f"proxy.http11_trailers was written for hypercorn {SUPPORTED_PREFIX}x; hypercorn {version} is "
            "installed. Check that its HTTP/1.1 stream still lacks trailers and update the patch."
        )
    from hypercorn.protocol import h11 as hc_h11
    from hypercorn.protocol import http_stream
    from hypercorn.protocol.events import EndBody, Trailers
    from hypercorn.utils import build_and_validate_headers

    stream_cls = http_stream.HTTPStream
    protocol_cls = hc_h11.H11Protocol
    trailers_state = getattr(http_stream.ASGIHTTPState, "TRAILERS", None)
    if trailers_state is None or not hasattr(stream_cls, "app_send") or not hasattr(protocol_cls, "stream_send"):
        raise RuntimeError(f"hypercorn {version} lacks the seams proxy.http11_trailers patches")

    original_app_send = stream_cls.app_send
    original_stream_send = protocol_cls.stream_send

    async def app_send(self: Any, message: Any) -> None:
        if (
            message is not None
            and message["type"] == "http.response.trailers"
            and self.scope is not None
            and self.scope["http_version"] in ("1.0", "1.1")
        ):
            if self.state == trailers_state:
                if self.scope["http_version"] == "1.1" and _accepts_trailers(self.scope["headers"]):
                    headers = build_and_validate_headers(message.get("headers", []))
                    await self.send(Trailers(stream_id=self.stream_id, headers=headers))
                if not message.get("more_trailers", False):
                    await self._send_closed()
            return  # trailers out of turn on HTTP/1.x (e.g. after the client left): nothing to send
        await original_app_send(self, message)

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, Trailers):
            held = getattr(self, "_teeproxy_trailers", None) or []
            self._teeproxy_trailers = [*held, *event.headers]
            return
        if isinstance(event, EndBody):
            held = getattr(self, "_teeproxy_trailers", None)
            if held:
                self._teeproxy_trailers = None
                await self._send_h11_event(h11.EndOfMessage(headers=held))
                return
        await original_stream_send(self, event)

    stream_cls.app_send = app_send  # type: ignore[method-assign]
    protocol_cls.stream_send = stream_send  # type: ignore[method-assign]
    _installed = True
