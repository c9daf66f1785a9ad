"""``discord``: a Discord bot, reading the gateway and answering through REST.

Exactly-once, end to end (CONTRACT §7): Discord delivers an event 0, 1 or N times, and a
process can die at any point. So every ``MESSAGE_CREATE`` the bot should answer is first
*claimed* in the durable inbox under its message id (a repeat is dropped), and only then is
the gateway's resume point moved past it. An answer is stored in the inbox (state
``answered``, with the number of chunks already posted) before it is posted, each chunk
with a nonce derived from (message id, chunk index) so a retried post returns the
original, and the entry becomes ``delivered`` after the last chunk. When the channel
starts, it finishes what an earlier run left open: messages claimed but never answered go
to the agent again (or, with ``routing.rerun_interrupted: false``, get an "interrupted"
apology instead), answers stored but not fully posted are posted (the rest of them).

An answer whose post fails for a reason that may pass (Discord's 5xx beyond the REST
client's retries, a long rate limit, a Cloudflare ban pause, a network outage) stays
``answered`` in the inbox, and a redelivery task posts it again, with a capped exponential
backoff, while the channel runs; the deterministic nonces keep that exactly-once. Only a
refusal of the message itself (403/404 on that channel...) records it ``failed``.

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
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from orrad.channels.base import BaseChannel, ChannelContext, no_typing
from orrad.channels.discord.gateway import (
    GatewayClient,
    GatewayOptions,
    KVSessionPersistence,
    MemorySessionPersistence,
    SessionPersistence,
)
from orrad.channels.discord.inbound import InboundRules, intents_for, parse_message_create
from orrad.channels.discord.rest import RestClient, RestError, RestOptions
from orrad.channels.discord.split import DISCORD_LIMIT, MAX_CHUNKS, TRUNCATED, split_message
from orrad.config import ChannelConfig, DiscordChannelConfig
from orrad.errors import ChannelSendError, FatalChannelError, InvalidNamespace, StoreError
from orrad.model import InboundMessage, Message, Namespace, OutboundError, OutboundMessage
from orrad.state.db import Database
from orrad.state.inbox import Inbox, InboxEntry
from orrad.state.kv import KeyValueStore

__all__ = ["MAX_CHUNKS", "TRUNCATED", "DiscordChannel", "DiscordOptions", "reply_nonce"]

log = logging.getLogger(__name__)

EMPTY_ANSWER = "(the agent returned an empty answer)"
INTERRUPTED = ("Sorry, something went wrong: interrupted: the daemon restarted before "
               "answering this message; please send it again.")
MAX_ERROR_CHARS = 300
_DEDUPE_MEMORY = 10_000  # message ids remembered when there is no database

# Message ids handed to the router and not yet answered, per database and inbox source.
# Process-wide because a restarted channel is a new object while the previous
# generation's messages may still be running: its replay must not run them twice.
_IN_FLIGHT: weakref.WeakKeyDictionary[Database, dict[str, set[str]]] = (
    weakref.WeakKeyDictionary())


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
    # Redelivery of answers whose post failed: first wait, doubling up to the cap (the cap
    # is also how often the inbox is checked when nothing failed here).
    redeliver_initial_s: float = 1.0
    redeliver_max_s: float = 60.0


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
        self.source = f"discord:{self.name}"
        where = context.file or f"the channel file of {self.name!r}"
        self.rest = RestClient(config.token, config.api_base, where=where,
                               options=self.options.rest, rng=self.options.rng)
        self.rest.on_ban = self._on_rest_ban
        db = context.db
        self._inbox = Inbox(db) if db is not None else None
        self._in_flight: set[str] = (
            _IN_FLIGHT.setdefault(db, {}).setdefault(self.source, set()) if db is not None
            else set())
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
        self._replayed = trio.Event()
        self._backlog: list[InboxEntry] = []
        self._typing: dict[str, tuple[int, trio.CancelScope]] = {}
        self._redeliver = trio.Event()  # set: an answer is waiting to be posted again
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
            if self._inbox is not None:
                # Taken before the gateway runs: anything claimed from now on is handled
                # by this run, not replayed.
                self._backlog = await self._inbox.open_entries(self.source)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_fatal)
                if self._inbox is not None:
                    nursery.start_soon(self._redeliver_loop, self._inbox)
                try:
                    await self.gateway.run()
                except FatalChannelError as exc:
                    fatal = exc
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
            if self._nursery is not None:
                self._nursery.start_soon(self._replay_backlog)

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
        until = time.strftime("%H:%M", time.localtime(time.time() + duration))
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
        self._redeliver.set()

    # -- inbound -------------------------------------------------------------------------

    async def _on_dispatch(self, event: str, data: dict[str, Any]) -> bool:
        """Handle one gateway event; true when a message was claimed in the inbox (the
        gateway then saves its resume point at once)."""
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
        inbound.metadata["channel"] = self.name
        if self._inbox is not None:
            new, _ = await self._inbox.claim(
                self.source, message_id, inbound.namespace.key,
                {"content": inbound.message.content, "metadata": inbound.metadata})
        else:
            new = message_id not in self._seen
            self._seen[message_id] = None
            while len(self._seen) > _DEDUPE_MEMORY:
                self._seen.popitem(last=False)
        if not new:
            log.info("%s: message %s seen before; not answering it again", self.name,
                     message_id)
            return False
        # Marked before anything can wait, so the backlog replay never takes it too.
        self._in_flight.add(message_id)
        handed = False
        try:
            # Messages left over from an earlier run go first.
            await self._replayed.wait()
            handed = await self._hand_over(message_id, inbound)
        finally:
            if not handed:
                self._in_flight.discard(message_id)
        return self._inbox is not None

    async def _hand_over(self, message_id: str, inbound: InboundMessage) -> bool:
        """Give ``inbound`` to the router (via :meth:`receive`); False when closing.

        A message not handed over stays claimed-but-unanswered in the inbox, and the
        channel's next start answers it.
        """
        self._in_flight.add(message_id)
        handed = False
        try:
            await self.deliver(inbound)
            handed = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            log.info("%s: stopping; message %s will be answered after the restart",
                     self.name, message_id)
        finally:
            if not handed:
                self._in_flight.discard(message_id)
        return handed

    async def _replay_backlog(self) -> None:
        """Finish what an earlier run left open (see the module docstring)."""
        rerun = self.context.daemon.routing.rerun_interrupted
        try:
            backlog, self._backlog = self._backlog, []
            for entry in backlog:
                if entry.delivery_id in self._in_flight:
                    continue  # an earlier generation in this process is still on it
                metadata = dict(entry.payload.get("metadata") or {})
                if entry.state == "answered" and entry.reply is not None:
                    self._in_flight.add(entry.delivery_id)
                    log.info("%s: posting the stored answer to message %s", self.name,
                             entry.delivery_id)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._repost, entry.delivery_id, metadata,
                                             str(entry.reply.get("content", "")))
                    continue
                if not rerun:
                    # routing.rerun_interrupted: false: the user hears it was interrupted.
                    self._in_flight.add(entry.delivery_id)
                    log.info("%s: message %s was accepted before a restart and not "
                             "answered; telling the user (rerun_interrupted is false)",
                             self.name, entry.delivery_id)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._repost, entry.delivery_id, metadata,
                                             INTERRUPTED)
                    continue
                try:
                    namespace = Namespace.parse(entry.namespace)
                except InvalidNamespace:
                    continue
                log.info("%s: answering message %s, accepted before a restart", self.name,
                         entry.delivery_id)
                content = str(entry.payload.get("content", ""))
                await self._hand_over(
                    entry.delivery_id, InboundMessage(namespace, Message.user(content), metadata))
        finally:
            self._replayed.set()

    async def _repost(self, message_id: str, metadata: dict[str, Any], content: str) -> None:
        try:
            await self._post(metadata, content)
        except ChannelSendError as exc:
            log.warning("%s: stored answer to message %s not delivered: %s", self.name,
                        message_id, exc)
        except Exception:
            log.exception("%s: stored answer to message %s not delivered", self.name,
                          message_id)
        finally:
            self._in_flight.discard(message_id)

    async def _redeliver_loop(self, inbox: Inbox) -> None:
        """Post again the answers whose post failed for a passing reason (module docstring).

        Woken by such a failure; then every pass waits longer (doubling, capped) while
        something is left. Also looks every ``redeliver_max_s`` anyway, for answers left by
        an earlier channel generation of this process.
        """
        delay = self.options.redeliver_initial_s
        while self.rest.fatal is None:
            with trio.move_on_after(self.options.redeliver_max_s):
                await self._redeliver.wait()
            await trio.sleep(delay)
            self._redeliver = trio.Event()  # a failure during this pass sets the new one
            if self.rest.fatal is not None:
                return
            try:
                await self._redeliver_once(inbox)
            except StoreError as exc:
                log.warning("%s: cannot read the inbox to post answers again: %s",
                            self.name, exc)
                self._redeliver.set()
            if self._redeliver.is_set():
                delay = min(delay * 2, self.options.redeliver_max_s)
            else:
                delay = self.options.redeliver_initial_s

    async def _redeliver_once(self, inbox: Inbox) -> None:
        for entry in await inbox.open_entries(self.source):
            if (entry.state != "answered" or entry.reply is None
                    or entry.delivery_id in self._in_flight):
                continue  # not answered yet, or being posted right now
            self._in_flight.add(entry.delivery_id)
            log.info("%s: posting the answer to message %s again", self.name,
                     entry.delivery_id)
            await self._repost(entry.delivery_id, dict(entry.payload.get("metadata") or {}),
                               str(entry.reply.get("content", "")))

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
        tracked = self._inbox is not None and message_id is not None
        self._sends += 1
        # Everything in the try: whatever fails, the message id leaves _in_flight (so the
        # redelivery task, or the next start, can take the answer up again).
        try:
            channel_id = metadata.get("channel_id")
            if not isinstance(channel_id, str) or not channel_id:
                if tracked:
                    await self._record(message_id, "failed")  # no retry can fix that
                raise ChannelSendError("missing channel_id in metadata")
            chunks = self._chunks(content)
            done = await self._begin_answer(message_id, content) if tracked else 0
            if done < 0:
                return  # this very answer was delivered already
            for index in range(done, len(chunks)):
                nonce = (reply_nonce(message_id, index) if message_id is not None
                         else secrets.token_hex(12))
                await self.rest.create_message(
                    channel_id, chunks[index],
                    reply_to=message_id if index == 0 else None, nonce=nonce)
                if tracked:
                    await self._record(message_id, "answered",
                                       {"content": content, "sent": index + 1})
            if tracked:
                await self._record(message_id, "delivered")
        except FatalChannelError as exc:
            self._set_fatal(exc)
            raise
        except RestError as exc:
            if tracked and not exc.retryable:
                # Discord refused the message itself (permissions, unknown channel...):
                # posting it again would fail the same way.
                await self._record(message_id, "failed")
            elif tracked:
                self._redeliver.set()
            raise
        except ChannelSendError:
            raise  # our own refusal (no channel id): nothing a retry changes
        except Exception:
            if tracked:
                self._redeliver.set()
            raise
        finally:
            self._sends -= 1
            if message_id is not None:
                self._in_flight.discard(message_id)
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

    async def _begin_answer(self, message_id: str | None, content: str) -> int:
        """Store the answer before posting; return how many chunks are already posted,
        or -1 when the same answer was delivered completely before."""
        assert self._inbox is not None and message_id is not None
        entry = await self._inbox.get(self.source, message_id)
        done = 0
        if entry is not None and entry.state == "delivered" and entry.reply is not None and (
                entry.reply.get("content") == content):
            return -1
        if entry is not None and entry.reply is not None and entry.state == "answered" and (
                entry.reply.get("content") == content):
            sent = entry.reply.get("sent", 0)
            done = sent if isinstance(sent, int) else 0
        await self._inbox.record(self.source, message_id, "answered",
                                 {"content": content, "sent": done})
        return done

    async def _record(self, message_id: str | None, state: Any,
                      reply: dict[str, Any] | None = None) -> None:
        assert self._inbox is not None and message_id is not None
        await self._inbox.record(self.source, message_id, state, reply)

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
