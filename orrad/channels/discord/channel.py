"""``discord``: a Discord bot, reading the gateway and answering through REST.

Exactly-once, end to end (CONTRACT §7): Discord delivers an event 0, 1 or N times, and a
process can die at any point. So every ``MESSAGE_CREATE`` the bot should answer goes to
the pipeline under its message id (``delivery_id``) and the gateway's resume point moves
past it only once the pipeline's ledger has recorded it; a repeat is dropped there. While
the state store cannot be written the channel does not acknowledge (it keeps trying the
same message), so a restart replays what was not stored. The pipeline keeps each answer
until :meth:`send` confirms it was posted and delivers it again after a restart; every
chunk is posted with a nonce derived from (message id, chunk index) and ``enforce_nonce``,
so a repeated post returns the original instead of a second message. A post that fails
for a reason that may pass (5xx beyond the REST client's retries, a long rate limit, a ban
pause, a network outage) raises a *retryable* send error and the pipeline tries again
later; a refusal of the message itself (403/404 on that channel...) is final.

``serve`` calls ``task_status.started()`` when the first gateway session is ready, or when
the first connection attempt fails for a reason worth retrying (the channel then reports
itself down and keeps reconnecting, instead of staying "starting" while Discord is
unreachable).
"""

from __future__ import annotations

import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from orrad.channels.base import BaseChannel, ChannelContext
from orrad.channels.discord.gateway import (
    GatewayClient,
    GatewayOptions,
    KVSessionPersistence,
    MemorySessionPersistence,
    SessionPersistence,
)
from orrad.channels.discord.inbound import InboundRules, intents_for, parse_message_create
from orrad.channels.discord.rest import RestClient, RestOptions
from orrad.channels.discord.split import DISCORD_LIMIT, MAX_CHUNKS, TRUNCATED, split_message
from orrad.config import ChannelConfig, DiscordChannelConfig
from orrad.delivery import no_typing
from orrad.errors import ChannelClosed, ChannelSendError, FatalChannelError
from orrad.model import OutboundError, OutboundMessage
from orrad.state.kv import KeyValueStore
from orrad.timefmt import utc_iso

__all__ = ["MAX_CHUNKS", "TRUNCATED", "DiscordChannel", "DiscordOptions", "reply_nonce"]

log = logging.getLogger(__name__)

EMPTY_ANSWER = "(the agent returned an empty answer)"
MAX_ERROR_CHARS = 300
DEDUPE_MEMORY = 10_000  # message ids this generation remembers (the ledger remembers all)
STORE_RETRY_MAX_S = 5.0


def reply_nonce(message_id: str, index: int) -> str:
    """The nonce of chunk ``index`` of the answer to ``message_id`` (≤ 25 characters).

    Deterministic, so a retry or a re-post after a restart repeats it and Discord
    (``enforce_nonce``) returns the message it already created instead of a second one.
    """
    return hashlib.blake2b(f"{message_id}:{index}".encode(), digest_size=12).hexdigest()


@dataclass
class DiscordOptions:
    """Knobs that are not configuration (tests shrink the times)."""

    gateway: GatewayOptions | None = None
    rest: RestOptions | None = None
    typing_interval_s: float = 8.0  # Discord's indicator lasts ~10 s
    rng: random.Random | None = None


