"""The normalized usage record every dialect is reduced to.

Semantics (the same for every provider, whatever its own field names mean):

    input_tokens        all prompt tokens, *including* cache reads and cache writes
    cached_tokens       prompt tokens read from the provider's cache (a subset of input_tokens)
    cache_write_tokens  prompt tokens written to the provider's cache (a subset of input_tokens)
    cache_write_1h_tokens  of those, the ones written with a one-hour lifetime (Anthropic), priced apart
    output_tokens       all generated tokens, *including* reasoning tokens
    reasoning_tokens    generated tokens spent on reasoning (a subset of output_tokens)
    raw                 the upstream's own usage JSON, verbatim, kept for audit

`UsageStatus` says how much to trust it: "reported" (the upstream told us), "missing" (the response ended
without any usage), "unparsed" (the response could not be parsed for usage; forwarding was unaffected).
"""

from __future__ import annotations

from typing import Literal

import msgspec

UsageStatus = Literal["reported", "missing", "unparsed"]


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    raw: str = ""
