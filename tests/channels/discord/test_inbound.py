"""MESSAGE_CREATE → InboundMessage: filters, allowed users, mentions, @agent, namespaces."""

from __future__ import annotations

from typing import Any

import pytest

from orrad.channels.discord.inbound import (
    DIRECT_MESSAGES,
    GUILD_MESSAGES,
    GUILDS,
    MESSAGE_CONTENT,
    InboundRules,
    detect_agent_mention,
    intents_for,
    parse_message_create,
    strip_bot_mentions,
)
from orrad.config import DiscordChannelConfig
from orrad.model import Namespace

BOT = "1000"


def message(content: str, *, guild: str | None = "300", author: str = "500",
            name: str = "Alice", mentions: list[str] | None = None, **extra: Any
            ) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "9001", "channel_id": "200", "type": 0, "content": content,
        "author": {"id": author, "username": name},
        "mentions": [{"id": m} for m in (mentions or [])],
    }
    if guild is not None:
        data["guild_id"] = guild
    data.update(extra)
    return data


def rules(**kwargs: Any) -> InboundRules:
    config = DiscordChannelConfig(kind="discord", name="bot", token="t", **kwargs)
    return InboundRules.from_config(config)


def parse(data: dict[str, Any], **kwargs: Any) -> tuple[str, str, dict[str, Any]] | None:
    parsed = parse_message_create(data, bot_id=BOT, rules=rules(**kwargs))
    if parsed is None:
        return None
    inbound = parsed.inbound
    assert parsed.message_id == data["id"]
    return inbound.namespace.key, inbound.message.content, inbound.metadata


def test_intents_per_filter() -> None:
    assert intents_for("all") == GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT
    assert intents_for("all") == 37377
    # Mentions and DMs carry their content without the privileged intent.
    assert intents_for("mentions") == GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES
    assert intents_for("dm") == GUILDS | DIRECT_MESSAGES


def test_mention_in_guild_is_answered_with_mention_stripped() -> None:
    result = parse(message(f"<@{BOT}> what is 2+2?", mentions=[BOT]))
    assert result == ("discord:300:200:500", "what is 2+2?", {
        "channel_id": "200", "message_id": "9001", "guild_id": "300",
        "author_id": "500", "author_name": "Alice"})


def test_legacy_nickname_mention_and_content_only_mention() -> None:
    # <@!id> is deprecated but still seen; a mention in content counts even if the
    # mentions array is missing.
    result = parse(message(f"hey <@!{BOT}>   there <@{BOT}>"))
    assert result is not None
    assert result[1] == "hey    there"


def test_mentions_filter_skips_unmentioned_guild_messages_but_takes_dms() -> None:
    assert parse(message("just chatting")) is None
    assert parse(message("<@2000> not me", mentions=["2000"])) is None
    dm = parse(message("hello in private", guild=None))
    assert dm is not None and dm[0] == "discord:dm:200:500"
    assert dm[2]["guild_id"] is None


def test_all_filter_takes_everything() -> None:
    assert parse(message("just chatting"), filter="all") is not None


def test_dm_filter_takes_only_dms() -> None:
    assert parse(message(f"<@{BOT}> hi", mentions=[BOT]), filter="dm") is None
    assert parse(message("hi", guild=None), filter="dm") is not None


def test_own_and_other_bots_and_system_messages_are_skipped() -> None:
    assert parse(message("echo: hi", author=BOT), filter="all") is None
    other_bot = message("beep", author="77")
    other_bot["author"]["bot"] = True
    assert parse(other_bot, filter="all") is None
    assert parse(message("hook", webhook_id="55"), filter="all") is None
    assert parse(message("joined", type=7), filter="all") is None
    assert parse(message("a reply", type=19), filter="all") is not None


def test_allowed_users_by_id_or_case_insensitive_name() -> None:
    allowed = ["ALICE", "777"]
    assert parse(message("hi", guild=None), allowed_users=allowed) is not None
    assert parse(message("hi", guild=None, name="Bob", author="777"),
                 allowed_users=allowed) is not None
    assert parse(message("hi", guild=None, name="Bob", author="778"),
                 allowed_users=allowed) is None


