"""What channels, the router and the HTTP APIs share about one message's answer.

Model level: this module imports only :mod:`orrad.model` and :mod:`orrad.errors`, so every
layer above may use it. It holds the reply-target protocol, the typing helpers, the stable
error code of a failed run with its user-facing summary and HTTP status, the JSON body of a
reply, and :class:`StoredReply`, the channel-neutral form in which the ledger keeps an
answer (so a repeated request, a redelivery after a restart or a federation relay renders
the very same reply).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, runtime_checkable

import msgspec

from orrad.errors import (
    ContextLengthExceeded,
    MaxTurnsExceeded,
    OrradError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    StoreError,
    UnknownAgent,
)
from orrad.model import Message, Namespace, OutboundError, OutboundMessage, RunSummary, Usage

__all__ = [
    "STATUS_FOR_CODE",
    "Reply",
    "ReplyTarget",
    "StoredReply",
    "best_effort_typing",
    "describe_error",
    "error_body",
    "error_code",
    "no_typing",
    "reply_body",
    "status_for_code",
    "stores_before_send",
]

log = logging.getLogger(__name__)

Reply = OutboundMessage | OutboundError


class _NoTyping:
    """A typing indicator that shows nothing (stateless: one instance serves every run)."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        return None


_NO_TYPING = _NoTyping()


def no_typing() -> AbstractAsyncContextManager[None]:
    """No typing indicator (the default of a channel without one)."""
    return _NO_TYPING


@runtime_checkable
class ReplyTarget(Protocol):
    """Where the answer to a message goes: the channel that received it.

    ``send``/``send_error`` return once the platform confirmed the delivery, and raise
    :class:`~orrad.errors.ChannelSendError` when it failed (``retryable`` when a later
    attempt may succeed).
    """

    async def send(self, response: OutboundMessage) -> None: ...

    async def send_error(self, error: OutboundError) -> None: ...

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]: ...


def stores_before_send(target: ReplyTarget, reply: Reply) -> bool:
    """Whether the answer must be in the ledger before ``target`` sends it.

    True (the safe default) for a send with an effect outside the process — a post, a
    callback — which a restart repeats with exactly the stored answer. A target whose send
    only hands the answer to a caller waiting in this process may define
    ``stores_before_send(reply) -> False``: the answer is then stored together with the
    delivery's outcome, one write instead of two (a crash in between re-runs the message,
    and the session's run id returns the same answer).
    """
    hook = getattr(target, "stores_before_send", None)
    return True if hook is None else bool(hook(reply))


def best_effort_typing(target: ReplyTarget, metadata: Mapping[str, Any]
                       ) -> AbstractAsyncContextManager[None]:
    """The target's typing indicator, if it works: a failing indicator (a platform hiccup, a
    plugin bug) is logged and never fails or delays the run it decorates."""
    try:
        manager = target.start_typing(metadata)
    except Exception as exc:
        log.warning("typing indicator failed: %s: %s", type(exc).__name__, exc)
        return _NO_TYPING
    # Most channels have none: nothing to guard then.
    return manager if manager is _NO_TYPING else _BestEffortTyping(manager)


class _BestEffortTyping:
    """Enters and exits ``manager``, logging (never raising) what fails in it."""

    __slots__ = ("_entered", "_manager")

    def __init__(self, manager: AbstractAsyncContextManager[None]) -> None:
        self._manager = manager
        self._entered = False

    async def __aenter__(self) -> None:
        try:
            await self._manager.__aenter__()
        except Exception as exc:
            log.warning("typing indicator failed: %s: %s", type(exc).__name__, exc)
            return
        self._entered = True

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._entered:
            await _exit_typing(self._manager, value)


async def _exit_typing(manager: AbstractAsyncContextManager[None],
                       exc: BaseException | None) -> None:
    try:
        await manager.__aexit__(type(exc) if exc else None, exc,
                                exc.__traceback__ if exc else None)
    except Exception as error:
        log.warning("typing indicator failed to stop: %s: %s", type(error).__name__, error)


# -- errors: code, summary, HTTP status ----------------------------------------------------

