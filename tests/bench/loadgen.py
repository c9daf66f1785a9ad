"""Closed-loop HTTP/1.1 load generator on trio + h11, meant to run in its own process.

``concurrency`` workers each keep one keep-alive connection and send ``POST path`` requests
one after the other (request → whole response → next request). The first ``warmup_s``
seconds are not measured; then every response that *completes* inside the next
``duration_s`` seconds counts, and at the end of that window every worker is cancelled, so
the run is bounded in time whatever the server does (each request is also bounded by
``timeout_s``).

Each request body is ``{"message", "namespace", "id"}``: ``id`` is unique in the run (so an
idempotent server really does the work every time), and worker ``c``'s ``k``-th request
uses namespace ``ns(c + k·concurrency) mod namespaces``, which spreads requests over all
namespaces while two requests in flight at the same moment never share one when
``namespaces`` is a multiple of ``concurrency``.

A response counts as a success only when it is a 200 whose JSON body carries the request's
``id`` (both the bare echo server and orrad's webhook answer with it); any other answer, a
broken connection or a timeout is an error.

Run as ``python -m tests.bench.loadgen --port P ...``; prints one JSON object on stdout
(see :meth:`Stats.summary`). A bearer token, when needed, comes from ``$BENCH_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

__all__ = ["ExchangeError", "Stats", "Target", "exchange", "main", "percentile", "run"]

MAX_ERROR_SAMPLES = 5
RECONNECT_PAUSE_S = 0.05
READ_SIZE = 65536


class ExchangeError(Exception):
    """The server closed the connection before a complete response."""


@dataclass(frozen=True)
class Target:
    """What to load and how hard."""

    host: str
    port: int
    path: str
    concurrency: int
    namespaces: int
    warmup_s: float
    duration_s: float
    timeout_s: float
    token: str | None = None
    tag: str = "bench"


@dataclass
class Stats:
    """What the workers observed inside the measurement window (and a little outside)."""

    duration_s: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    warmup_requests: int = 0
    warmup_errors: int = 0
    connections: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def error(self, what: str) -> None:
        """Count one failed request and keep the first few descriptions."""
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what)

    def summary(self) -> dict[str, Any]:
        """The JSON the orchestrator reads: rate, latency percentiles (ms), errors."""
        done = len(self.latencies)
        ordered = sorted(self.latencies)
        return {
            "requests": done,
            "rps": round(done / self.duration_s, 1),
            "p50_ms": round(percentile(ordered, 50) * 1000, 2),
            "p99_ms": round(percentile(ordered, 99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2) if ordered else 0.0,
            "errors": self.errors,
            "status_counts": {str(k): v for k, v in sorted(self.statuses.items())},
            "error_samples": self.error_samples,
            "warmup_requests": self.warmup_requests,
            "warmup_errors": self.warmup_errors,
            "connections_opened": self.connections,
            "cpu_cores_loadgen": round(self.cpu_s / self.wall_s, 2) if self.wall_s else None,
        }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


class _Worker:
    """One connection, one request at a time."""

    def __init__(self, index: int, target: Target, stats: Stats, window: tuple[float, float]):
        self.index = index
        self.target = target
        self.stats = stats
        self.start, self.end = window
        base = [
            ("host", f"{target.host}:{target.port}"),
            ("content-type", "application/json"),
            ("user-agent", "orrad-bench"),
        ]
        if target.token:
            base.append(("authorization", f"Bearer {target.token}"))
        self.base_headers = base

    def request_id(self, k: int) -> str:
        """The run-unique id of this worker's ``k``-th request."""
        return f"{self.target.tag}-{self.index}-{k}"

    def body(self, k: int) -> bytes:
        """The JSON body of this worker's ``k``-th request."""
        t = self.target
        ns = (self.index + k * t.concurrency) % max(1, t.namespaces)
        doc = {"message": f"bench {self.index}/{k}", "namespace": f"ns{ns}",
               "id": self.request_id(k)}
        return json.dumps(doc).encode()

    async def run(self) -> None:
        stream: trio.SocketStream | None = None
        conn = h11.Connection(h11.CLIENT)
        k = 0
        try:
            while True:
                if stream is None:
                    try:
                        stream = await trio.open_tcp_stream(self.target.host, self.target.port)
                    except OSError as exc:
                        self._failed(f"connect: {exc!r}")
                        await trio.sleep(RECONNECT_PAUSE_S)
                        continue
                    self.stats.connections += 1
                    conn = h11.Connection(h11.CLIENT)
                body, request_id = self.body(k), self.request_id(k)
                k += 1
                sent = trio.current_time()
                try:
                    with trio.fail_after(self.target.timeout_s):
                        status, answer = await self._exchange(stream, conn, body)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError,
                        ExchangeError) as exc:
                    self._failed(f"request: {exc!r}")
                    await trio.aclose_forcefully(stream)
                    stream = None
                    continue
                if status == 200 and _answered_id(answer) != request_id:
                    self._failed(f"200 without the request's id: {answer[:200]!r}")
                else:
                    self._record(status, sent, trio.current_time())
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:  # the server asked to close (e.g. its per-connection request limit)
                    await trio.aclose_forcefully(stream)
                    stream = None
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async def _exchange(self, stream: trio.SocketStream, conn: h11.Connection,
                        body: bytes) -> tuple[int, bytes]:
        """Send one request; return the response's status and body."""
        return await exchange(stream, conn, self.target.path, self.base_headers, body)

    def _in_window(self, now: float) -> bool:
        return self.start <= now <= self.end

    def _record(self, status: int, sent: float, done: float) -> None:
        if not self._in_window(done):
            if done < self.start:
                self.stats.warmup_requests += 1
                if status != 200:
                    self.stats.warmup_errors += 1
            return
        self.stats.statuses[status] += 1
        if status == 200:
            self.stats.latencies.append(done - sent)
        else:
            self.stats.error(f"HTTP {status}")

    def _failed(self, what: str) -> None:
        now = trio.current_time()
        if self._in_window(now):
            self.stats.error(what)
        elif now < self.start:
            self.stats.warmup_errors += 1


