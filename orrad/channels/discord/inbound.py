"""From a gateway ``MESSAGE_CREATE`` to an :class:`~orrad.model.InboundMessage`.

Pure functions, no I/O: which messages the bot answers (``filter``, ``allowed_users``, no
bots, never itself), what text the agent sees (bot mentions stripped, ``@agent`` picked
out), and which session it lands in (CONTRACT §3: ``<prefix>:<guild id or dm>:<channel
id>[:<author id>]``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orrad.config import DiscordChannelConfig
from orrad.errors import InvalidNamespace
from orrad.model import InboundMessage, Message, Namespace

__all__ = [
    "DIRECT_MESSAGES",
    "GUILDS",
    "GUILD_MESSAGES",
    "MESSAGE_CONTENT",
    "InboundRules",
    "ParsedMessage",
    "detect_agent_mention",
    "intents_for",
    "parse_message_create",
    "strip_bot_mentions",
]

log = logging.getLogger(__name__)

GUILDS = 1 << 0
GUILD_MESSAGES = 1 << 9
DIRECT_MESSAGES = 1 << 12
MESSAGE_CONTENT = 1 << 15  # privileged: must be enabled in the Developer Portal

Filter = Literal["mentions", "all", "dm"]
SessionScope = Literal["user", "channel"]

# DEFAULT and REPLY; joins, pins, thread starters and other system messages are not
# addressed to anyone.
_USER_MESSAGE_TYPES = frozenset({0, 19})


def intents_for(filter: Filter) -> int:
    """The gateway intents a ``filter`` needs, and no more.

    Discord sends the content of DMs and of messages that mention the bot even without
    MESSAGE_CONTENT, so only ``all`` asks for that privileged intent (and only ``all`` can
    be refused with close code 4014).
    """
    if filter == "dm":
        return GUILDS | DIRECT_MESSAGES
    base = GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES
    return base | MESSAGE_CONTENT if filter == "all" else base


@dataclass(frozen=True)
class InboundRules:
    """The parts of a channel's configuration that decide what an inbound message becomes.

    ``allowed_users`` holds user ids and case-folded user names; empty means everyone.
    """

    filter: Filter = "mentions"
    allowed_users: frozenset[str] = frozenset()
    namespace_prefix: Namespace = field(default_factory=lambda: Namespace("discord"))
    session_scope: SessionScope = "user"
    agents: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: DiscordChannelConfig) -> InboundRules:
        return cls(
            filter=config.filter,
            allowed_users=frozenset(u.strip().casefold() for u in config.allowed_users),
            namespace_prefix=Namespace.parse(config.namespace_prefix),
            session_scope=config.session_scope,
            agents=tuple(config.agents),
        )

    def allows(self, author_id: str, username: str) -> bool:
        if not self.allowed_users:
            return True
        return author_id in self.allowed_users or username.casefold() in self.allowed_users


@dataclass(frozen=True)
class ParsedMessage:
    """A message the bot should answer: its Discord id (the dedupe key) and the inbound."""

    message_id: str
    inbound: InboundMessage


def strip_bot_mentions(content: str, bot_id: str) -> str:
    """Remove every ``<@bot_id>`` and ``<@!bot_id>`` (the ``!`` form is deprecated but seen)."""
    return re.sub(rf"<@!?{re.escape(bot_id)}>", "", content)


def detect_agent_mention(content: str, names: Iterable[str]) -> tuple[str | None, str]:
    """Find ``@name`` for one of ``names`` and return ``(name as configured, rest)``.

    Matching is case-insensitive and Unicode-aware, at word boundaries on both sides (so
    ``@At`` does not match ``@Atlas`` and ``me@atlas`` is not a mention). The earliest
    mention in the text wins; at the same position the longest name wins. The mention is
    removed from the text by its position in the original string (orra applied an index
    found in the lower-cased copy to the original, which breaks on non-ASCII text), along
    with one adjoining space. Returns ``(None, content)`` when no name matches.
    """
    ordered = sorted({n for n in names if n}, key=len, reverse=True)
    if not ordered:
        return None, content
    by_folded = {n.casefold(): n for n in reversed(ordered)}
    pattern = re.compile(
        r"(?<![\w@])@(" + "|".join(re.escape(n) for n in ordered) + r")(?!\w)",
        re.IGNORECASE,
    )
    match = pattern.search(content)
    if match is None:
        return None, content
    name = by_folded.get(match.group(1).casefold())
    if name is None:  # a case mapping casefold() and IGNORECASE disagree on
        name = next(n for n in ordered if re.fullmatch(re.escape(n), match.group(1), re.I))
    before, after = content[: match.start()], content[match.end():]
    if before.endswith(" ") and (after.startswith(" ") or not after):
        before = before[:-1]
    elif not before and after.startswith(" "):
        after = after[1:]
    return name, before + after


def _is_snowflake(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit()


def parse_message_create(
    data: Mapping[str, Any], *, bot_id: str, rules: InboundRules
) -> ParsedMessage | None:
    """The message to hand the agent, or ``None`` when the bot should stay silent.

    A field of an unexpected type makes the message malformed (ignored), never an
    exception. Skipped: the bot's own messages (every reply comes back as a MESSAGE_CREATE), other
    bots and webhooks (bot-to-bot loops), system messages, authors not in
    ``allowed_users``, messages the ``filter`` excludes (``mentions``: guild messages
    that mention the bot, plus DMs; ``dm``: DMs only; ``all``: everything), and messages
    with no text left once the bot mention and ``@agent`` are removed.
    """
    message_id, channel_id = data.get("id"), data.get("channel_id")
    author = data.get("author")
    if not (_is_snowflake(message_id) and _is_snowflake(channel_id)) or not isinstance(
        author, Mapping
    ):
        log.debug("ignoring a malformed MESSAGE_CREATE")
        return None
    assert isinstance(message_id, str) and isinstance(channel_id, str)
    author_id = author.get("id")
    if not _is_snowflake(author_id) or author_id == bot_id:
        return None
    assert isinstance(author_id, str)
    if author.get("bot") or author.get("system") or data.get("webhook_id"):
        return None
    kind = data.get("type", 0)
    if not isinstance(kind, int) or isinstance(kind, bool) or kind not in _USER_MESSAGE_TYPES:
        return None
    username = author.get("username")
    username = username if isinstance(username, str) else ""
    if not rules.allows(author_id, username):
        log.debug("ignoring message %s from %s: not in allowed_users", message_id, author_id)
        return None

    guild_id = data.get("guild_id")
    is_dm = guild_id is None
    if not is_dm and not _is_snowflake(guild_id):
        return None
    content = data.get("content")
    content = content if isinstance(content, str) else ""
    if rules.filter == "dm" and not is_dm:
        return None
    if rules.filter == "mentions" and not is_dm and not _mentions_bot(data, content, bot_id):
        return None

    text = strip_bot_mentions(content, bot_id)
    agent, text = detect_agent_mention(text, rules.agents)
    text = text.strip()
    if not text:
        return None

    segments = ["dm" if is_dm else str(guild_id), channel_id]
    if rules.session_scope == "user":
        segments.append(author_id)
    try:
        namespace = rules.namespace_prefix
        for segment in segments:
            namespace = namespace.child(segment)
    except InvalidNamespace as exc:
        log.warning("ignoring message %s: %s", message_id, exc)
        return None
    metadata: dict[str, Any] = {
        "channel_id": channel_id,
        "message_id": message_id,
        "guild_id": None if is_dm else guild_id,
        "author_id": author_id,
        "author_name": username,
    }
    if agent is not None:
        metadata["agent"] = agent
    return ParsedMessage(message_id, InboundMessage(namespace, Message.user(text), metadata))


def _mentions_bot(data: Mapping[str, Any], content: str, bot_id: str) -> bool:
    mentions = data.get("mentions")
    if isinstance(mentions, list) and any(
        isinstance(m, Mapping) and m.get("id") == bot_id for m in mentions
    ):
        return True
    return re.search(rf"<@!?{re.escape(bot_id)}>", content) is not None
