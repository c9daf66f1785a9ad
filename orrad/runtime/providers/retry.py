"""Retries, backoff and HTTP status translation, shared by every HTTP provider.

One call to :func:`post_json` is one logical provider request: it POSTs, turns a non-2xx
status into the matching error of the :class:`~orrad.errors.ProviderError` tree, and retries
the transient ones (CONTRACT §8). Error tree as seen from here::

    ProviderError                 400/404/422..., bad URL — never retried
    ├── ProviderAuthError         401/403 — never retried
    ├── ContextLengthExceeded     400 saying the prompt does not fit — never retried
    ├── ProviderRateLimited       429 — retried
    └── ProviderUnavailable       408/409/5xx/529, connection errors, timeouts — retried

Backoff is full jitter (``wait_random_exponential``) but never shorter than the server's
``retry-after-ms`` / ``retry-after`` (seconds or HTTP date). A ``retry-after`` longer than
:attr:`RetryPolicy.max_retry_after_s` is not slept through: the error is raised at once.
Only errors marked ``retryable`` are retried, so ``trio.Cancelled`` never is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import trio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from orrad.errors import (
    ContextLengthExceeded,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from orrad.retrying import attempt_then_retry
from orrad.runtime.providers.http import HTTPClient, post

__all__ = [
    "ErrorDetail",
    "RetryPolicy",
    "error_for_status",
    "parse_retry_after",
    "post_json",
    "redact",
]

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429})
# What a 400 says when the prompt is too big: OpenAI "maximum context length", Anthropic
# "prompt is too long: N tokens > M token limit", vLLM/llama.cpp "context window/size".
_CONTEXT_RE = re.compile(r"context|prompt is too long|token limit|too many tokens", re.I)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
MAX_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one provider call tries.

    Attributes:
        max_retries: retries after the first attempt (``0`` means one attempt only).
        timeout_s: deadline of each attempt, from connect to the last body byte.
        backoff_base_s: full-jitter multiplier; retry *n* waits up to ``base * 2**(n-1)``.
        backoff_max_s: cap of the jittered wait.
        max_retry_after_s: the longest server-requested wait we honour; beyond it we give up.
    """

    max_retries: int = 4
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 60.0


class ErrorDetail(NamedTuple):
    """What a provider's error body says: a human message and an optional machine code."""

    message: str
    code: str | None = None


def redact(text: str, secret: str) -> str:
    """Replace every occurrence of ``secret`` in ``text`` (no-op for an empty secret)."""
    return text.replace(secret, "***") if secret else text


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait, or ``None`` when it did not say (or said nonsense).

    ``retry-after-ms`` (OpenAI, Anthropic) wins over ``retry-after``, which may be a number of
    seconds or an HTTP date. Dates in the past give ``0``.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0 and value != float("inf"):
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if 0 <= seconds != float("inf") else None


def error_for_status(
    status: int, detail: ErrorDetail, *, retry_after_s: float | None = None
) -> ProviderError:
    """The error a non-2xx ``status`` stands for; its ``retryable`` flag drives the retries."""
    message = f"HTTP {status}: {detail.message}"
    if status in (401, 403):
        return ProviderAuthError(message, status=status)
    if status == 429:
        return ProviderRateLimited(message, retry_after_s=retry_after_s, status=status)
    if status in RETRYABLE_STATUSES or status >= 500:
        return ProviderUnavailable(message, status=status, retry_after_s=retry_after_s)
    if status in (400, 413) and (
        detail.code in _CONTEXT_CODES or _CONTEXT_RE.search(detail.message)
    ):
        return ContextLengthExceeded(message, status=status)
    return ProviderError(message, status=status)


async def post_json(
    client: HTTPClient,
    url: str,
    *,
    headers: dict[str, str],
    body: bytes,
    policy: RetryPolicy,
    parse_error: Callable[[bytes], ErrorDetail],
    secret: str = "",
    provider: str = "provider",
) -> bytes:
    """POST a JSON ``body`` with retries and return the body of the first 2xx response.

    Args:
        parse_error: pulls the message out of the provider's error body format.
        secret: the API key, scrubbed from every error message.
        provider: the provider's name, for the retry log lines.

    Raises:
        ProviderError: the typed error of the last attempt (see the module docstring).

    Cancellation:
        Safe at any point; a cancelled attempt or backoff sleep is never retried.
    """

    async def attempt() -> bytes:
        try:
            response = await post(
                client, url, headers={"content-type": "application/json", **headers},
                body=body, timeout_s=policy.timeout_s,
            )
        except ProviderError as exc:
            if secret and secret in exc.detail:  # e.g. a key pasted into the URL
                cls = ProviderUnavailable if exc.retryable else ProviderError
                raise cls(redact(exc.detail, secret)) from None
            raise
        if 200 <= response.status < 300:
            return response.body
        detail = parse_error(response.body)
        detail = ErrorDetail(redact(detail.message, secret)[:MAX_ERROR_CHARS], detail.code)
        raise error_for_status(
            response.status, detail, retry_after_s=parse_retry_after(response.headers)
        )

    def retrying() -> AsyncRetrying:
        return AsyncRetrying(
            sleep=trio.sleep,
            stop=stop_after_attempt(policy.max_retries + 1),
            wait=_Backoff(policy),
            retry=retry_if_exception(lambda exc: _should_retry(exc, policy)),
            before_sleep=lambda state: _log_retry(state, provider, policy),
            reraise=True,
        )

    return await attempt_then_retry(
        attempt, retrying=retrying,
        retryable=lambda exc: policy.max_retries > 0 and _should_retry(exc, policy))


def _should_retry(exc: BaseException, policy: RetryPolicy) -> bool:
    if not isinstance(exc, ProviderError) or not exc.retryable:
        return False
    hint = _retry_after(exc)
    return hint is None or hint <= policy.max_retry_after_s


def _retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, ProviderRateLimited | ProviderUnavailable):
        return exc.retry_after_s
    return None


class _Backoff:
    """Full jitter, but at least what the server asked for."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._jitter = wait_random_exponential(
            multiplier=policy.backoff_base_s, max=policy.backoff_max_s
        )

    def __call__(self, state: RetryCallState) -> float:
        delay = float(self._jitter(state))
        hint = _retry_after(state.outcome.exception() if state.outcome else None)
        return delay if hint is None else max(delay, hint)


def _log_retry(state: RetryCallState, provider: str, policy: RetryPolicy) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "provider %s: attempt %d/%d failed (status %s): %s; retrying in %.2fs",
        provider, state.attempt_number, policy.max_retries + 1,
        getattr(exc, "status", None), getattr(exc, "detail", exc), delay,
    )
