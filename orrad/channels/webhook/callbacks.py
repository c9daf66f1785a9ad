"""Delivery of asynchronous webhook replies to ``callback_url``: signed and retried.

Each callback is POSTed with the same ``webhook-id`` on every attempt (so the receiver can
deduplicate), retried with full-jitter backoff on connection errors, 408, 425, 429 and 5xx,
and given up after :data:`MAX_ATTEMPTS`. Which callbacks are due is not this module's
business: the pipeline's ledger keeps every answer until :func:`post_callback` returns, and
delivers it again (the same body, the same id) after a restart.
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
from orrad.errors import ChannelSendError, OrradError
from orrad.metrics import METRICS

__all__ = ["MAX_ATTEMPTS", "post_callback"]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
BACKOFF_MULTIPLIER_S = 1.0  # full jitter: uniform(0, min(MAX_WAIT_S, 1 s * 2**n))
MAX_WAIT_S = 60.0
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Retryable(OrradError):
    pass


async def post_callback(client: httpx.AsyncClient, auth: WebhookAuth, channel: str,
                        request_id: str, url: str, body: dict[str, Any]) -> None:
    """POST ``body`` to ``url``; raise :class:`ChannelSendError` once it failed for good
    (logged and counted in ``orrad_webhook_callback_failures_total``)."""
    payload = msgspec.json.encode(body)
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(MAX_ATTEMPTS),
            wait=wait_random_exponential(multiplier=BACKOFF_MULTIPLIER_S, max=MAX_WAIT_S),
            retry=retry_if_exception_type(_Retryable),
            sleep=trio.sleep,
            reraise=True,
        ):
            with attempt:
                await _post(client, auth, channel, request_id, url, payload,
                            attempt.retry_state.attempt_number)
    except OrradError as exc:
        log.error("webhook %s: callback for %s to %s failed for good: %s", channel,
                  request_id, httpx.URL(url).copy_with(query=None), exc)
        METRICS.callback_failures.inc(channel)
        raise ChannelSendError(f"callback failed: {exc}") from None


async def _post(client: httpx.AsyncClient, auth: WebhookAuth, channel: str, request_id: str,
                url: str, payload: bytes, attempt: int) -> None:
    headers = [("content-type", "application/json"), ("user-agent", "orrad-webhook"),
               *auth.signature_headers(request_id, payload)]
    try:
        response = await client.post(url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook %s: callback %s attempt %d: %s", channel, request_id, attempt,
                    type(exc).__name__)
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    if response.is_success:
        return
    if response.status_code in RETRY_STATUSES:
        log.warning("webhook %s: callback %s attempt %d: HTTP %d", channel, request_id,
                    attempt, response.status_code)
        raise _Retryable(f"HTTP {response.status_code}")
    raise OrradError(f"HTTP {response.status_code} (not retried)")
