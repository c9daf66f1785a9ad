"""Context budget, message estimates, pair-safe trimming and tool-result truncation.

Parity with orra spec §12 items 8-12, translated to orrad's API, plus the [I] improvements of
spec §5: pair-safe cuts, the system message pinned by role, history starting on a user
message, cached counts, counted tool schemas and UTF-8-safe truncation.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from orrad.errors import ConfigError
from orrad.model import Message, ToolCall, ToolResult
from orrad.runtime.context import (
    ContextBudget,
    MessageCounter,
    fit_to_budget,
    truncate_tool_result,
)
from orrad.runtime.provider import ToolDefinition
from orrad.runtime.tokenizer import CharEstimator, Tokenizer, load_tokenizer


class CountingTokenizer:
    """CharEstimator that records every text it is asked to count."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._inner = CharEstimator()

    @property
    def name(self) -> str:
        return "counting"

    def count(self, text: str) -> int:
        self.texts.append(text)
        return self._inner.count(text)


def counter() -> MessageCounter:
    return MessageCounter(CharEstimator())


def tool_turn(n: int, calls: int = 1, size: int = 40) -> list[Message]:
    """One user turn: a question, ``calls`` tool rounds (call + results), a final answer."""
    turn = [Message.user(f"question {n}")]
    for round_ in range(calls):
        ids = [f"t{n}-{round_}-{k}" for k in range(1 + round_ % 2)]
        turn.append(
            Message.assistant(
                "", [ToolCall(i, "search", {"q": f"q{n}", "page": round_}) for i in ids]
            )
        )
        turn.append(Message.tool_result([ToolResult(i, "r" * size) for i in ids]))
    turn.append(Message.assistant(f"answer {n}"))
    return turn


def assert_well_formed(kept: Sequence[Message]) -> None:
    """Every tool call is directly followed by exactly its results, and every result by its call."""
    for i, message in enumerate(kept):
        if message.tool_calls:
            assert i + 1 < len(kept), "tool call without results at the end"
            following = kept[i + 1]
            assert {r.call_id for r in following.tool_results} == {c.id for c in message.tool_calls}
        if message.tool_results:
            assert i > 0, "orphan tool result at the start"
            previous = kept[i - 1]
            assert {c.id for c in previous.tool_calls} == {r.call_id for r in message.tool_results}


# -- budget (item 8) -------------------------------------------------------------------------


def test_budget_formula_orra_defaults() -> None:
    budget = ContextBudget(200000, 4096)
    assert budget.available == 195904


def test_budget_tool_result_limit() -> None:
    assert ContextBudget(100, 20, 0.3).max_tool_result == 24


def test_budget_orrad_defaults() -> None:
    budget = ContextBudget()
    assert budget.available == 8192 - 1024
    assert budget.max_tool_result == (8192 - 1024) * 3 // 10


def test_budget_never_negative() -> None:
    budget = ContextBudget(10, 20)
    assert budget.available == 0
    assert budget.max_tool_result == 0
    assert budget.remaining(5) == 0


def test_budget_validation() -> None:
    with pytest.raises(ConfigError):
        ContextBudget(-1, 0)
    with pytest.raises(ConfigError):
        ContextBudget(100, 10, 1.5)


# -- estimates (item 9) ----------------------------------------------------------------------


def test_estimate_user_message() -> None:
    assert counter().count(Message.user("Hello world")) == 7


def test_estimate_conversation() -> None:
    messages = [Message.system("You are helpful."), Message.user("Hi")]
    assert counter().count_all(messages) == 13


def test_tokens_remaining() -> None:
    budget = ContextBudget(100, 20)
    used = counter().count_all([Message.user("Hi")])
    assert budget.remaining(used) == 75
    assert not budget.is_over(used)
    assert budget.is_over(81)


