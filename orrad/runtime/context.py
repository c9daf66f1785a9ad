"""The context budget: estimating a request's size and trimming history to fit it.

Estimates follow orra (spec §5) so budgets behave the same: a message costs
``tokens(content) + 4``, plus ``tokens(name) + tokens(compact JSON arguments) + 5`` per tool
call and ``tokens(content) + 5`` per tool result. orrad also counts tool schemas
(:meth:`MessageCounter.count_tools`), which orra left out.

Where orrad departs from orra on purpose:

- :func:`fit_to_budget` pins the system message by role (orra pinned index 0, whatever it
  was), never separates a tool call from its results, starts the kept history on a plain user
  message, and always keeps the run in progress.
- Counts are cached per message and running totals per history list, so a turn tokenizes
  only the messages that are new and trims without walking the history.
- :func:`truncate_tool_result` cuts on a character boundary; orra cut bytes and could split a
  UTF-8 sequence.
"""

from __future__ import annotations

import bisect
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from orrad.errors import ConfigError
from orrad.model import Message
from orrad.runtime.provider import ToolDefinition
from orrad.runtime.tokenizer import Tokenizer

__all__ = [
    "MESSAGE_OVERHEAD",
    "TOOL_CALL_OVERHEAD",
    "TOOL_RESULT_OVERHEAD",
    "TRUNCATION_MARKER",
    "ContextBudget",
    "Fitted",
    "HistoryIndex",
    "MessageCounter",
    "fit",
    "fit_to_budget",
    "truncate_tool_result",
]

# Fixed costs per message, tool call and tool result (orra's numbers): role markers,
# separators and ids that the provider adds around the text.
MESSAGE_OVERHEAD = 4
TOOL_CALL_OVERHEAD = 5
TOOL_RESULT_OVERHEAD = 5

TRUNCATION_MARKER = "\n\n[truncated — original was {current} tokens, limit is {limit}]"


@dataclass(frozen=True, slots=True)
class ContextBudget:
    """How many tokens a request may use.

    ``available`` (``max_tokens - reserved_for_output``, at least 0) is what the input — system
    prompt, tool schemas and history — may take. ``max_tool_result`` (``floor(available *
    tool_result_share)``) caps a single tool result, so one huge output cannot push the whole
    conversation out. orra's defaults were 200000/4096; orrad's follow the config defaults
    (``context_tokens: 8192``, ``max_output_tokens: 1024``).
    """

    max_tokens: int = 8192
    reserved_for_output: int = 1024
    tool_result_share: float = 0.3

    def __post_init__(self) -> None:
        if self.max_tokens < 0 or self.reserved_for_output < 0:
            raise ConfigError(
                f"context budget must not be negative (max_tokens={self.max_tokens}, "
                f"reserved_for_output={self.reserved_for_output})"
            )
        if not 0.0 <= self.tool_result_share <= 1.0:
            raise ConfigError(
                f"tool_result_share must be between 0 and 1, not {self.tool_result_share}"
            )

    @property
    def available(self) -> int:
        return max(0, self.max_tokens - self.reserved_for_output)

    @property
    def max_tool_result(self) -> int:
        return math.floor(self.available * self.tool_result_share)

    def remaining(self, used: int) -> int:
        """Tokens left after ``used`` (never negative)."""
        return max(0, self.available - used)

    def is_over(self, used: int) -> bool:
        """True when ``used`` exceeds :attr:`available`."""
        return used > self.available


def _compact_json(value: Any) -> str:
    # Compact, like serde_json::to_string in orra. ``enc_hook=str`` keeps a value that is not
    # plain JSON (a tool that built its arguments by hand) countable instead of raising.
    return msgspec.json.encode(value, enc_hook=str).decode()


