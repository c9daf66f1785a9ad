"""orrad's own counters and histograms render exactly what prometheus_client's would.

They are plain numbers updated without the library's lock and calls (orrad/metrics.py); the
exposition must not change for it: the same families, samples, ``le`` labels and
``_created`` series, in the same order.
"""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as LibraryCounter
from prometheus_client import Histogram as LibraryHistogram

from orrad.metrics import LATENCY_BUCKETS, Metrics

OBSERVED = (0.0, 0.001, 0.005, 0.0051, 0.3, 1, 1.0000001, 7, 120, 200)


def _without_times(text: bytes) -> bytes:
    return re.sub(rb"(_created(?:\{[^}]*\})?) \S+", rb"\1 T", text)


def test_the_exposition_is_the_librarys() -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    received = LibraryCounter("orrad_messages_received_total", "Messages received, per channel",
                              ("channel",), registry=registry)
    latency = LibraryHistogram("orrad_run_duration_seconds", "Agent run latency, per agent",
                               ("agent",), buckets=LATENCY_BUCKETS, registry=registry)
    for name in ("hooks", 'x"y\n\\'):
        ours.child(ours.messages_in, name).inc()
        ours.messages_in.labels(name).inc(2.5)
        received.labels(name).inc()
        received.labels(name).inc(2.5)
    for value in OBSERVED:
        ours.child(ours.run_latency, "main").observe(value)
        latency.labels("main").observe(value)
    text = _without_times(ours.exposition())
    for family in (b"orrad_messages_received", b"orrad_run_duration_seconds"):
        mine = [line for line in text.splitlines() if family in line]
        library = [line for line in _without_times(generate_latest(registry)).splitlines()
                   if family in line]
        assert mine == library
    assert ours.value("orrad_run_duration_seconds_count", agent="main") == len(OBSERVED)
    assert ours.value("orrad_run_duration_seconds_bucket", agent="main", le="1.0") == 6


def test_counters_refuse_to_go_down_and_labels_are_checked() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError):
        metrics.messages_in.labels("hooks").inc(-1)
    with pytest.raises(ValueError):
        metrics.messages_out.labels("hooks")  # two labels: channel and outcome
    assert metrics.value("orrad_messages_received_total", channel="hooks") == 0
