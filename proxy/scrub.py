"""Keeping the provider's key out of what the client gets.

Some upstreams echo the credentials they were sent in an error (a 401 body quoting the Authorization header, a
`WWW-Authenticate` challenge). The proxy attached that key, so it removes it again: from the response headers,
and from the body of every non-2xx response, across read boundaries. A 2xx body is the model's output and is
never touched (the key cannot be in it unless the upstream is hostile, and the tee must stay byte-exact).
"""

from __future__ import annotations

from proxy.headers import Headers

REDACTED = b"[redacted]"


def scrub_headers(headers: Headers, secret: bytes) -> Headers:
    return [(name, value.replace(secret, REDACTED)) for name, value in headers]


class SecretScrubber:
    """Bytes in, the same bytes out with every occurrence of `secret` replaced, however the input is split. Holds
    back at most len(secret) - 1 bytes (a possible start of the secret) until the next feed or `close`."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._keep = len(secret) - 1
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        buf = (self._held + data).replace(self._secret, REDACTED)
        if self._keep <= 0:
            self._held = b""
            return buf
        self._held = buf[-self._keep :]
        return buf[: -self._keep]

    def close(self) -> bytes:
        out, self._held = self._held, b""
        return out