class DiscordChannel(BaseChannel):
    """A Discord bot channel (``kind: discord``); see the module docstring."""

    kind: ClassVar[str] = "discord"
    config_type: ClassVar[type[ChannelConfig]] = DiscordChannelConfig

    def __init__(
        self,
        config: ChannelConfig,
        context: ChannelContext,
        *,
        options: DiscordOptions | None = None,
    ) -> None:
        super().__init__(config, context)
        assert isinstance(config, DiscordChannelConfig)
        self.discord_config = config
        self.options = options or DiscordOptions()
        self.rules = InboundRules.from_config(config)
        self.source = f"discord:{self.name}"  # scope of the resume state in the database
        where = context.file or f"the channel file of {self.name!r}"
        self.rest = RestClient(config.token, config.api_base, where=where,
                               options=self.options.rest, rng=self.options.rng)
        self.rest.on_ban = self._on_rest_ban
        db = context.db
        persistence: SessionPersistence = (
            KVSessionPersistence(KeyValueStore(db, self.source)) if db is not None
            else MemorySessionPersistence())
        self.gateway = GatewayClient(
            config.token, intents_for(config.filter), self.rest,
            persistence=persistence, on_dispatch=self._on_dispatch, on_ready=self._on_ready,
            on_down=self._on_down, options=self.options.gateway, rng=self.options.rng,
            where=where,
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._task_status: trio.TaskStatus[None] | None = None
        self._started = False
        self._nursery: trio.Nursery | None = None
        self._serving = False
        self._sends = 0
        self._fatal: FatalChannelError | None = None
        self._fatal_event = trio.Event()
        self._closing = False
        self._typing: dict[str, tuple[int, trio.CancelScope]] = {}
        self._gateway_up = False
        self._ban_reason: str | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the gateway until :meth:`aclose`; raise ``FatalChannelError`` when Discord
        rejects the token or intents, other errors to be restarted."""
        self._task_status = task_status
        self._serving = True
        fatal: FatalChannelError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_fatal)
                try:
                    await self.gateway.run()
                except FatalChannelError as exc:
                    fatal = exc
                except ChannelClosed:
                    if not self._closing:
                        raise
                nursery.cancel_scope.cancel()
            self._nursery = None
            fatal = fatal or self._fatal
            if fatal is not None:
                # Whatever the session was, it is of no use after a rejected token.
                await self.gateway.persistence.clear()
            else:
                # Stopped before ever connecting: still "started", as the supervisor
                # expects of a serve that returns normally.
                self._mark_started()
        finally:
            self._nursery = None
            self._serving = False
            self.close_intake()
            with trio.move_on_after(2.0, shield=True):
                await self._release_rest()
        if fatal is not None:
            raise fatal

    async def aclose(self, *, removed: bool) -> None:
        """Stop reading Discord: close the gateway with 1000 when the channel is removed
        (the Discord session ends) and 4000 otherwise (a restarted daemon resumes it).

        Answers still being computed are posted when ready; REST outlives ``serve``.
        """
        self._closing = True
        await self.gateway.close(1000 if removed else 4000)
        self.close_intake()

    async def _watch_fatal(self) -> None:
        await self._fatal_event.wait()
        await self.gateway.close(4000)

    def _set_fatal(self, exc: FatalChannelError) -> None:
        if self._fatal is None:
            self._fatal = exc
            self._fatal_event.set()

    async def _release_rest(self) -> None:
        # The HTTP client closes once nothing uses it: not serving and no send running.
        if not self._serving and self._sends == 0:
            await self.rest.aclose()

    def _mark_started(self) -> None:
        if not self._started and self._task_status is not None:
            self._started = True
            self._task_status.started()

    def _on_ready(self, resumed: bool) -> None:
        self._mark_started()
        self._gateway_up = True
        if self._ban_reason is not None:
            # Reading works again, but no answer can be posted: still down.
            self.context.report_connection(False, self._ban_reason)
            return
        self.context.report_connection(True, "gateway resumed" if resumed else "gateway ready")

    def _on_down(self, reason: str) -> None:
        self._mark_started()
        self._gateway_up = False
        self.context.report_connection(False, reason)

    def _on_rest_ban(self, duration: float) -> None:
        """The REST client paused every request for ``duration`` s (Cloudflare ban)."""
        until = utc_iso(time.time() + duration)
        self._ban_reason = f"Discord REST banned us (invalid requests); pausing until {until}"
        self.context.report_connection(False, self._ban_reason)
        if self._nursery is not None:
            self._nursery.start_soon(self._ban_over)

    async def _ban_over(self) -> None:
        await trio.sleep(self.rest.banned_for())
        if self._ban_reason is None or self.rest.banned_for() > 0:
            return  # already reported, or a later ban (with its own watcher)
        self._ban_reason = None
        log.info("%s: the Discord REST pause is over", self.name)
        if self._gateway_up:
            self.context.report_connection(True, "Discord REST ban over")

    # -- inbound -------------------------------------------------------------------------

    async def _on_dispatch(self, event: str, data: dict[str, Any]) -> bool:
        """Handle one gateway event; true when a message was recorded by the pipeline (the
        gateway then saves its resume point at once). Returns only once the message is
        stored: while the store refuses it, the same message is offered again."""
        if event != "MESSAGE_CREATE":
            return False
        bot_id = self.gateway.user_id
        if bot_id is None:
            log.warning("%s: MESSAGE_CREATE before the bot's user id is known; ignored",
                        self.name)
            return False
        parsed = parse_message_create(data, bot_id=bot_id, rules=self.rules)
        if parsed is None:
            return False
        message_id, inbound = parsed.message_id, parsed.inbound
        if message_id in self._seen:
            log.info("%s: message %s seen before; not answering it again", self.name,
                     message_id)
            return True
        inbound.metadata["channel"] = self.name
        inbound.delivery_id = message_id
        delay = 0.5
        while True:
            # Raises ChannelClosed while stopping: the gateway then leaves the resume point
            # before this message, and the next start reads it again.
            receipt = await self.accept(inbound)
            if receipt.error is None:
                break
            if delay == 0.5:
                log.error("%s: message %s could not be stored (%s); not acknowledging it, "
                          "trying again", self.name, message_id, receipt.error)
            await trio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX_S)
        self._seen[message_id] = None
        while len(self._seen) > DEDUPE_MEMORY:
            self._seen.popitem(last=False)
        if not receipt.new:
            log.info("%s: message %s seen before; not answering it again", self.name,
                     message_id)
        return True

    # -- outbound ------------------------------------------------------------------------

    async def send(self, response: OutboundMessage) -> None:
        """Post the answer as a reply to the user's message, split to fit Discord."""
        await self._post(response.metadata, response.message.content)

    async def send_error(self, error: OutboundError) -> None:
        """Post a short apology with the error text."""
        text = error.error.strip()
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 1] + "…"
        await self._post(error.metadata, f"Sorry, something went wrong: {text}")

    async def _post(self, metadata: Mapping[str, Any], content: str) -> None:
        message_id = metadata.get("message_id")
        message_id = message_id if isinstance(message_id, str) and message_id else None
        channel_id = metadata.get("channel_id")
        if not isinstance(channel_id, str) or not channel_id:
            raise ChannelSendError("missing channel_id in metadata")  # no retry can fix it
        chunks = self._chunks(content)
        self._sends += 1
        try:
            for index in range(len(chunks)):
                nonce = (reply_nonce(message_id, index) if message_id is not None
                         else secrets.token_hex(12))
                await self.rest.create_message(
                    channel_id, chunks[index],
                    reply_to=message_id if index == 0 else None, nonce=nonce)
        except FatalChannelError as exc:
            # The token was rejected: the channel fails; the answer waits for a fixed one.
            self._set_fatal(exc)
            raise ChannelSendError(str(exc), retryable=True) from None
        except ChannelSendError:
            raise  # RestError says itself whether a retry may help
        except Exception as exc:
            log.exception("%s: posting an answer failed", self.name)
            raise ChannelSendError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        finally:
            self._sends -= 1
            with trio.move_on_after(2.0, shield=True):
                await self._release_rest()

    def _chunks(self, content: str) -> list[str]:
        """The messages ``content`` is posted as (never none; deterministic, so a re-post
        repeats the same chunks and nonces)."""
        try:
            chunks = split_message(content)
        except Exception:
            # A bug in splitting must not cost the user the answer: cut it plainly.
            log.exception("%s: cannot split an answer of %d characters; cutting it plainly",
                          self.name, len(content))
            chunks = [c for i in range(0, len(content), DISCORD_LIMIT)
                      if (c := content[i: i + DISCORD_LIMIT]).strip()]
            if len(chunks) > MAX_CHUNKS:
                chunks = [*chunks[: MAX_CHUNKS - 1], TRUNCATED]
        if len(chunks) == MAX_CHUNKS and chunks[-1] == TRUNCATED:
            log.warning("%s: answer of %d characters needs more than %d messages; sending "
                        "%d and a truncation notice", self.name, len(content), MAX_CHUNKS,
                        MAX_CHUNKS - 1)
        return chunks or [EMPTY_ANSWER]

    # -- typing --------------------------------------------------------------------------

    def start_typing(self, metadata: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        """Show "typing…" in the message's Discord channel until the context exits.

        Triggered at once and every ``typing_interval_s``; one loop per Discord channel
        however many answers are being computed there. Best effort: a failing typing
        call never delays or fails the answer.
        """
        channel_id = metadata.get("channel_id")
        if not isinstance(channel_id, str) or not channel_id or self._nursery is None:
            return no_typing()
        return self._typing_context(channel_id)

    @asynccontextmanager
    async def _typing_context(self, channel_id: str) -> AsyncIterator[None]:
        count, scope = self._typing.get(channel_id) or (0, trio.CancelScope())
        if count == 0 and self._nursery is not None:
            self._nursery.start_soon(self._typing_loop, channel_id, scope)
        self._typing[channel_id] = (count + 1, scope)
        try:
            yield
        finally:
            count, scope = self._typing[channel_id]
            if count <= 1:
                del self._typing[channel_id]
                scope.cancel()
            else:
                self._typing[channel_id] = (count - 1, scope)

    async def _typing_loop(self, channel_id: str, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await self.rest.trigger_typing(channel_id)
                except FatalChannelError as exc:
                    self._set_fatal(exc)
                    return
                except Exception as exc:
                    log.debug("%s: typing indicator failed: %s", self.name, exc)
                await trio.sleep(self.options.typing_interval_s)