class HistoryIndex:
    """Running token totals and turn starts of one history list, extended as it grows.

    ``prefix[i]`` is the estimated tokens of ``history[:i]``; ``users`` the indices of plain
    user messages (where a kept history may start) and ``unpaired`` the indices that hold no
    tool results (the fallback start points of a history without user messages). With them
    :func:`fit_to_budget` finds the longest suffix that fits by bisection instead of walking
    the history, so a turn costs the same in a 10,000-message session as in a short one.
    """

    __slots__ = ("first", "history", "last", "prefix", "unpaired", "users")

    def __init__(self, history: list[Message]) -> None:
        self.history = history  # held so its id() cannot be reused while this entry lives
        self.prefix = [0]
        self.users: list[int] = []
        self.unpaired: list[int] = []
        self.first: Message | None = None
        self.last: Message | None = None

    def describes(self, history: list[Message]) -> bool:
        """Whether ``history`` is this entry's list, unchanged up to what was indexed.

        The runtime only appends to a session or rewrites its tail (a resumed run); either
        leaves a different object at the last indexed position or a shorter list.
        """
        known = len(self.prefix) - 1
        return (history is self.history and len(history) >= known
                and (known == 0 or (history[0] is self.first and history[known - 1] is self.last)))

    def extend(self, counter: MessageCounter) -> None:
        """Index the messages appended since the last call."""
        history, prefix = self.history, self.prefix
        total = prefix[-1]
        for index in range(len(prefix) - 1, len(history)):
            message = history[index]
            total += counter.count(message)
            prefix.append(total)
            if not message.tool_results:
                self.unpaired.append(index)
                if message.role == "user":
                    self.users.append(index)
        if history:
            self.first, self.last = history[0], history[-1]


class _Counted(weakref.ref[Message]):
    """A message's token count, as long as the message lives: one object per counted
    message. (A weak reference with a closure of its own, and a tuple, was five: a daemon
    holds every message of its in-memory sessions, and each collection of the young
    generations walks what was created since the last one: 200,000 objects, 0.1 s.)"""

    __slots__ = ("key", "tokens")
    key: int
    tokens: int

    def __new__(cls, message: Message, callback: Callable[[_Counted], None], key: int,
                tokens: int) -> _Counted:
        self = super().__new__(cls, message, callback)
        self.key, self.tokens = key, tokens
        return self

    def __init__(self, message: Message, callback: Callable[[_Counted], None], key: int,
                 tokens: int) -> None:
        """Everything was done in ``__new__`` (``weakref.ref``'s own ``__init__`` only
        checks its two arguments, and would refuse four)."""


