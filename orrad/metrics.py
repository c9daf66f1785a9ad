"""Counters and histograms rendered in the Prometheus text format (``GET /metrics``).

One process-wide registry, :data:`METRICS`: instruments are cheap dict updates on the event
loop, so no locking is needed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["METRICS", "Counter", "Histogram", "Registry"]

LabelValues = tuple[str, ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.label_names, self.buckets = name, help_text, labels, buckets
        self.series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts, totals = self.series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        totals[0] += value

    def count(self, *labels: str) -> int:
        series = self.series.get(labels)
        return sum(series[0]) if series else 0

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, (counts, totals) in sorted(self.series.items()):
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                series_labels = _labels(self.label_names, labels, 'le="' + le + '"')
                yield f"{self.name}_bucket{series_labels} {cumulative}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_number(totals[0])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {cumulative}"


class Registry:
    def __init__(self) -> None:
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
                                     "Agent run latency, per agent", ("agent",))
        self.provider_latency = Histogram("orrad_provider_request_duration_seconds",
                                          "Provider call latency", ("provider",))
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

    def instruments(self) -> list[Counter | Histogram]:
        return [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]

    def render(self, extra: Iterable[str] = ()) -> str:
        lines: list[str] = []
        for instrument in self.instruments():
            lines.extend(instrument.render())
        lines.extend(extra)
        return "\n".join(lines) + "\n"


METRICS = Registry()
