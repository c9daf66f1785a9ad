"""Log lines carry orrad's one timestamp format (ISO 8601 UTC), with milliseconds."""

from __future__ import annotations

import logging
import re

from orrad.logs import UTCFormatter


def test_log_timestamps_are_iso_8601_utc() -> None:
    record = logging.LogRecord("orrad.x", logging.INFO, __file__, 1, "hello", None, None)
    record.created, record.msecs = 1796276437.25, 250.0  # 2026-12-03T05:40:37.250Z
    line = UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert line == "2026-12-03T05:40:37.250Z INFO orrad.x: hello"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO .*", line)