class MessageCounter:
    """Token estimates for messages and tool schemas, cached per message.

    A session's history is re-sent every turn, so without a cache each turn would tokenize
    the whole conversation again (real BPE runs at a few MB/s). Counts are kept in an LRU of
    ``max_entries``.

    Two levels. First the very object (``Message`` is weak-referenceable: a count follows
    the object's life, so a reused ``id()`` never hits): sessions stay in memory between
    runs, so a long history is mostly objects counted before. Then a hash of exactly what
    the count depends on — the content, each tool call's name and compact JSON arguments,
    and each result's content (for a plain message, the hash of its text): a session
    decoded afresh from the store, or a repeated text, hits there.

    The key is the 64-bit ``hash()`` of those fields (plus the content length) rather than
    the fields themselves, so the cache holds no strings: entries stay a few dozen bytes even
    when tool outputs are large. Building it is cheap because CPython caches a ``str``'s hash
    on the object. A collision (odds ~1e-11 at 8192 entries) would only misestimate one
    message; the provider still enforces the real limit.

    Thread-safe: the cache is guarded by a lock; tokenizing happens outside it.
    """

    def __init__(self, tokenizer: Tokenizer, *, max_entries: int = 8192,
                 max_histories: int = 1024) -> None:
        if max_entries < 1 or max_histories < 1:
            raise ValueError("max_entries and max_histories must be at least 1")
        self._tokenizer = tokenizer
        self._max_entries = max_entries
        self._max_histories = max_histories
        self._histories: OrderedDict[int, HistoryIndex] = OrderedDict()
        self._cache: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._lock = threading.Lock()
        self._by_identity: dict[int, _Counted] = {}
        self._forget_counted = self._forget  # one bound method for every entry's callback
        self.hits = 0
        self.misses = 0

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def count_text(self, text: str) -> int:
        """Tokens of bare ``text`` (not cached; a message's overhead is not added)."""
        return self._tokenizer.count(text)

    def count(self, message: Message) -> int:
        """Estimated tokens of ``message`` (orra's formula, see the module docstring)."""
        # First level: the very same object (sessions stay in memory between runs, so a
        # long history is mostly objects already counted): one int-keyed lookup.
        known = self._by_identity.get(id(message))
        if known is not None and known() is message:
            return known.tokens
        total = self._count_by_content(message)
        key = id(message)
        self._by_identity[key] = _Counted(message, self._forget_counted, key, total)
        return total

    def _forget(self, counted: _Counted) -> None:
        # Runs while the message is being freed, before its id can be reused.
        if self._by_identity.get(counted.key) is counted:
            del self._by_identity[counted.key]

    def _count_by_content(self, message: Message) -> int:
        content = message.content
        calls: tuple[tuple[str, str], ...] = ()
        results: tuple[str, ...] = ()
        if message.tool_calls or message.tool_results:
            calls = tuple((call.name, _compact_json(call.arguments))
                          for call in message.tool_calls)
            results = tuple(result.content for result in message.tool_results)
            key = (hash((content, calls, results)), len(content))
        else:  # most messages: the hash of the text itself (cached on the str)
            key = (hash(content), len(content))
        cached = self._lookup(key)
        if cached is not None:
            return cached
        tok = self._tokenizer.count
        total = tok(content) + MESSAGE_OVERHEAD
        for name, arguments in calls:
            total += tok(name) + tok(arguments) + TOOL_CALL_OVERHEAD
        for result in results:
            total += tok(result) + TOOL_RESULT_OVERHEAD
        self._store(key, total)
        return total

    def index(self, history: list[Message]) -> HistoryIndex:
        """The up-to-date :class:`HistoryIndex` of ``history`` (kept for the newest lists).

        Sessions stay decoded in memory between runs, so the same list comes back each turn
        with a few messages appended: only those are counted. A list not seen before (or
        rewritten) is indexed from scratch, each message's count still coming from the cache.
        """
        with self._lock:
            entry = self._histories.get(id(history))
            if entry is None or not entry.describes(history):
                entry = HistoryIndex(history)
                self._histories[id(history)] = entry
                while len(self._histories) > self._max_histories:
                    self._histories.popitem(last=False)
            self._histories.move_to_end(id(history))
        entry.extend(self)
        return entry

    def count_all(self, messages: Iterable[Message]) -> int:
        """Sum of :meth:`count` over ``messages``."""
        return sum(self.count(message) for message in messages)

    def count_tools(self, definitions: Iterable[ToolDefinition | Mapping[str, Any]]) -> int:
        """Tokens of the tool schemas sent with a request: the compact JSON of each definition.

        orra ignored these, which made every tool-using request larger than its estimate.
        Cached like messages, keyed by the JSON text.
        """
        total = 0
        for definition in definitions:
            text = _compact_json(definition)
            # A tag unlike any message key's second element (a length >= 0) keeps schema
            # entries apart from message entries in the shared cache.
            key = (hash(text), -1 - len(text))
            cached = self._lookup(key)
            if cached is None:
                cached = self._tokenizer.count(text)
                self._store(key, cached)
            total += cached
        return total

    def _lookup(self, key: tuple[int, int]) -> int | None:
        with self._lock:
            value = self._cache.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._cache.move_to_end(key)
            return value

    def _store(self, key: tuple[int, int], value: int) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)


# -- trimming --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fitted:
    """What :func:`fit` keeps: the request's messages and their estimated tokens."""

    messages: list[Message]
    tokens: int


def fit_to_budget(
    system: Message | None,
    history: list[Message],
    budget_tokens: int,
    counter: MessageCounter,
) -> list[Message]:
    """The messages of :func:`fit` (see there for the rules)."""
    return fit(system, history, budget_tokens, counter).messages