def test_estimate_tool_call_and_result() -> None:
    call = Message.assistant("ok", [ToolCall("id1", "read", {"path": "/etc/hosts"})])
    # content 1+4; name "read" 1; args '{"path":"/etc/hosts"}' is 21 bytes -> 6; +5
    assert counter().count(call) == (1 + 4) + (1 + 6 + 5)
    result = Message.tool_result([ToolResult("id1", "x" * 10), ToolResult("id2", "")])
    # empty content 0+4; results 3+5 and 0+5
    assert counter().count(result) == 4 + (3 + 5) + (0 + 5)


def test_count_tools() -> None:
    definition = ToolDefinition("echo", "Echo the input back.")
    text = msgspec.json.encode(definition).decode()
    c = counter()
    assert c.count_tools([definition]) == CharEstimator().count(text)
    assert c.count_tools([definition, definition]) == 2 * CharEstimator().count(text)
    assert c.count_tools([]) == 0
    assert c.count_tools([{"name": "raw", "input_schema": {}}]) > 0


# -- the count cache -------------------------------------------------------------------------


def test_second_fit_tokenizes_only_new_messages() -> None:
    tokenizer = CountingTokenizer()
    c = MessageCounter(tokenizer)
    system = Message.system("You are a careful assistant.")
    history = [m for n in range(20) for m in tool_turn(n, calls=2)]

    fit_to_budget(system, history, 10_000, c)
    first = len(tokenizer.texts)
    assert first > 0

    tokenizer.texts.clear()
    history += [Message.user("one more thing"), Message.assistant("sure")]
    fit_to_budget(system, history, 10_000, c)
    assert tokenizer.texts == ["one more thing", "sure"]


def test_cache_hits_on_equal_content_from_the_store() -> None:
    # Sessions are decoded afresh every run: new objects, same content, no re-tokenizing.
    tokenizer = CountingTokenizer()
    c = MessageCounter(tokenizer)
    history = tool_turn(1, calls=3)
    total = c.count_all(history)
    reloaded = msgspec.json.decode(msgspec.json.encode(history), type=list[Message])
    assert all(a is not b for a, b in zip(history, reloaded, strict=True))

    tokenizer.texts.clear()
    hits = c.hits
    assert c.count_all(reloaded) == total
    assert tokenizer.texts == []
    assert c.hits - hits == len(history)


def test_same_object_is_counted_once_and_forgotten_when_gone() -> None:
    # Messages are treated as immutable once created: the first-level cache is by identity
    # (sessions stay in memory between runs), the second by content.
    tokenizer = CountingTokenizer()
    c = MessageCounter(tokenizer)
    message = Message.user("short")
    assert c.count(message) == 2 + 4
    tokenizer.texts.clear()
    hits = c.hits
    assert c.count(message) == 2 + 4
    assert tokenizer.texts == [] and c.hits == hits  # identity hit: not even a hash lookup
    assert len(c._by_identity) == 1
    del message
    assert len(c._by_identity) == 0
    fresh = Message.user("a much longer message now")
    assert c.count(fresh) == 7 + 4


def test_a_counted_message_adds_one_object_for_the_collector() -> None:
    """Counts live as long as their messages (sessions stay in memory), and every young
    collection walks what was created since the last: one object per message, not five."""
    c = MessageCounter(CountingTokenizer())
    messages = [Message.user(f"message {i}") for i in range(1000)]
    gc.collect()
    before = len(gc.get_objects())
    for message in messages:
        c.count(message)
    gc.collect()  # tuples of plain values stop being tracked: what stays is what costs
    assert len(gc.get_objects()) - before <= 1100
    assert c.count(messages[0]) == 3 + 4  # still known: ceil(9 bytes / 4) and the overhead
    assert c.hits == 0  # ... by identity, without even a content lookup
    del messages, message
    assert len(c._by_identity) == 0