async def exchange(stream: trio.SocketStream, conn: h11.Connection, path: str,
                   headers: list[tuple[str, str]], body: bytes) -> tuple[int, bytes]:
    """``POST path`` with ``body`` on a keep-alive connection; the response's status and
    body. The caller calls ``conn.start_next_cycle()`` (when both sides are ``DONE``)."""
    head = [*headers, ("content-length", str(len(body)))]
    out = conn.send(h11.Request(method="POST", target=path, headers=head))
    out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)
    status = 0
    answer = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_SIZE))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            answer += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(answer)
        elif isinstance(event, h11.ConnectionClosed):
            raise ExchangeError("connection closed before the response ended")


def _answered_id(answer: bytes) -> object:
    """The ``id`` field of a JSON object response (``None`` when there is none)."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


async def run(target: Target) -> Stats:
    """Load ``target`` for ``warmup_s + duration_s`` seconds; return what was measured."""
    stats = Stats(duration_s=target.duration_s)
    cpu, wall = time.process_time(), time.monotonic()
    start = trio.current_time() + target.warmup_s
    end = start + target.duration_s
    with trio.move_on_at(end):
        async with trio.open_nursery() as nursery:
            for i in range(target.concurrency):
                nursery.start_soon(_Worker(i, target, stats, (start, end)).run)
    stats.cpu_s, stats.wall_s = time.process_time() - cpu, time.monotonic() - wall
    return stats


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the load, print the summary JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--namespaces", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--tag", default="bench")
    args = parser.parse_args(argv)
    target = Target(
        host=args.host, port=args.port, path=args.path, concurrency=args.concurrency,
        namespaces=args.namespaces, warmup_s=args.warmup, duration_s=args.duration,
        timeout_s=args.timeout, token=os.environ.get("BENCH_TOKEN") or None, tag=args.tag,
    )
    stats = trio.run(run, target)
    json.dump(stats.summary(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