def fit(
    system: Message | None,
    history: list[Message],
    budget_tokens: int,
    counter: MessageCounter,
) -> Fitted:
    """Return the message list for a request: the system message, then what fits of history.

    Rules, in priority order:

    1. ``system`` (if given) comes first and is always kept.
    2. The newest plain user message and everything after it — the run in progress, with
       its tool calls and results — is always kept, even when it alone exceeds the budget
       (the provider's context error is the honest outcome then; tool results should have
       been capped with :func:`truncate_tool_result`).
    3. Older history is added whole turns at a time, newest first, while the total stays
       within ``budget_tokens``; the first turn that does not fit ends the walk, so the kept
       history is always a contiguous suffix.
    4. The kept history starts on a plain user message whenever ``history`` contains one, so
       anything before the first user message (a greeting, stray results) is dropped even
       when it would fit. A tool call is never kept without its results, nor a result
       without its call, unless ``history`` itself was already broken inside the kept part.

    ``budget_tokens`` is what the messages may use: typically ``budget.available`` minus
    :meth:`MessageCounter.count_tools` of the request's tools. The counter's
    :class:`HistoryIndex` keeps running totals, so a call costs counting the messages new
    since the last call plus a bisection, however long the history.
    """
    kept: list[Message] = []
    system_tokens = 0 if system is None else counter.count(system)
    if system is not None:
        kept.append(system)
    remaining = budget_tokens - system_tokens
    index = counter.index(history)
    # Start points: every user turn; without any, the boundaries of (call, results) units.
    starts = index.users or index.unpaired
    if not starts:
        # Nothing but tool results: every one of them would be an orphan.
        return Fitted(kept, system_tokens)
    prefix = index.prefix
    total = prefix[len(history)]
    # The suffix from start s costs total - prefix[s], which only grows as s moves back:
    # the oldest start whose suffix still fits is found by bisection. The newest turn is
    # kept even when it alone does not fit.
    oldest = bisect.bisect_left(starts, total - remaining, key=prefix.__getitem__)
    chosen = starts[min(oldest, len(starts) - 1)]
    if kept:
        kept.extend(history[chosen:])
    else:
        kept = history[chosen:]  # one copy of a long history, not two
    return Fitted(kept, system_tokens + total - prefix[chosen])


def truncate_tool_result(content: str, max_tokens: int, tokenizer: Tokenizer) -> str:
    """Shorten a tool's output to about ``max_tokens`` tokens, saying that it did.

    ``content`` comes back unchanged when it fits. Otherwise the kept prefix is the same
    fraction of its UTF-8 bytes as ``max_tokens`` is of its tokens, moved back to a character
    boundary (orra cut raw bytes and could split a character). It then ends at the last line
    break inside it, if that keeps at least half of the prefix — a single long line such as
    minified JSON is cut mid-line instead of being dropped whole. The marker
    ``"\\n\\n[truncated — original was {cur} tokens, limit is {max}]"`` follows.

    The result is close to, not exactly within, ``max_tokens``: the marker adds about 20
    tokens and BPE counts are not proportional to length.
    """
    current = tokenizer.count(content)
    if current <= max_tokens:
        return content
    # "surrogatepass" round-trips lone surrogates (surrogateescape-decoded output) intact.
    raw = content.encode("utf-8", "surrogatepass")
    keep = len(raw) * max(max_tokens, 0) // current
    # UTF-8 continuation bytes are 0b10xxxxxx: step back until ``keep`` starts a character.
    while 0 < keep < len(raw) and raw[keep] & 0xC0 == 0x80:
        keep -= 1
    prefix = raw[:keep].decode("utf-8", "surrogatepass")
    newline = prefix.rfind("\n")
    if newline >= len(prefix) // 2:
        prefix = prefix[:newline]
    return prefix + TRUNCATION_MARKER.format(current=current, limit=max_tokens)
