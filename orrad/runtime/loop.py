"""The agent loop: one user message in, one final assistant message out.

:meth:`Runtime.run` loads the namespace's session, appends the user message and saves it
(so a provider failure never loses what the user said), then alternates provider calls and
tool execution up to ``max_turns``, saving after every turn. Runs on one namespace are
serialised by a per-namespace lock; different namespaces run concurrently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import TracebackType

import msgspec
import trio

from orrad.errors import (
    ContextLengthExceeded,
    MaxTurnsExceeded,
    ProviderError,
    StoreError,
    ToolError,
    UnsavedRun,
)
from orrad.metrics import Metrics
from orrad.model import Message, Namespace, RunSummary, ToolCall, ToolResult, Usage
from orrad.runtime.context import (
    ContextBudget,
    MessageCounter,
    fit,
    fit_to_budget,
    truncate_tool_result,
)
from orrad.runtime.policy import PolicyRegistry
from orrad.runtime.provider import (
    CompletionRequest,
    CompletionResponse,
    Provider,
    ToolDefinition,
)
from orrad.runtime.sessions import Session, SessionStore
from orrad.runtime.tokenizer import CharEstimator, Tokenizer
from orrad.runtime.tools import ToolRegistry
from orrad.sync import acquire

__all__ = ["NamespaceLocks", "RunResult", "Runtime", "RuntimeConfig", "TurnResult"]

log = logging.getLogger(__name__)


@dataclass
class RuntimeConfig:
    """How one agent runs. ``context_tokens`` is the whole input budget of a request."""

    system_prompt: str | None = None
    model: str | None = None
    max_turns: int = 10
    max_output_tokens: int = 1024
    temperature: float | None = None
    context_tokens: int = 8192
    tool_result_share: float = 0.3
    parallel_tools: bool = True
    tool_timeout_s: float = 60.0


@dataclass
class TurnResult:
    """One provider call and the results of the tools it asked for (if any)."""

    response: CompletionResponse
    tool_results: list[ToolResult] = field(default_factory=list)


@dataclass
class RunResult:
    final_message: Message
    turns: list[TurnResult]
    total_usage: Usage
    agent: str = ""

    def summary(self) -> RunSummary:
        """What a reply carries of this run."""
        return RunSummary(self.agent, self.total_usage, len(self.turns))


def _resume(session: Session, run_id: str) -> tuple[Message | None, bool]:
    """Prepare ``session`` for run ``run_id``.

    Returns ``(final answer, False)`` when the run completed before; otherwise ``(None,
    removed)`` after taking out whatever an interrupted attempt left (``removed`` tells
    whether the history was rewritten).
    """
    mine = [i for i, m in enumerate(session.messages) if m.run_id == run_id]
    if not mine:
        return None, False
    last = session.messages[mine[-1]]
    if len(mine) > 1 and last.role == "assistant" and not last.tool_calls:
        return last, False
    session.messages[:] = [m for m in session.messages if m.run_id != run_id]
    return None, True


class NamespaceLocks:
    """One lock per namespace key, created on demand and dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    def hold(self, namespace: Namespace) -> _Held:
        """``async with locks.hold(namespace):`` — run alone in ``namespace``."""
        return _Held(self._locks, namespace.key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    """One hold of a namespace's lock (a class, not a generator: it is on every run)."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[str, tuple[trio.Lock, int]], key: str) -> None:
        self._locks = locks
        self._key = key
        self._lock: trio.Lock | None = None

    async def __aenter__(self) -> None:
        key, locks = self._key, self._locks
        lock, users = locks.get(key, (None, 0))
        if lock is None:
            lock = trio.Lock()
        locks[key] = (lock, users + 1)
        try:
            await acquire(lock)
        except BaseException:
            self._leave()
            raise
        self._lock = lock

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        assert self._lock is not None
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)


class Runtime:
    """An agent: a provider, a session store, tools, policies and a token budget.

    ``await runtime.run(namespace, message)`` returns a :class:`RunResult`, or raises
    :class:`~orrad.errors.ProviderError` (after the provider's own retries),
    :class:`~orrad.errors.StoreError` or :class:`~orrad.errors.MaxTurnsExceeded`. Pass the
    same ``locks`` to several runtimes that share a store so they serialise per namespace.
    """

    def __init__(
        self,
        provider: Provider,
        store: SessionStore,
        tools: ToolRegistry | None = None,
        policies: PolicyRegistry | None = None,
        tokenizer: Tokenizer | None = None,
        config: RuntimeConfig | None = None,
        *,
        name: str = "default",
        locks: NamespaceLocks | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.provider = provider
        # The daemon's instruments (it sets them on the runtimes it builds); a private set
        # otherwise.
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.tools = tools if tools is not None else ToolRegistry()
        self.policies = policies if policies is not None else PolicyRegistry()
        self.tokenizer = tokenizer if tokenizer is not None else CharEstimator()
        self.config = config if config is not None else RuntimeConfig()
        self.name = name
        self.locks = locks if locks is not None else NamespaceLocks()
        self.counter = MessageCounter(self.tokenizer)

    @property
    def budget(self) -> ContextBudget:
        return ContextBudget(
            self.config.context_tokens, self.config.max_output_tokens,
            self.config.tool_result_share,
        )

    async def run(
        self, namespace: Namespace, message: Message, *, max_turns: int | None = None,
        run_id: str | None = None, first_attempt: bool = False,
    ) -> RunResult:
        """Answer ``message`` in ``namespace``'s session.

        With a ``run_id`` (the ledger id of the inbound message) the run is idempotent: a
        session that already holds this run's final answer returns it without calling the
        provider, and a run that was cut short (a crash mid-run) is removed from the session
        and done again, so the session never holds two copies of the message or its reply.
        ``first_attempt`` promises that ``run_id`` never ran before (a message just
        accepted): the session is then not searched for it.
        """
        async with self.locks.hold(namespace):
            return await self._run_locked(namespace, message,
                                          max_turns or self.config.max_turns, run_id,
                                          first_attempt)

    async def _run_locked(
        self, namespace: Namespace, message: Message, max_turns: int, run_id: str | None,
        first_attempt: bool,
    ) -> RunResult:
        session = await self.store.load(namespace) or Session(namespace.key)
        if run_id is not None and not first_attempt:
            done, rewritten = _resume(session, run_id)
            if done is not None:
                log.info("run %s in %s was answered before; not running it again", run_id,
                         namespace)
                return RunResult(done, [], Usage(), self.name)
            if rewritten:
                log.info("run %s in %s was interrupted; running it again", run_id, namespace)
                # Stores that append only the new tail need to be told the history changed.
                replace = getattr(self.store, "replace", None)
                await (replace(session) if replace is not None else self.store.save(session))
        message.run_id = run_id
        session.push(message)
        # A first attempt's message is already durable in the ledger (a crash re-runs it
        # from there), so the session is written once the first turn is done, with the
        # answer; anything else is written now. A run that fails writes what it has.
        unsaved = run_id is not None and first_attempt
        if not unsaved:
            await self.store.save(session)
        try:
            return await self._turns(namespace, session, max_turns, run_id)
        except StoreError:
            raise
        except Exception:
            if unsaved:  # e.g. the provider failed: the question stays in the session
                await self.store.save(session)
            raise

    async def _turns(self, namespace: Namespace, session: Session, max_turns: int,
                     run_id: str | None) -> RunResult:
        system = Message.system(self.config.system_prompt) if self.config.system_prompt else None
        turns: list[TurnResult] = []
        usage = Usage()
        for _ in range(max_turns):
            # Re-resolved every turn: a reload may change policies between turns.
            policy = self.policies.resolve(namespace)
            definitions = policy.filter(self.tools.definitions())
            response = await self._complete(system, session.messages, definitions)
            usage = usage + response.usage
            response.message.run_id = run_id
            session.push(response.message)
            # Any tool call is tool use, whatever finish_reason says (orra kept dangling calls).
            if response.message.tool_calls:
                results = await self._execute_tools(namespace, response.message.tool_calls)
                result_message = Message.tool_result(results)
                result_message.run_id = run_id
                session.push(result_message)
                turns.append(TurnResult(response, results))
                await self.store.save(session)
                continue
            turns.append(TurnResult(response))
            result = RunResult(response.message, turns, usage, self.name)
            try:
                await self.store.save(session)
            except StoreError as exc:
                raise UnsavedRun(exc, result) from exc
            return result
        raise MaxTurnsExceeded(max_turns)

    async def _complete(
        self,
        system: Message | None,
        history: list[Message],
        definitions: list[ToolDefinition],
    ) -> CompletionResponse:
        budget = self.budget.available - self.counter.count_tools(definitions)
        fitted = fit(system, history, budget, self.counter)
        messages = fitted.messages
        request = CompletionRequest(
            messages=messages,
            tools=definitions,
            max_tokens=self.config.max_output_tokens,
            temperature=self.config.temperature,
            model=self.config.model,
            estimated_input_tokens=fitted.tokens,
        )
        try:
            return await self._call_provider(request)
        except ContextLengthExceeded:
            # Our count disagreed with the model's: compact once to half of what was sent
            # and retry once.
            sent = self.counter.count_all(messages)
            smaller = fit_to_budget(system, history, sent // 2, self.counter)
            if len(smaller) >= len(messages):
                raise
            log.warning("context too long for the model; retrying with %d messages", len(smaller))
            return await self._call_provider(msgspec.structs.replace(
                request, messages=smaller, estimated_input_tokens=None))

    async def _call_provider(self, request: CompletionRequest) -> CompletionResponse:
        name, metrics = self.provider.name, self.metrics
        started = trio.current_time()
        try:
            response = await self.provider.complete(request)
        except ProviderError:
            metrics.provider_errors.labels(name).inc()
            raise
        finally:
            metrics.child(metrics.provider_latency, name).observe(trio.current_time() - started)
        # A counter only goes up: a provider reporting negative usage counts as none.
        usage = response.usage
        metrics.child(metrics.provider_tokens, name, "input").inc(max(0, usage.input_tokens))
        metrics.child(metrics.provider_tokens, name, "output").inc(max(0, usage.output_tokens))
        return response

    async def _execute_tools(
        self, namespace: Namespace, calls: list[ToolCall]
    ) -> list[ToolResult]:
        results: list[ToolResult | None] = [None] * len(calls)

        async def run_one(index: int, call: ToolCall) -> None:
            results[index] = await self._execute_tool(namespace, call)

        if self.config.parallel_tools and len(calls) > 1:
            async with trio.open_nursery() as nursery:
                for index, call in enumerate(calls):
                    nursery.start_soon(run_one, index, call)
        else:
            for index, call in enumerate(calls):
                await run_one(index, call)
        return [r for r in results if r is not None]

    async def _execute_tool(self, namespace: Namespace, call: ToolCall) -> ToolResult:
        # The policy is checked here, at execution, not only when listing tools: a model can
        # name a tool it was never offered.
        if not self.policies.resolve(namespace).permits(call.name):
            log.warning("tool %s denied by policy in %s", call.name, namespace)
            return ToolResult(call.id, f"tool {call.name!r} is not allowed here", True)
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(call.id, f"unknown tool: {call.name}", True)
        try:
            with trio.fail_after(self.config.tool_timeout_s):
                output = await tool.execute(dict(call.arguments))
        except ToolError as exc:
            return ToolResult(call.id, str(exc), True)
        except trio.TooSlowError:
            return ToolResult(
                call.id, f"execution failed: timed out after {self.config.tool_timeout_s:g}s",
                True,
            )
        except Exception as exc:
            log.exception("tool %s crashed", call.name)
            return ToolResult(call.id, f"execution failed: {type(exc).__name__}", True)
        limit = self.budget.max_tool_result
        return ToolResult(call.id, truncate_tool_result(output, limit, self.tokenizer))
