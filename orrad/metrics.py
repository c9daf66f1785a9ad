"""orrad's Prometheus instruments (``GET /metrics``), on the ``prometheus_client`` library.

A :class:`Metrics` holds its own :class:`~prometheus_client.CollectorRegistry` (never the
library's process-wide default): the daemon makes one and hands it to the router, the
channel manager, the federation, the agent runtimes and the channels, so two daemons in one
process (or two tests) never share counts. A component built without one gets a fresh,
private :class:`Metrics`.

Counters and histograms are updated where things happen. States (channel up, messages in
flight, peers) are not stored: the daemon registers a collector that reads them at scrape
time, built from the gauge families below. Label values are escaped by the library, so any
channel name (a rejected file ``x"y.yaml`` included) renders valid exposition.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "Metrics",
    "channel_up_family",
    "in_flight_family",
    "peer_queue_family",
    "peer_up_family",
]

# The exposition's content type (what prometheus_client's generate_latest writes).
CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One daemon's instruments and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        # Labelled children by (instrument, label values); see child().
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}
        self.messages_in = Counter("orrad_messages_received_total",
                                   "Messages received, per channel", ("channel",),
                                   registry=registry)
        self.messages_out = Counter("orrad_replies_sent_total",
                                    "Replies delivered, per channel and outcome",
                                    ("channel", "outcome"), registry=registry)
        self.delivery_failures = Counter("orrad_reply_delivery_failures_total",
                                         "Replies a channel failed to deliver", ("channel",),
                                         registry=registry)
        self.run_errors = Counter("orrad_run_errors_total", "Failed agent runs, per code",
                                  ("code",), registry=registry)
        self.channel_restarts = Counter("orrad_channel_restarts_total",
                                        "Supervisor restarts, per channel", ("channel",),
                                        registry=registry)
        self.run_latency = Histogram("orrad_run_duration_seconds",
                                     "Agent run latency, per agent", ("agent",),
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.provider_latency = Histogram("orrad_provider_request_duration_seconds",
                                          "Provider call latency", ("provider",),
                                          buckets=LATENCY_BUCKETS, registry=registry)
        self.provider_tokens = Counter("orrad_provider_tokens_total",
                                       "Tokens used, per provider and direction",
                                       ("provider", "direction"), registry=registry)
        self.provider_errors = Counter("orrad_provider_errors_total",
                                       "Provider calls that failed after retries",
                                       ("provider",), registry=registry)
        self.callback_failures = Counter("orrad_webhook_callback_failures_total",
                                         "Webhook callbacks abandoned after retries",
                                         ("channel",), registry=registry)
        self.federation_relays = Counter("orrad_federation_relays_total",
                                         "Messages relayed to peers, per peer and outcome",
                                         ("peer", "outcome"), registry=registry)
        self.federation_received = Counter("orrad_federation_received_total",
                                           "Relays received from peers (each attempt)",
                                           ("origin",), registry=registry)

    def child(self, instrument: Counter | Histogram, *labels: str) -> Any:
        """``instrument.labels(*labels)``, remembered: the library checks and locks on every
        ``labels()`` call, which on the per-message path costs more than the update."""
        key = (instrument, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = instrument.labels(*labels)
        return child

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
