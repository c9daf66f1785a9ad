"""The seed's ChannelAdapter tests (orra channels.rs), translated to the §9 API."""

from __future__ import annotations

from orrad import ChannelAdapter, MemorySessionStore, Message, Namespace, Runtime
from orrad.errors import ProviderError
from orrad.model import InboundMessage, OutboundError, OutboundMessage
from tests.scripted import QueueChannel, ScriptedProvider, reply


def runtime_with(provider: ScriptedProvider) -> Runtime:
    return Runtime(provider, MemorySessionStore())


async def test_adapter_routes_message_through_runtime() -> None:
    channel = QueueChannel()
    runtime = runtime_with(ScriptedProvider([reply("Hello back!", 5, 3)]))
    await channel.inbound_send.send(
        InboundMessage(Namespace("test"), Message.user("Hello!"), {})
    )
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime)
    [response] = channel.replies
    assert isinstance(response, OutboundMessage)
    assert response.message.content == "Hello back!"
    assert response.namespace == Namespace("test")
    assert response.run_result.total_usage.total_tokens == 8


async def test_metadata_passes_through() -> None:
    channel = QueueChannel()
    runtime = runtime_with(ScriptedProvider([reply("Ok")]))
    metadata = {"thread_id": "abc123", "user_name": "Alice"}
    await channel.inbound_send.send(InboundMessage(Namespace("test"), Message.user("Hi"), metadata))
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime)
    [response] = channel.replies
    assert isinstance(response, OutboundMessage)
    assert response.metadata["thread_id"] == "abc123"
    assert response.metadata["user_name"] == "Alice"


async def test_channel_returning_none_stops_loop() -> None:
    channel = QueueChannel()
    provider = ScriptedProvider([])
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime_with(provider))
    assert channel.replies == []
    assert provider.requests == []


async def test_runtime_error_sent_as_error_response() -> None:
    channel = QueueChannel()
    runtime = runtime_with(ScriptedProvider([ProviderError("provider down")]))
    await channel.inbound_send.send(
        InboundMessage(Namespace("test"), Message.user("Hello!"), {"k": "v"})
    )
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime)
    [response] = channel.replies
    assert isinstance(response, OutboundError)
    assert "provider" in response.error
    assert response.namespace == Namespace("test")
    assert response.metadata == {"k": "v"}


async def test_multiple_messages_processed_sequentially() -> None:
    channel = QueueChannel()
    runtime = runtime_with(ScriptedProvider([reply("Response 1"), reply("Response 2")]))
    await channel.inbound_send.send(InboundMessage(Namespace("user1"), Message.user("First"), {}))
    await channel.inbound_send.send(InboundMessage(Namespace("user2"), Message.user("Second"), {}))
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime)
    r1, r2 = channel.replies
    assert isinstance(r1, OutboundMessage) and isinstance(r2, OutboundMessage)
    assert (r1.message.content, r1.namespace) == ("Response 1", Namespace("user1"))
    assert (r2.message.content, r2.namespace) == ("Response 2", Namespace("user2"))


class FailingSendChannel(QueueChannel):
    async def send(self, response: OutboundMessage) -> None:
        from orrad.errors import ChannelSendError

        if response.message.content == "first":
            raise ChannelSendError("platform said no")
        await super().send(response)


async def test_failed_send_does_not_stop_the_loop() -> None:
    channel = FailingSendChannel()
    runtime = runtime_with(ScriptedProvider([reply("first"), reply("second")]))
    for text in ("a", "b"):
        await channel.inbound_send.send(InboundMessage(Namespace("t"), Message.user(text), {}))
    await channel.inbound_send.aclose()
    await ChannelAdapter.run(channel, runtime)
    assert [r.message.content for r in channel.replies if isinstance(r, OutboundMessage)] == [
        "second"
    ]