def test_cache_is_bounded() -> None:
    tokenizer = CountingTokenizer()
    c = MessageCounter(tokenizer, max_entries=2)
    # fresh objects each time, so the identity level never answers
    c.count_all([Message.user(t) for t in "abad"])  # "b" is now the least recently used
    tokenizer.texts.clear()
    c.count_all([Message.user("a"), Message.user("d")])  # equal content, new objects
    assert tokenizer.texts == []
    c.count(Message.user("b"))  # evicted from the content cache
    assert tokenizer.texts == ["b"]


def test_tool_arguments_are_part_of_the_key() -> None:
    c = counter()
    short = Message.assistant("", [ToolCall("1", "f", {"x": 1})])
    long = Message.assistant("", [ToolCall("1", "f", {"x": "y" * 100})])
    assert c.count(short) < c.count(long)


# -- fit_to_budget (items 10-11, plus pair safety) --------------------------------------------


def test_noop_under_budget() -> None:
    system = Message.system("System")
    history = [Message.user("Hello"), Message.assistant("Hi there"), Message.user("Bye")]
    assert fit_to_budget(system, history, 10_000, counter()) == [system, *history]


def test_system_and_newest_user_kept_even_over_budget() -> None:
    system = Message.system("A long system prompt " * 20)
    history = [Message.user("x" * 400)]
    assert fit_to_budget(system, history, 5, counter()) == [system, *history]


def test_orra_truncate_to_fit_scenario() -> None:
    # orra: a 50/10 budget keeps "System" and "What should I do?", and the result fits.
    budget = ContextBudget(50, 10)
    system = Message.system("System")
    history = [
        Message.user("Tell me about the history of the Roman Empire in detail."),
        Message.assistant("The Roman Empire was founded in 27 BC and lasted centuries. " * 3),
        Message.user("And the Byzantine Empire?"),
        Message.assistant("It continued in the east until 1453. " * 2),
        Message.user("What should I do?"),
    ]
    c = counter()
    kept = fit_to_budget(system, history, budget.available, c)
    assert kept[0].content == "System"
    assert kept[-1].content == "What should I do?"
    assert len(kept) < len(history) + 1
    assert c.count_all(kept) <= budget.available


def test_system_is_pinned_by_role_not_position() -> None:
    # orra pinned index 0; with no system prompt that froze the oldest user message forever.
    history = [Message.user("old " * 50), Message.assistant("old answer"), Message.user("new")]
    kept = fit_to_budget(None, history, 10, counter())
    assert kept == [history[-1]]


def test_no_system_message() -> None:
    history = [Message.user("a"), Message.assistant("b")]
    assert fit_to_budget(None, history, 1000, counter()) == history
    assert fit_to_budget(None, [], 1000, counter()) == []
    system = Message.system("s")
    assert fit_to_budget(system, [], 0, counter()) == [system]


def test_in_progress_run_kept_whole() -> None:
    # Mid-loop, the newest messages are tool results of the current run: orra pinned only
    # the last one and could keep a result without its call.
    system = Message.system("sys")
    old = tool_turn(0)
    current = tool_turn(1, calls=3)[:-1]  # the run is still going: no final answer yet
    kept = fit_to_budget(system, [*old, *current], 1, counter())
    assert kept == [system, *current]
    assert_well_formed(kept[1:])


def test_pair_safe_at_every_budget() -> None:
    system = Message.system("You are a tool-using assistant.")
    history = [m for n in range(6) for m in tool_turn(n, calls=n % 3 + 1, size=10 + 7 * n)]
    c = counter()
    full = c.count_all([system, *history])
    user_starts = [i for i, m in enumerate(history) if m.role == "user" and not m.tool_results]
    previous_len = 0
    for budget in range(full + 5):
        kept = fit_to_budget(system, history, budget, c)
        assert kept[0] is system
        rest = kept[1:]
        start = len(history) - len(rest)
        assert rest == history[start:], "kept history is a suffix"
        assert start in user_starts, "kept history starts on a user message"
        assert start <= user_starts[-1], "the newest user turn is always kept"
        assert_well_formed(rest)
        if start < user_starts[-1]:
            assert c.count_all(kept) <= budget
        older = [i for i in user_starts if i < start]
        if older:
            # Maximal: the next older turn would not have fitted.
            assert c.count_all(kept) + c.count_all(history[older[-1] : start]) > budget
        # Monotone: a larger budget never keeps less.
        assert len(rest) >= previous_len
        previous_len = len(rest)
    assert fit_to_budget(system, history, full, c) == [system, *history]


