"""How long a server may make a client wait: its Retry-After, honoured up to RETRY_AFTER_MAX_S."""

from __future__ import annotations

import datetime
import email.utils

RETRY_AFTER_MAX_S = 600.0  # a server's Retry-After is honoured up to this many seconds per wait


def retry_after(e) -> float | None:
    """Seconds the server asked to wait: Retry-After in seconds or as an HTTP date (None if absent),
    at most RETRY_AFTER_MAX_S (a hostile or broken server cannot park a stage for days)."""
    s = asked_wait(e)
    return None if s is None else min(s, RETRY_AFTER_MAX_S)


def asked_wait(e) -> float | None:
    """The Retry-After of the exception's HTTP response in seconds, as the server gave it."""
    resp = getattr(e, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())
