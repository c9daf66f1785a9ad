"""The one timestamp format the CLI and the daemon API show: ISO 8601 in UTC, whole seconds,
``Z`` for the zone (``2026-12-03T05:30:37Z``).

Imports nothing of orrad, so any layer may use it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["FORMAT", "utc_iso"]

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_iso(when: datetime | float | str | None = None) -> str:
    """``when`` as ``YYYY-MM-DDTHH:MM:SSZ`` (fractions of a second dropped).

    ``when`` is a datetime (a naive one is taken as UTC), a unix time, an ISO 8601 string
    (any offset; returned in UTC), or ``None`` for now. A string that is not ISO 8601 is
    returned unchanged: this formats what others recorded and must not fail on it.
    """
    if isinstance(when, str):
        try:
            moment = datetime.fromisoformat(when)
        except ValueError:
            return when
    elif isinstance(when, datetime):
        moment = when
    else:
        moment = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime(FORMAT)
