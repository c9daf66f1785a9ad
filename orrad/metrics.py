"""orrad's Prometheus instruments (``GET /metrics``), exposed through ``prometheus_client``.

A :class:`Metrics` holds its own :class:`~prometheus_client.CollectorRegistry` (never the
library's process-wide default): the daemon makes one and hands it to the router, the
channel manager, the federation, the agent runtimes and the channels, so two daemons in one
process (or two tests) never share counts. A component built without one gets a fresh,
private :class:`Metrics`.

Counters and histograms are updated where things happen, several times per message. They
are plain numbers here (:class:`Counter`, :class:`Histogram`), read by one collector at
scrape time: the library's own instruments take a lock and make four calls per update,
3.5% of a message's work. They are updated on the event loop's thread only. States
(channel up, messages in flight, peers) are not stored: the daemon registers a collector
that reads them at scrape time, built from the gauge families below. Label values are
escaped by the library, so any channel name (a rejected file ``x"y.yaml`` included)
renders valid exposition: the same text, ``_created`` series included, as the library's
own instruments wrote.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Counter",
    "Histogram",
    "Metrics",
    "channel_up_family",
    "in_flight_family",
    "peer_queue_family",
    "peer_up_family",
]

# The exposition's content type (what prometheus_client's generate_latest writes).
CONTENT_TYPE = CONTENT_TYPE_LATEST

# How the library writes a bucket's ``le`` label (``1`` is "1.0"; it has no type hints).
_le_label = cast(Callable[[float], str], floatToGoString)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class CounterChild:
    """One labelled series of a :class:`Counter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter can only go up")
        self.value += amount


class HistogramChild:
    """One labelled series of a :class:`Histogram`: a count per bucket (not cumulative;
    the last one past the largest bound) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Prometheus buckets hold what is <= their bound: the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


ChildT = TypeVar("ChildT", CounterChild, HistogramChild)


class _Family(Generic[ChildT]):
    """A named instrument with labels, its series made on first use."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.series: dict[tuple[str, ...], ChildT] = {}

    def labels(self, *values: str) -> ChildT:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, got {values}")
        values = tuple(str(value) for value in values)
        child = self.series.get(values)
        if child is None:
            child = self.series[values] = self._new()
        return child

    def _new(self) -> ChildT:
        raise NotImplementedError

    def collect(self) -> Metric:
        raise NotImplementedError


class Counter(_Family[CounterChild]):
    """A labelled counter (``<name>_total`` and ``<name>_created`` per series)."""

    def _new(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.series.items():
            family.add_metric(values, child.value, created=child.created)
        return family


class Histogram(_Family[HistogramChild]):
    """A labelled histogram (cumulative ``_bucket`` series, ``_count``, ``_sum`` and
    ``_created``)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], *,
                 buckets: tuple[float, ...]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(bound) for bound in buckets if not math.isinf(bound))

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        les = [_le_label(bound) for bound in self.bounds] + ["+Inf"]
        for values, child in self.series.items():
            running, buckets = 0, []
            for le, count in zip(les, child.counts, strict=True):
                running += count
                buckets.append((le, float(running)))
            family.add_metric(values, buckets, child.sum)
            family.samples.append(Sample(f"{self.name}_created",
                                         dict(zip(self.labelnames, values, strict=True)),
                                         child.created))
        return family


class _Instruments(Collector):
    """What the registry reads of :class:`Metrics`' instruments at each scrape."""

    def __init__(self, families: list[Counter | Histogram]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.collect()


class Metrics:
    """One daemon's instruments and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages_in = Counter("orrad_messages_received_total",
                                   "Messages received, per channel", ("channel",))
        self.messages_out = Counter("orrad_replies_sent_total",
                                    "Replies delivered, per channel and outcome",
                                    ("channel", "outcome"))
        self.delivery_failures = Counter("orrad_reply_delivery_failures_total",
                                         "Replies a channel failed to deliver", ("channel",))
        self.run_errors = Counter("orrad_run_errors_total", "Failed agent runs, per code",
                                  ("code",))
        self.channel_restarts = Counter("orrad_channel_restarts_total",
                                        "Supervisor restarts, per channel", ("channel",))
        self.run_latency = Histogram("orrad_run_duration_seconds",
                                     "Agent run latency, per agent", ("agent",),
                                     buckets=LATENCY_BUCKETS)
        self.provider_latency = Histogram("orrad_provider_request_duration_seconds",
                                          "Provider call latency", ("provider",),
                                          buckets=LATENCY_BUCKETS)
        self.provider_tokens = Counter("orrad_provider_tokens_total",
                                       "Tokens used, per provider and direction",
                                       ("provider", "direction"))
        self.provider_errors = Counter("orrad_provider_errors_total",
                                       "Provider calls that failed after retries",
                                       ("provider",))
        self.callback_failures = Counter("orrad_webhook_callback_failures_total",
                                         "Webhook callbacks abandoned after retries",
                                         ("channel",))
        self.federation_relays = Counter("orrad_federation_relays_total",
                                         "Messages relayed to peers, per peer and outcome",
                                         ("peer", "outcome"))
        self.federation_received = Counter("orrad_federation_received_total",
                                           "Relays received from peers (each attempt)",
                                           ("origin",))

        self.registry.register(_Instruments([
            self.messages_in, self.messages_out, self.delivery_failures, self.run_errors,
            self.channel_restarts, self.run_latency, self.provider_latency,
            self.provider_tokens, self.provider_errors, self.callback_failures,
            self.federation_relays, self.federation_received]))

    def child(self, instrument: Counter | Histogram, *labels: str) -> Any:
        """``instrument.labels(*labels)`` for a per-message path: a series already made is
        one dictionary lookup."""
        child = instrument.series.get(labels)
        return child if child is not None else instrument.labels(*labels)

    def register(self, collector: Collector) -> None:
        """Add a collector whose metrics are read at each scrape."""
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """Everything in the registry, in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return _generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample (``0`` when it was never recorded); for tests and
        checks, not for a hot path (it collects the whole registry)."""
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


# -- the states read at scrape time ---------------------------------------------------------

def channel_up_family() -> GaugeMetricFamily:
    """``orrad_channel_up{channel, state}``: add one sample per channel (1 when running)."""
    return GaugeMetricFamily("orrad_channel_up", "1 when the channel is running",
                             labels=("channel", "state"))


def in_flight_family(pending: int | None = None) -> GaugeMetricFamily:
    """``orrad_messages_in_flight`` (no sample when ``pending`` is ``None``)."""
    return GaugeMetricFamily("orrad_messages_in_flight",
                             "Messages accepted and not yet answered", value=pending)


def peer_up_family() -> GaugeMetricFamily:
    """``orrad_peer_up{peer}``: add one sample per peer (1 when its breaker lets calls
    through)."""
    return GaugeMetricFamily("orrad_peer_up", "1 when the peer's circuit breaker is closed",
                             labels=("peer",))


def peer_queue_family() -> GaugeMetricFamily:
    """``orrad_federation_queue_depth{peer}``: add one sample per peer."""
    return GaugeMetricFamily("orrad_federation_queue_depth", "Messages waiting for a peer",
                             labels=("peer",))