def error_code(exc: BaseException) -> str:
    """The stable code a failed run is reported with (CONTRACT §4 error shape)."""
    if isinstance(exc, UnknownAgent):
        return "unknown_agent"
    if isinstance(exc, ProviderError):
        return "provider_error"
    if isinstance(exc, StoreError):
        return "unavailable"
    if isinstance(exc, MaxTurnsExceeded):
        return "max_turns_exceeded"
    if not isinstance(exc, OrradError):
        return "internal"
    # Errors that carry their own code (federation refusals, a peer's code passed back).
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else "agent_error"


_PROVIDER_SUMMARY: Mapping[type[ProviderError], str] = MappingProxyType({
    ProviderAuthError: "the model provider rejected our credentials",
    ProviderRateLimited: "the model provider is rate limiting us; try again later",
    ProviderUnavailable: "the model provider is unavailable; try again later",
    ContextLengthExceeded: "the conversation is too long for the model",
})


def describe_error(exc: BaseException) -> str:
    """The text a user sees for a failed run.

    Provider failures are summarised (kind and HTTP status): a vendor's error body can echo
    keys, organisation ids or internals, and this text may be posted in a public channel;
    the full detail is in the log. Our own errors are shown verbatim, foreign ones generic.
    """
    if isinstance(exc, ProviderError):
        status = f" (HTTP {exc.status})" if exc.status else ""
        return f"provider error: {_PROVIDER_SUMMARY.get(type(exc), 'the model failed')}{status}"
    if isinstance(exc, StoreError):
        return "the state store is unavailable; try again later"
    if isinstance(exc, OrradError):
        return str(exc)
    return f"internal error ({type(exc).__name__})"


# HTTP status for each error code; any other code (a peer's own) is 502.
STATUS_FOR_CODE: Mapping[str, int] = MappingProxyType({
    "bad_request": 400,
    "unknown_agent": 400,
    "unauthorized": 401,
    "bad_signature": 401,
    "clock_skew": 401,
    "replayed": 401,
    "unknown_peer": 401,
    "wrong_destination": 401,
    "not_found": 404,
    "in_progress": 409,
    "loop_detected": 508,
    "provider_error": 502,
    "max_turns_exceeded": 502,
    "agent_error": 502,
    "internal": 502,
    "interrupted": 503,
    "unavailable": 503,
    "expired": 504,
    "timeout": 504,
})


def status_for_code(code: str) -> int:
    return STATUS_FOR_CODE.get(code, 502)


def error_body(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


def reply_body(reply: OutboundMessage, request_id: str, instance: str) -> dict[str, Any]:
    """The JSON of a successful answer (webhook 200/callback, ``/v1/messages``, relay)."""
    summary = reply.run_result
    return {
        "id": request_id,
        "message": reply.message.content,
        "namespace": reply.namespace.key,
        "agent": summary.agent,
        "instance": summary.instance or instance,
        "usage": summary.total_usage.to_json(),
    }


class StoredReply(msgspec.Struct, omit_defaults=True):
    """An answer as the ledger keeps it: the final text or the error, channel-neutral."""

    ok: bool
    content: str = ""
    agent: str = ""
    instance: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    code: str = ""
    error: str = ""

    @classmethod
    def of(cls, reply: Reply) -> StoredReply:
        if isinstance(reply, OutboundMessage):
            summary = reply.run_result
            return cls(True, reply.message.content, summary.agent, summary.instance,
                       summary.total_usage.input_tokens, summary.total_usage.output_tokens)
        return cls(False, code=reply.code, error=reply.error)

    def to_reply(self, namespace: Namespace, metadata: dict[str, Any],
                 reply_to: dict[str, Any] | None = None,
                 delivery_id: str | None = None) -> Reply:
        if self.ok:
            usage = Usage(self.input_tokens, self.output_tokens)
            return OutboundMessage(namespace, Message.assistant(self.content),
                                   RunSummary(self.agent, usage, instance=self.instance),
                                   metadata, delivery_id=delivery_id,
                                   reply_to=dict(reply_to or {}))
        return OutboundError(namespace, self.error, metadata, code=self.code,
                             delivery_id=delivery_id, reply_to=dict(reply_to or {}))