def test_trimming_is_maximal() -> None:
    # The next older turn really would not have fitted.
    system = Message.system("sys")
    turns = [tool_turn(n, calls=2) for n in range(5)]
    history = [m for turn in turns for m in turn]
    c = counter()
    budget = c.count_all([system, *[m for t in turns[2:] for m in t]]) + 3
    kept = fit_to_budget(system, history, budget, c)
    assert kept == [system, *[m for t in turns[2:] for m in t]]


def test_starts_on_user_message_dropping_leading_noise() -> None:
    orphan = Message.tool_result([ToolResult("gone", "stale output")])
    greeting = Message.assistant("Hello! How can I help?")
    history = [orphan, greeting, Message.user("hi"), Message.assistant("hello")]
    kept = fit_to_budget(None, history, 10_000, counter())
    assert kept == history[2:]


def test_without_user_messages_cuts_at_pair_boundaries() -> None:
    calls = Message.assistant("", [ToolCall("a", "f", {})])
    results = Message.tool_result([ToolResult("a", "r" * 40)])
    history = [Message.assistant("x" * 200), calls, results, Message.assistant("done")]
    c = counter()
    kept = fit_to_budget(None, history, c.count_all(history[1:]), c)
    assert kept == history[1:]
    kept = fit_to_budget(None, history, c.count_all(history[1:]) - 1, c)
    assert kept == history[3:]
    assert_well_formed(kept)
    # Results only: any of them would be an orphan.
    assert fit_to_budget(None, [results], 1000, c) == []


def test_fit_with_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokenizer: Tokenizer = load_tokenizer("cl100k_base")
    c = MessageCounter(tokenizer)
    assert c.count(Message.user("hello world")) == 2 + 4
    history = [m for n in range(10) for m in tool_turn(n)]
    kept = fit_to_budget(Message.system("sys"), history, 200, c)
    assert_well_formed(kept[1:])
    assert c.count_all(kept) <= 200


# -- truncate_tool_result (item 12) ----------------------------------------------------------


def test_short_result_unchanged() -> None:
    assert truncate_tool_result("short", 100, CharEstimator()) == "short"
    assert truncate_tool_result("", 0, CharEstimator()) == ""


def test_long_result_marked() -> None:
    content = "x" * 1000
    out = truncate_tool_result(content, 10, CharEstimator())
    assert "[truncated" in out
    assert out.endswith("\n\n[truncated — original was 250 tokens, limit is 10]")
    assert out.startswith("x" * 40)
    assert len(out) < len(content)


def test_truncation_prefers_line_breaks() -> None:
    lines = "\n".join(f"line {i:04d}" for i in range(200))  # 9 chars + newline each
    out = truncate_tool_result(lines, 50, CharEstimator())
    kept, _, _ = out.partition("\n\n[truncated")
    assert kept.endswith(("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"))
    assert all(line.startswith("line ") and len(line) == 9 for line in kept.split("\n"))


def test_truncation_keeps_a_long_single_line() -> None:
    # A newline near the start must not throw the rest of the prefix away.
    content = "\n" + "y" * 1000
    out = truncate_tool_result(content, 50, CharEstimator())
    assert out.startswith("\n" + "y" * 100)


