"""The agent loop: turns, tools, policies, budget trimming, saving, errors."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from orrad import MemorySessionStore, Message, Namespace, Runtime, RuntimeConfig
from orrad.errors import ContextLengthExceeded, MaxTurnsExceeded, ProviderError, ToolExecutionFailed
from orrad.model import ToolCall, Usage
from orrad.runtime.policy import PolicyRegistry, ToolPolicy
from orrad.runtime.provider import CompletionResponse, ToolDefinition
from orrad.runtime.sessions import Session
from orrad.runtime.tokenizer import CharEstimator
from orrad.runtime.tools import CurrentTimeTool, ToolRegistry
from tests.scripted import ScriptedProvider, reply

NS = Namespace.parse("test:ns")


class UpperTool:
    definition = ToolDefinition("upper", "Upper-case text", {"type": "object"})

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.delay = delay

    async def execute(self, arguments: dict[str, Any]) -> str:
        self.calls.append(arguments)
        if self.delay:
            await trio.sleep(self.delay)
        if arguments.get("fail"):
            raise ToolExecutionFailed("boom")
        return str(arguments.get("text", "")).upper()


class NamedTool(UpperTool):
    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.definition = ToolDefinition(name, name, {"type": "object"})


def tool_use(*calls: ToolCall, usage: Usage | None = None) -> CompletionResponse:
    return CompletionResponse(Message.assistant("", list(calls)), usage or Usage(), "tool_use")


async def test_simple_run_returns_answer_and_usage() -> None:
    provider = ScriptedProvider([reply("Hello! How can I help?", 10, 8)])
    runtime = Runtime(provider, MemorySessionStore())
    result = await runtime.run(NS, Message.user("Hi"))
    assert result.final_message.content == "Hello! How can I help?"
    assert len(result.turns) == 1
    assert result.total_usage.total_tokens == 18
    assert result.agent == "default"


async def test_multi_turn_tool_use() -> None:
    tool = UpperTool()
    provider = ScriptedProvider([
        tool_use(ToolCall("c1", "upper", {"text": "hello"}), usage=Usage(20, 10)),
        reply("HELLO", 20, 15),
    ])
    store = MemorySessionStore()
    runtime = Runtime(provider, store, ToolRegistry([tool]))
    result = await runtime.run(NS, Message.user("shout hello"))
    assert result.final_message.content == "HELLO"
    assert len(result.turns) == 2
    [tool_result] = result.turns[0].tool_results
    assert (tool_result.content, tool_result.is_error) == ("HELLO", False)
    assert (result.total_usage.input_tokens, result.total_usage.output_tokens) == (40, 25)
    # the second request carried the call and its result, in order
    second = provider.requests[1].messages
    assert [m.role for m in second] == ["user", "assistant", "user", ][: len(second)]
    assert second[-1].tool_results[0].call_id == "c1"
    session = await store.load(NS)
    assert session is not None and len(session.messages) == 4


async def test_unknown_tool_is_an_error_result_and_loop_continues() -> None:
    provider = ScriptedProvider([tool_use(ToolCall("c1", "nonexistent", {})), reply("done")])
    result = await Runtime(provider, MemorySessionStore()).run(NS, Message.user("x"))
    [res] = result.turns[0].tool_results
    assert res.is_error and res.content == "unknown tool: nonexistent"
    assert result.final_message.content == "done"


async def test_max_turns_raises_and_saves_session() -> None:
    calls = [tool_use(ToolCall(f"c{i}", "upper", {"text": "a"})) for i in range(5)]
    store = MemorySessionStore()
    runtime = Runtime(ScriptedProvider(list(calls)), store, ToolRegistry([UpperTool()]),
                      config=RuntimeConfig(max_turns=3))
    with pytest.raises(MaxTurnsExceeded, match=r"max turns \(3\) exceeded"):
        await runtime.run(NS, Message.user("loop"))
    session = await store.load(NS)
    assert session is not None
    assert len(session.messages) == 1 + 3 * 2
    assert session.messages[-1].tool_results


async def test_stop_with_tool_calls_is_still_tool_use() -> None:
    tool = UpperTool()
    odd = CompletionResponse(
        Message.assistant("", [ToolCall("c1", "upper", {"text": "x"})]), Usage(), "stop"
    )
    runtime = Runtime(ScriptedProvider([odd, reply("ok")]), MemorySessionStore(),
                      ToolRegistry([tool]))
    result = await runtime.run(NS, Message.user("x"))
    assert tool.calls == [{"text": "x"}]
    assert result.final_message.content == "ok"


async def test_policy_filters_definitions_and_is_enforced_at_execution() -> None:
    read, delete = NamedTool("read"), NamedTool("delete")
    policies = PolicyRegistry()
    policies.set_policy(Namespace("tenant"), ToolPolicy.allow_list(["read"]))
    # The model names a tool it was never offered: it must not run.
    provider = ScriptedProvider([tool_use(ToolCall("c1", "delete", {})), reply("fine")])
    runtime = Runtime(provider, MemorySessionStore(), ToolRegistry([read, delete]), policies)
    result = await runtime.run(Namespace.parse("tenant:acme"), Message.user("x"))
    assert [d.name for d in provider.requests[0].tools] == ["read"]
    assert delete.calls == []
    [res] = result.turns[0].tool_results
    assert res.is_error and "not allowed" in res.content


def test_policy_cascade_most_specific_wins() -> None:
    policies = PolicyRegistry()
    policies.set_policy(Namespace("acme"), ToolPolicy.deny_all())
    policies.set_policy(Namespace.parse("acme:ops"), ToolPolicy.allow_list(["x"]))
    assert not policies.resolve(Namespace.parse("acme:sales:bob")).permits("x")
    assert policies.resolve(Namespace.parse("acme:ops:alice")).permits("x")
    assert not policies.resolve(Namespace.parse("acme:ops:alice")).permits("y")
    assert policies.resolve(Namespace("acmeother")).permits("y")
    assert policies.remove_policy(Namespace("acme")) is True
    assert policies.remove_policy(Namespace("acme")) is False


async def test_parallel_tools_keep_call_order_and_isolate_failures(autojump_clock: Any) -> None:
    tool = UpperTool(delay=0.1)
    provider = ScriptedProvider([
        tool_use(ToolCall("a", "upper", {"text": "a"}), ToolCall("b", "upper", {"fail": True}),
                 ToolCall("c", "upper", {"text": "c"})),
        reply("ok"),
    ])
    runtime = Runtime(provider, MemorySessionStore(), ToolRegistry([tool]))
    start = trio.current_time()
    result = await runtime.run(NS, Message.user("x"))
    assert trio.current_time() - start < 0.25  # three 100 ms tools ran concurrently
    results = result.turns[0].tool_results
    assert [r.call_id for r in results] == ["a", "b", "c"]
    assert [r.is_error for r in results] == [False, True, False]
    assert "boom" in results[1].content


async def test_provider_error_keeps_the_user_message() -> None:
    store = MemorySessionStore()
    runtime = Runtime(ScriptedProvider([ProviderError("down")]), store)
    with pytest.raises(ProviderError):
        await runtime.run(NS, Message.user("remember me"))
    session = await store.load(NS)
    assert session is not None
    assert [m.content for m in session.messages] == ["remember me"]


class CountingStore(MemorySessionStore):
    """A memory store that counts its writes."""

    saves = 0

    async def save(self, session: Session) -> None:
        self.saves += 1
        await super().save(session)


async def test_a_first_attempt_writes_the_session_once_with_its_answer() -> None:
    store = CountingStore()
    runtime = Runtime(ScriptedProvider([reply("hi")]), store)
    await runtime.run(NS, Message.user("hello"), run_id="7", first_attempt=True)
    assert store.saves == 1  # the ledger already holds the question durably
    session = await store.load(NS)
    assert session is not None
    assert [(m.content, m.run_id) for m in session.messages] == [("hello", "7"), ("hi", "7")]


async def test_a_failed_first_attempt_still_keeps_the_user_message() -> None:
    store = CountingStore()
    runtime = Runtime(ScriptedProvider([ProviderError("down")]), store)
    with pytest.raises(ProviderError):
        await runtime.run(NS, Message.user("remember me"), run_id="8", first_attempt=True)
    session = await store.load(NS)
    assert session is not None
    assert [m.content for m in session.messages] == ["remember me"]


async def test_a_rerun_writes_the_question_before_the_provider_is_called() -> None:
    store = CountingStore()
    runtime = Runtime(ScriptedProvider([reply("hi")]), store)
    await runtime.run(NS, Message.user("hello"), run_id="9")
    assert store.saves == 2


async def test_system_prompt_sent_first_never_stored() -> None:
    provider = ScriptedProvider([reply("a"), reply("b")])
    store = MemorySessionStore()
    runtime = Runtime(provider, store, config=RuntimeConfig(system_prompt="Be brief."))
    await runtime.run(NS, Message.user("one"))
    await runtime.run(NS, Message.user("two"))
    assert provider.requests[1].messages[0].role == "system"
    assert [m.content for m in provider.requests[1].messages] == ["Be brief.", "one", "a", "two"]
    session = await store.load(NS)
    assert session is not None and [m.role for m in session.messages] == [
        "user", "assistant", "user", "assistant"]


async def test_namespaces_are_isolated() -> None:
    provider = ScriptedProvider([reply("to alice"), reply("to bob")])
    store = MemorySessionStore()
    runtime = Runtime(provider, store)
    await runtime.run(Namespace("alice"), Message.user("hi from alice"))
    await runtime.run(Namespace("bob"), Message.user("hi from bob"))
    assert [m.content for m in provider.requests[1].messages] == ["hi from bob"]


async def test_budget_trimming_keeps_tool_pairs_and_system() -> None:
    store = MemorySessionStore()
    # A long earlier history with tool pairs.
    history_provider = ScriptedProvider()
    for i in range(6):
        history_provider.responses += [
            tool_use(ToolCall(f"c{i}", "upper", {"text": "x" * 40})),
            reply("y" * 80),
        ]
    runtime = Runtime(history_provider, store, ToolRegistry([UpperTool()]),
                      tokenizer=CharEstimator(),
                      config=RuntimeConfig(system_prompt="SYS", context_tokens=400,
                                           max_output_tokens=100))
    for i in range(6):
        await runtime.run(NS, Message.user(f"question {i} " + "z" * 60))
    sent = history_provider.requests[-1].messages
    assert sent[0].role == "system"
    assert sent[1].role == "user" and not sent[1].tool_results  # starts on a real user turn
    call_ids = {c.id for m in sent for c in m.tool_calls}
    result_ids = {r.call_id for m in sent for r in m.tool_results}
    assert call_ids == result_ids  # no orphan on either side
    assert len(sent) < 1 + 6 * 4  # something was trimmed
    session = await store.load(NS)
    assert session is not None and len(session.messages) == 6 * 4  # storage keeps everything


async def test_context_length_exceeded_compacts_once() -> None:
    store = MemorySessionStore()
    seed = ScriptedProvider([reply("a" * 100) for _ in range(4)])
    runtime = Runtime(seed, store, config=RuntimeConfig(context_tokens=100_000))
    for i in range(4):
        await runtime.run(NS, Message.user(f"q{i} " + "b" * 100))
    seed.responses = [ContextLengthExceeded("too long"), reply("fits")]
    result = await runtime.run(NS, Message.user("last"))
    assert result.final_message.content == "fits"
    assert len(seed.requests[-1].messages) < len(seed.requests[-2].messages)


async def test_context_length_exceeded_with_nothing_to_compact_raises() -> None:
    provider = ScriptedProvider([ContextLengthExceeded("too long")])
    with pytest.raises(ContextLengthExceeded):
        await Runtime(provider, MemorySessionStore()).run(NS, Message.user("x"))


async def test_current_time_tool() -> None:
    tool = CurrentTimeTool()
    assert "T" in await tool.execute({})
    assert (await tool.execute({"utc_offset_hours": 2})).endswith("+02:00")
    from orrad.errors import ToolInvalidInput

    with pytest.raises(ToolInvalidInput):
        await tool.execute({"utc_offset_hours": "x"})


def test_registry_keeps_insertion_order_and_replaces_in_place() -> None:
    registry = ToolRegistry([NamedTool("b"), NamedTool("a"), NamedTool("c")])
    assert registry.names() == ["b", "a", "c"]
    registry.register(NamedTool("a"))
    assert registry.names() == ["b", "a", "c"]
    assert registry.remove("a") is True and registry.remove("a") is False
    assert registry.subset(["c", "b"]).names() == ["b", "c"]


async def test_runs_on_one_namespace_are_serialised(autojump_clock: Any) -> None:
    provider = ScriptedProvider([reply("1"), reply("2")], delay=1.0)
    store = MemorySessionStore()
    runtime = Runtime(provider, store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run, NS, Message.user("a"))
        nursery.start_soon(runtime.run, NS, Message.user("b"))
    session = await store.load(NS)
    assert session is not None and len(session.messages) == 4  # neither save was lost
    assert len(runtime.locks) == 0
