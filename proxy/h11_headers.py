"""h11 0.16 validates a response's header list four times, one regex per name and value; this makes it once, in
one pass (15 µs of each response head, then ~10 more).

Sending a `Response`, h11 validates every header name and value with a regex when the event is built, then
`_clean_up_response_headers_for_sending` rebuilds the list with `set_comma_header` once per framing header it
sets or clears (Content-Length, Transfer-Encoding, Connection), and each rebuild validates the whole list again,
and so does the `Response` it returns. The rebuilds only drop or add h11's own framing values (`chunked`,
`close`, tokens of a Connection header it already validated) to a list it already validated: validating that
list again cannot fail. `set_comma_header` is replaced, in h11's connection module only, by the same rebuild
that skips the regexes (`_parsed=True`, h11's own switch for lists it has checked); the Content-Length and
Transfer-Encoding checks still run. On a response with a dozen header fields, h11's send went from 45 to 30
µs (`bench` profile: hypercorn's response head was a fifth of the proxy's CPU per request). Two cases skip even
that: clearing a field the list does not have (Content-Length, on every streamed response) returns the list
itself, and setting h11's own values (`chunked`, Connection tokens) appends their normalized triples to the
list's, which are normalized already (a 10-field head's send: 10.9 → 8.0 µs).

The one validation left, when an event is built (`normalize_and_validate` in h11's events module), ran two
regexes per field: ~1 µs a field, and a provider's response carries twenty or more. It now checks the whole list
in one match: each field as `name NUL value LF`, against h11's own token and field-value patterns, and exactly
one LF per field. NUL and LF are in neither pattern, so no name or value can pass as two, or take the NUL that
separates them. Anything else (a str, a bytearray, a list that fails) goes to h11's own function, so what is
accepted, and the error raised for what is not, are h11's.

`install()` checks the h11 version and the functions it replaces before patching, and refuses otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.16."
_MARK = "__teeproxy_h11_headers__"


def install() -> None:
    version = require(
        "h11_headers", {"h11": SUPPORTED_PREFIX}, "check whether set_comma_header still re-validates a validated list"
    )["h11"]
    from h11 import _abnf, _connection, _events, _headers

    current = getattr(_connection, "set_comma_header")  # noqa: B009 - not re-exported; mypy would refuse the dot
    if getattr(current, _MARK, False):
        return
    if current is not _headers.set_comma_header or "normalize_and_validate" not in current.__code__.co_names:
        raise RuntimeError(f"h11 {version}'s set_comma_header is not what proxy.h11_headers expects")
    if _abnf.field_value != r"([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?":
        raise RuntimeError(f"h11 {version}'s field-value pattern is not what proxy.h11_headers expects")
    normalize_and_validate = _headers.normalize_and_validate
    used_by_events: object = getattr(_events, "normalize_and_validate", None)
    if used_by_events is not normalize_and_validate:
        raise RuntimeError(f"h11 {version}'s events do not validate headers as proxy.h11_headers expects")

    def set_comma_header(headers: _headers.Headers, name: bytes, new_values: list[bytes]) -> _headers.Headers:
        # As h11's own: every field but `name`, then `name` (title-cased) with each new value.
        items = headers._full_items
        kept = [item for item in items if item[1] != name]
        if not new_values and len(kept) == len(items):
            return headers  # nothing to clear or set (Content-Length on a streamed response): the same list
        if name != b"content-length" and (name != b"transfer-encoding" or new_values == [b"chunked"]):
            # The kept fields are h11's normalized triples already, and the new values are its own (`chunked`,
            # Connection tokens): normalizing them again would give the same triples.
            kept.extend((name.title(), name, value) for value in new_values)
            return _headers.Headers(kept)
        rebuilt = [(raw_name, value) for raw_name, _, value in kept]
        rebuilt.extend((name.title(), value) for value in new_values)
        return normalize_and_validate(rebuilt, _parsed=True)

    setattr(set_comma_header, _MARK, True)
    setattr(_connection, "set_comma_header", set_comma_header)  # noqa: B010 - as above

    # h11's field value, `([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?`, is any run of bytes but NUL, CR, LF, VT and FF that
    # neither starts nor ends with SP or HTAB. Written so, with no repeat nested in another, the regex engine takes
    # a value in one loop over a character class instead of a group per word (1.7 -> 1.0 µs for a 10-field head).
    value = rb"(?:[^\x00\s](?:[^\x00\r\n\x0b\x0c]*[^\x00\s])?)?"
    fields = re.compile(b"(?:%s\x00%s\n)*" % (_abnf.field_name.encode(), value))

    def validate_in_one_pass(headers: Any, _parsed: bool = False) -> _headers.Headers:
        if not _parsed and type(headers) is list:
            try:
                block = b"".join([b"%b\x00%b\n" % field for field in headers if type(field) is tuple])
            except TypeError:  # not two bytes-like items: h11's own function says what is wrong
                block = b""
            if (
                block.count(b"\n") == len(headers)
                and fields.fullmatch(block)
                and all(type(name) is bytes and type(value) is bytes for name, value in headers)
            ):
                return normalize_and_validate(headers, _parsed=True)  # the Content-Length and TE checks still run
        return normalize_and_validate(headers, _parsed=_parsed)

    setattr(_events, "normalize_and_validate", validate_in_one_pass)  # noqa: B010 - as above