@pytest.mark.parametrize(
    "content",
    [
        "🎉" * 300,
        "日本語のテキスト" * 100,
        "a🎉b日" * 200,
        "ok\n" + "👩‍👩‍👧" * 100,
        "\udcff" * 50 + "é" * 300,
    ],
)
@pytest.mark.parametrize("limit", [0, 1, 7, 33, 100])
def test_truncation_never_splits_utf8(content: str, limit: int) -> None:
    tokenizer = CharEstimator()
    out = truncate_tool_result(content, limit, tokenizer)
    current = tokenizer.count(content)
    if current <= limit:
        assert out == content
        return
    kept, marker, _ = out.partition("\n\n[truncated — original was ")
    assert marker
    assert content.startswith(kept)
    # Round-trips through UTF-8 (with lone surrogates allowed, as in the input).
    assert kept.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") == kept
    assert tokenizer.count(kept) <= limit


def test_truncation_with_tiktoken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokenizer = load_tokenizer("cl100k_base")
    content = "\n".join(f"{i}: 数据 🎉 value" for i in range(500))
    out = truncate_tool_result(content, 100, tokenizer)
    assert "[truncated — original was" in out
    assert "limit is 100]" in out
    kept = out.partition("\n\n[truncated")[0]
    assert content.startswith(kept)
    assert tokenizer.count(kept) <= 150


# -- the history index: same answer as a full walk, incremental cost ------------------------


def _walk_reference(system: Message | None, history: Sequence[Message], budget: int,
                    c: MessageCounter) -> list[Message]:
    """fit_to_budget's rules as a plain walk over the whole history (the old algorithm)."""
    kept = [] if system is None else [system]
    remaining = budget - (c.count(system) if system is not None else 0)
    users = [i for i, m in enumerate(history) if m.role == "user" and not m.tool_results]
    starts = users or [i for i, m in enumerate(history) if not m.tool_results]
    if not starts:
        return kept
    chosen = starts[-1]
    used = sum(c.count(m) for m in history[chosen:])
    for start in reversed(starts[:-1]):
        turn = sum(c.count(m) for m in history[start:chosen])
        if used + turn > remaining:
            break
        used += turn
        chosen = start
    return kept + list(history[chosen:])


def test_index_matches_a_full_walk_as_a_history_grows_and_is_rewritten() -> None:
    import random

    rng = random.Random(7)
    c = counter()
    system = Message.system("be brief")
    history: list[Message] = []
    for step in range(300):
        kind = rng.random()
        if kind < 0.4:
            history.append(Message.user("u" * rng.randint(1, 90)))
        elif kind < 0.7:
            history.append(Message.assistant("a" * rng.randint(0, 90)))
        elif kind < 0.85:
            history.extend(tool_turn(step, calls=rng.randint(1, 2), size=rng.randint(1, 60)))
        elif kind < 0.95:
            history.append(Message.tool_result([ToolResult("x", "orphan")]))
        elif history:
            del history[rng.randint(0, len(history) - 1):]  # a resumed run drops its tail
        for budget in (0, 5, 60, 300, 2_000, 100_000):
            for sys_message in (None, system):
                assert fit_to_budget(sys_message, history, budget, c) == \
                    _walk_reference(sys_message, history, budget, c), (step, budget)


class CallCountingCounter(MessageCounter):
    """A counter that records how many messages it was asked to count."""

    calls = 0

    def count(self, message: Message) -> int:
        self.calls += 1
        return super().count(message)


def test_a_long_history_is_not_walked_again_each_turn() -> None:
    c = CallCountingCounter(CharEstimator())
    history = [m for n in range(2_000) for m in (Message.user(f"q{n}"), Message.assistant(f"a{n}"))]
    fit_to_budget(None, history, 5_000, c)
    before = c.calls
    history += [Message.user("next"), Message.assistant("reply")]
    kept = fit_to_budget(None, history, 5_000, c)
    assert c.calls - before == 2  # the two new messages; the kept window is not re-counted
    assert len(kept) > 100 and kept[0].role == "user" and kept[-1].content == "reply"
    assert sum(MessageCounter(CharEstimator()).count(m) for m in kept) <= 5_000