def test_empty_after_stripping_is_ignored() -> None:
    assert parse(message(f"<@{BOT}>   ", mentions=[BOT])) is None
    assert parse(message("@atlas", guild=None), agents=["atlas"]) is None


def test_channel_scope_and_custom_prefix() -> None:
    result = parse(message("hi", guild=None), session_scope="channel",
                   namespace_prefix="tenant:acme")
    assert result is not None and result[0] == "tenant:acme:dm:200"


def test_agent_mention_selects_agent() -> None:
    result = parse(message("@Atlas what is 2+2?", guild=None), agents=["atlas", "zeus"])
    assert result is not None
    assert result[1] == "what is 2+2?"
    assert result[2]["agent"] == "atlas"  # as configured


@pytest.mark.parametrize(("text", "expected"), [
    ("@Atlas what is 2+2?", ("Atlas", "what is 2+2?")),
    ("ask @atlas now", ("Atlas", "ask now")),
    ("ask @ATLAS", ("Atlas", "ask")),
    ("@Atlasx hello", (None, "@Atlasx hello")),  # word boundary after
    ("mail me@atlas.com", (None, "mail me@atlas.com")),  # word boundary before
    ("@At hello", ("At", "hello")),
])
def test_detect_agent_mention(text: str, expected: tuple[str | None, str]) -> None:
    assert detect_agent_mention(text, ["Atlas", "At"]) == expected


def test_detect_agent_mention_prefers_longest_at_same_place() -> None:
    assert detect_agent_mention("@Atlas-2 go", ["Atlas", "Atlas-2"]) == ("Atlas-2", "go")
    assert detect_agent_mention("@Atlas go", ["At"]) == (None, "@Atlas go")


def test_detect_agent_mention_is_unicode_safe() -> None:
    # Lower-casing "İ" changes the string's length: orra's byte index then cut the wrong
    # place. Here the removal uses positions in the original text.
    text = "İİİ bitte @Zoë hilf mir"
    assert detect_agent_mention(text, ["zoë"]) == ("zoë", "İİİ bitte hilf mir")
    assert detect_agent_mention("@ZOË", ["Zoë"]) == ("Zoë", "")
    assert detect_agent_mention("@Zoëy hi", ["Zoë"]) == (None, "@Zoëy hi")


def test_strip_bot_mentions_leaves_other_users() -> None:
    assert strip_bot_mentions(f"<@{BOT}> hi <@42>", BOT) == " hi <@42>"


def test_malformed_events_are_ignored() -> None:
    r = rules()
    assert parse_message_create({}, bot_id=BOT, rules=r) is None
    assert parse_message_create({"id": "x", "channel_id": "1", "author": {}}, bot_id=BOT,
                                rules=r) is None
    bad = message("hi", guild=None)
    bad["author"] = "nobody"
    assert parse_message_create(bad, bot_id=BOT, rules=r) is None


def test_namespace_prefix_is_validated_by_config() -> None:
    r = rules(namespace_prefix="discord")
    assert r.namespace_prefix == Namespace("discord")


@pytest.mark.parametrize(("patch", "answered"), [
    ({"type": []}, False), ({"type": {}}, False), ({"type": "0"}, False),
    ({"type": True}, False), ({"type": 0.0}, False),
    ({"author": {"id": "500", "username": ["x"]}}, True),
    ({"mentions": [[], {"id": 1000}, "x"]}, True),  # the content still mentions the bot
    ({"content": 5}, False), ({"author": "alice"}, False), ({"guild_id": 300}, False),
    ({"id": 9001}, False), ({"channel_id": None}, False), ({"webhook_id": []}, True),
])
def test_fields_of_unexpected_types_never_raise(patch: dict[str, Any], answered: bool) -> None:
    data = message(f"<@{BOT}> hi", mentions=[BOT])
    data.update(patch)
    assert (parse(data) is not None) is answered  # and no exception, whatever the shape


def test_unexpected_username_type_is_no_name() -> None:
    data = message(f"<@{BOT}> hi", mentions=[BOT])
    data["author"] = {"id": "500", "username": ["x"]}
    parsed = parse(data)
    assert parsed is not None and parsed[2]["author_name"] == ""
    assert parse(data, allowed_users=["['x']"]) is None
