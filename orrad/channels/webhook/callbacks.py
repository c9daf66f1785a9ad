"""Delivery of asynchronous webhook replies to ``callback_url``: signed, retried, recorded.

Each callback is POSTed with the same ``webhook-id`` on every attempt (so the receiver can
deduplicate), retried with full-jitter backoff on connection errors, 408, 429 and 5xx, and
given up after :data:`MAX_ATTEMPTS`; the outcome is written to the inbox (``delivered`` or
``failed``), a final failure is logged and counted in ``/metrics``.

The inbox is the durable queue: :meth:`CallbackSender.offer` never blocks (a full memory
queue just leaves the reply for the next scan), and the sender rescans the inbox for
answered-but-undelivered callbacks at start and every :data:`RESCAN_S` seconds, which also
picks up replies stored by an earlier process or an earlier generation of the channel.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import msgspec
import trio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from orrad.channels.webhook.auth import WebhookAuth
from orrad.errors import OrradError, StoreError
from orrad.metrics import METRICS
from orrad.state import Inbox
from orrad.state.inbox import InboxState

__all__ = ["CallbackSender"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_CONCURRENT = 16
BACKOFF_MULTIPLIER_S = 1.0  # full jitter: uniform(0, min(MAX_WAIT_S, 1 s * 2**n))
MAX_WAIT_S = 60.0
RESCAN_S = 30.0
QUEUE_SIZE = 1000
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Retryable(OrradError):
    pass


class _Job(msgspec.Struct):
    request_id: str
    url: str
    body: dict[str, Any]


class CallbackSender:
    """Runs callback deliveries in its own nursery (start with ``nursery.start(serve)``)."""

    def __init__(self, client: httpx.AsyncClient, auth: WebhookAuth, inbox: Inbox, source: str,
                 channel: str) -> None:
        self.client = client
        self.auth = auth
        self.inbox = inbox
        self.source = source
        self.channel = channel
        self._send, self._recv = trio.open_memory_channel[_Job](QUEUE_SIZE)
        self._queued: set[str] = set()  # ids queued or being delivered by this sender
        self._limit = trio.Semaphore(MAX_CONCURRENT)

    def offer(self, request_id: str, url: str, body: dict[str, Any]) -> None:
        """Queue a callback now if there is room; otherwise the next scan will."""
        if request_id in self._queued:
            return
        try:
            self._send.send_nowait(_Job(request_id, url, body))
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("webhook %s: callback queue full; %s waits for the next scan",
                        self.channel, request_id)
            return
        self._queued.add(request_id)

    async def rescan(self) -> None:
        """Offer every answered, undelivered callback the inbox holds for this source."""
        try:
            entries = await self.inbox.open_entries(self.source)
        except StoreError as exc:
            log.warning("webhook %s: cannot scan for callbacks: %s", self.channel, exc)
            return
        for entry in entries:
            url = entry.payload.get("callback_url")
            if entry.state == "answered" and url and entry.reply is not None:
                self.offer(entry.delivery_id, url, entry.reply["body"])

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rescan_periodically)
            task_status.started()
            async for job in self._recv:
                await self._limit.acquire()
                nursery.start_soon(self._deliver_and_release, job)

    async def _rescan_periodically(self) -> None:
        while True:
            await self.rescan()
            await trio.sleep(RESCAN_S)

    async def _deliver_and_release(self, job: _Job) -> None:
        try:
            await self.deliver(job)
        finally:
            self._queued.discard(job.request_id)
            self._limit.release()

    async def deliver(self, job: _Job) -> None:
        payload = msgspec.json.encode(job.body)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(MAX_ATTEMPTS),
                wait=wait_random_exponential(multiplier=BACKOFF_MULTIPLIER_S, max=MAX_WAIT_S),
                retry=retry_if_exception_type(_Retryable),
                sleep=trio.sleep,
                reraise=True,
            ):
                with attempt:
                    await self._post(job, payload, attempt.retry_state.attempt_number)
        except (_Retryable, OrradError) as exc:
            log.error("webhook %s: callback for %s to %s failed for good: %s", self.channel,
                      job.request_id, httpx.URL(job.url).copy_with(query=None), exc)
            METRICS.callback_failures.inc(self.channel)
            await self._record(job.request_id, "failed")
            return
        await self._record(job.request_id, "delivered")

    async def _post(self, job: _Job, payload: bytes, attempt: int) -> None:
        headers = [("content-type", "application/json"), ("user-agent", "orrad-webhook"),
                   *self.auth.signature_headers(job.request_id, payload)]
        try:
            response = await self.client.post(job.url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("webhook %s: callback %s attempt %d: %s", self.channel, job.request_id,
                        attempt, type(exc).__name__)
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.is_success:
            return
        if response.status_code in RETRY_STATUSES:
            log.warning("webhook %s: callback %s attempt %d: HTTP %d", self.channel,
                        job.request_id, attempt, response.status_code)
            raise _Retryable(f"HTTP {response.status_code}")
        raise OrradError(f"HTTP {response.status_code} (not retried)")

    async def _record(self, request_id: str, state: InboxState) -> None:
        try:
            await self.inbox.record(self.source, request_id, state)
        except StoreError as exc:
            log.error("webhook %s: cannot record callback outcome for %s: %s", self.channel,
                      request_id, exc)
