"""HTTP/1.1 chunked trailers for hypercorn 0.18, which sends ASGI trailers only over HTTP/2 and HTTP/3.

Why: the proxy reports the bill as trailer fields, known only once the stream has ended. HTTP/1.1 carries them
in the chunked coding's last chunk, the "chunked trailer section" (RFC 9112 §7.1.2), announced by a `Trailer`
header field (RFC 9110 §6.6.2) and sent only when the client said it accepts them with `TE: trailers` (RFC 9110
§6.5.1, §10.1.4). h11 writes them: `h11.EndOfMessage(headers=...)`. hypercorn 0.18 does not: its
`HTTPStream.app_send` treats `http.response.trailers` on HTTP/1.x as an unexpected message, so a response
started with `trailers: True` never gets its last chunk and the connection is dropped.

Theory of operation: two methods are wrapped, nothing of hypercorn's is copied.

* `HTTPStream.app_send` (protocol-neutral): an `http.response.trailers` message on HTTP/1.x, in the TRAILERS
  state (the body has ended and the response was started with `trailers: True`), becomes hypercorn's own
  `Trailers` event if the fields can go on the wire, then the stream ends as usual (`_send_closed`: EndBody,
  StreamClosed). They can go when the request is HTTP/1.1, its `TE` lists `trailers` (a comma-separated list
  in HTTP/1.1; hypercorn's h2 path wants exactly `te: trailers`), and the response is chunked (mirroring h11's
  framing rules, RFC 9112 §6.3: no Content-Length, or a Transfer-Encoding; not HEAD, 204 or 304). Otherwise the
  fields are dropped and the response ends normally, so an app may always send them. Every other message, and
  every HTTP/2 and HTTP/3 stream, goes to hypercorn unchanged.
* `H11Protocol.stream_send`: a `Trailers` event is held; the `EndBody` that follows becomes
  `h11.EndOfMessage(headers=held)`, which h11 writes as `0\\r\\n`, the fields, `\\r\\n`. Body chunks are not
  touched, so each `http.response.body` still goes out as its own chunk at once, and h11 reaches DONE as it
  would without trailers, so keep-alive carries on.

A client that has gone away changes nothing: hypercorn's `send` does not raise after a disconnect (ASGI 2.1)
and writes to a closed transport are already swallowed by its TCP server.

`install()` checks the hypercorn version and the seams before patching, and refuses clearly if they are not
what this module was written against.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import h11

from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
_MARK = "__teeproxy_http11_trailers__"
_HELD = "_teeproxy_trailers"  # on an H11Protocol: the fields waiting for the EndBody


def accepts_trailers(http_version: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """HTTP/1.1 request whose `TE` lists `trailers`, e.g. `TE: gzip;q=0.5, trailers` (RFC 9110 §10.1.4)."""
    if http_version != "1.1":
        return False  # HTTP/1.0 has no chunked coding, so nowhere to put trailers
    return any(
        name.lower() == b"te"
        and any(token.split(b";")[0].strip().lower() == b"trailers" for token in value.split(b","))
        for name, value in headers
    )


def chunked_response(method: str, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Will h11 frame this response with the chunked coding (to an HTTP/1.1 client)? RFC 9112 §6.3."""
    if method == "HEAD" or status < 200 or status in (204, 304) or (method == "CONNECT" and status < 300):
        return False
    names = {bytes(name).strip().lower() for name, _ in headers}
    return b"transfer-encoding" in names or b"content-length" not in names


def install() -> None:
    """Give hypercorn HTTP/1.1 chunked trailers. Idempotent; raises RuntimeError if hypercorn does not fit."""
    version = require(
        "http11_trailers", {"hypercorn": SUPPORTED_PREFIX}, "check whether it now sends HTTP/1.1 trailers itself"
    )["hypercorn"]
    from hypercorn.protocol import events, http_stream
    from hypercorn.protocol import h11 as hc_h11
    from hypercorn.utils import build_and_validate_headers

    stream_cls = http_stream.HTTPStream
    protocol_cls = hc_h11.H11Protocol
    if stream_cls.__dict__.get(_MARK, False):  # on the class: other patches may wrap app_send over this one
        return
    trailers_state = getattr(getattr(http_stream, "ASGIHTTPState", None), "TRAILERS", None)
    missing = [
        name
        for name, present in (
            ("ASGIHTTPState.TRAILERS", trailers_state is not None),
            ("HTTPStream.app_send", hasattr(stream_cls, "app_send")),
            ("HTTPStream._send_closed", hasattr(stream_cls, "_send_closed")),
            ("H11Protocol.stream_send", hasattr(protocol_cls, "stream_send")),
            ("H11Protocol._send_h11_event", hasattr(protocol_cls, "_send_h11_event")),
            ("events.Trailers", hasattr(events, "Trailers")),
            ("events.EndBody", hasattr(events, "EndBody")),
        )
        if not present
    ]
    if missing:
        raise RuntimeError(f"hypercorn {version} lacks what proxy.http11_trailers patches: {', '.join(missing)}")
    if "1.1" in getattr(http_stream, "TRAILERS_VERSIONS", ()):
        raise RuntimeError(f"hypercorn {version} sends HTTP/1.1 trailers itself; drop proxy.http11_trailers")

    original_app_send = stream_cls.app_send
    original_stream_send = protocol_cls.stream_send

    async def app_send(self: http_stream.HTTPStream, message: Any) -> None:
        if (
            message is None
            or message["type"] != "http.response.trailers"
            or self.scope["http_version"] not in ("1.0", "1.1")
            or self.state != trailers_state
        ):
            # Out-of-turn trailers fall through too: hypercorn raises UnexpectedMessageError, as on HTTP/2.
            await original_app_send(self, message)
            return
        if accepts_trailers(self.scope["http_version"], self.scope["headers"]) and chunked_response(
            self.scope["method"], int(self.response["status"]), self.response.get("headers", [])
        ):
            headers = build_and_validate_headers(message.get("headers", []))
            await self.send(events.Trailers(stream_id=self.stream_id, headers=headers))
        if not message.get("more_trailers", False):
            await self._send_closed()

    async def stream_send(self: hc_h11.H11Protocol, event: events.Event) -> None:
        if isinstance(event, events.Trailers):
            setattr(self, _HELD, [*(getattr(self, _HELD, None) or []), *event.headers])
            return
        held: list[tuple[bytes, bytes]] | None = getattr(self, _HELD, None)
        if held is not None and isinstance(event, events.EndBody):
            setattr(self, _HELD, None)
            await self._send_h11_event(h11.EndOfMessage(headers=held))
            return
        await original_stream_send(self, event)

    stream_cls.app_send = app_send  # type: ignore[method-assign]
    protocol_cls.stream_send = stream_send  # type: ignore[method-assign]
    setattr(stream_cls, _MARK, True)
