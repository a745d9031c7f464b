"""Which providers a request is tried on, in what order, and how long to wait between attempts.

A route names its providers; the first attempt goes to the first of them that speaks the client's dialect (or,
with `weights`, to one drawn by weight), and failover follows the list from there, wrapping around when
`max_attempts` is larger than the list. Attempts happen only before the first byte reaches the client.

What moves to the next attempt: a connect error, no response head within `first_byte_timeout_s`, and the
statuses in `RETRYABLE_STATUSES` (rate limits, overload and server errors; Anthropic's 529 included). Any other
4xx is the client's problem and goes to it as it is.

Waiting: an attempt on a provider not tried yet starts at once (a healthy second provider should not pay for
the first one's trouble). A repeat attempt on a provider waits with exponential backoff and full jitter
(`[retry] backoff_initial_s`, doubling up to `backoff_max_s`, a uniform draw below that), or for the
upstream's `Retry-After` when it asked for one up to `retry_after_cap_s`; a longer `Retry-After` means that
provider is skipped for the rest of this request.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from proxy.providers.base import Upstream

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


@dataclass(frozen=True, slots=True)
class Plan:
    """The providers a route offers a request, in the config's order."""

    upstreams: tuple[Upstream, ...]
    weights: tuple[int, ...] | None
    max_attempts: int
    gate_first_chunk: bool


def attempt_order(plan: Plan, rng: random.Random | None = None) -> tuple[list[Upstream], str]:
    """The upstream for each attempt, and how the first was chosen ("routed" or "weighted")."""
    count = len(plan.upstreams)
    start, reason = 0, "routed"
    if plan.weights is not None and count > 1:
        start = (rng or random).choices(range(count), weights=plan.weights)[0]
        reason = "weighted"
    order = [plan.upstreams[(start + i) % count] for i in range(plan.max_attempts)]
    return order, reason


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP-date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def backoff_s(repeat: int, initial_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max_s, initial_s * 2**repeat))."""
    ceiling = min(max_s, initial_s * (2**repeat))
    return (rng or random).uniform(0.0, ceiling)
