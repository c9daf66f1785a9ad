"""Fake OpenAI and Anthropic servers on 127.0.0.1, speaking the real wire formats.

Each fake is scriptable and observant:

* a FIFO **script** of replies and faults (``reply_text``, ``reply_tool_calls``, ``fail``,
  ``rate_limit``, ``overloaded``, ``context_length``, ``malformed``...), each with an
  optional ``delay_s`` before answering and ``times`` to repeat it; when the script is empty
  the fake answers ``"ok"``;
* a **record** of every request (path, lower-cased headers, parsed JSON body, virtual arrival
  time, and the validation error if the fake rejected it) in :attr:`FakeLLM.requests`;
* **validation** of what the real API rejects (orphan tool results, unanswered tool calls,
  roles out of order, empty turns, missing headers), answered with the vendor's 400 body
  before any script step is used.

Start one with ``async with FakeOpenAI() as fake:`` or ``await nursery.start(fake.serve)``;
both return once it listens. :attr:`FakeLLM.base_url` is what orrad's config would hold
(OpenAI: ``.../v1``; Anthropic: the bare origin).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import msgspec
import trio

from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.fakes.background import ServesInBackground

__all__ = ["FakeAnthropic", "FakeLLM", "FakeOpenAI", "RecordedRequest", "Step"]

Body = Callable[[dict[str, Any]], Any]
"""Builds a JSON reply from the request body (so replies can echo the requested model)."""


@dataclass
class Step:
    """One scripted answer: ``status``, ``headers`` and a JSON ``body`` (or raw bytes)."""

    status: int = 200
    body: Body | bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    """A request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float
    rejected: str | None = None


class FakeLLM(ServesInBackground):
    """What both fakes share: script, record, serve. Subclasses supply the wire format."""

    path: ClassVar[str]
    prefix: ClassVar[str] = ""

    def __init__(self, *, api_key: str | None = None, validate: bool = True) -> None:
        """``api_key``: when set, requests without it get the vendor's 401."""
        self.api_key = api_key
        self.validate = validate
        self.requests: list[RecordedRequest] = []
        self.origin = ""
        self._script: deque[Step] = deque()
        self._ids = itertools.count(1)

    # -- serving ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The provider ``base_url`` as orrad's config normalises it."""
        return self.origin + self.prefix

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening."""
        router = Router()
        router.add("POST", self.path, self._handle)
        router.add("POST", "/{rest:path}", self._not_found)
        server = HTTPServer(router, name=type(self).__name__)
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(server.serve, "127.0.0.1:0")
            self.origin = f"http://{host}:{port}"
            task_status.started(self.base_url)

    # -- scripting ----------------------------------------------------------------------

    def push(self, step: Step, *, times: int = 1) -> Self:
        """Append ``step`` to the script ``times`` times."""
        self._script.extend(step for _ in range(times))
        return self

    def reply_json(
        self, obj: Any, *, status: int = 200, delay_s: float = 0.0, times: int = 1,
        headers: list[tuple[str, str]] | None = None,
    ) -> Self:
        """Answer with exactly ``obj`` as JSON."""
        return self.push(Step(status, lambda _req: obj, headers or [], delay_s), times=times)

    def malformed(self, body: bytes = b'{"choices": [', *, status: int = 200) -> Self:
        """Answer with a body that is not valid JSON."""
        return self.push(Step(status, body, [("content-type", "application/json")]))

    def fail(
        self, status: int, message: str = "fake failure", *, error_type: str | None = None,
        headers: list[tuple[str, str]] | None = None, delay_s: float = 0.0, times: int = 1,
    ) -> Self:
        """Answer ``status`` with the vendor's error body."""
        body = self.error_body(error_type or self.error_type(status), message)
        return self.push(Step(status, lambda _req: body, headers or [], delay_s), times=times)

    def rate_limit(
        self, *, retry_after: str | None = None, retry_after_ms: str | None = None,
        times: int = 1,
    ) -> Self:
        """A 429, with ``retry-after`` / ``retry-after-ms`` headers when given."""
        headers = [("retry-after", retry_after)] if retry_after is not None else []
        if retry_after_ms is not None:
            headers.append(("retry-after-ms", retry_after_ms))
        return self.fail(429, "Rate limit reached", headers=headers, times=times)

    # -- wire format (subclasses) -------------------------------------------------------

    def error_type(self, status: int) -> str:
        raise NotImplementedError

    def error_body(self, error_type: str, message: str) -> Any:
        raise NotImplementedError

    def check_auth(self, req: Request) -> str | None:
        raise NotImplementedError

    def check_body(self, body: Any) -> str | None:
        raise NotImplementedError

    def default_reply(self) -> Step:
        raise NotImplementedError

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    # -- handling -----------------------------------------------------------------------

    async def _handle(self, req: Request) -> Response:
        record = self._record(req)
        if self.api_key is not None and (problem := self.check_auth(req)):
            record.rejected = problem
            return json_response(401, self.error_body(self.error_type(401), problem))
        if self.validate:
            if req.header("content-type") != "application/json":
                problem = "content-type must be application/json"
            else:
                try:
                    problem = self.check_body(record.body)
                except (AttributeError, TypeError, KeyError) as exc:  # a shape we did not expect
                    problem = f"malformed request body: {exc!r}"
            if problem:
                record.rejected = problem
                return json_response(400, self.error_body(self.error_type(400), problem))
        step = self._script.popleft() if self._script else self.default_reply()
        if step.delay_s:
            await trio.sleep(step.delay_s)
        if isinstance(step.body, bytes):
            return Response(step.status, step.headers, step.body)
        return json_response(step.status, step.body(record.body), step.headers)

    async def _not_found(self, req: Request) -> Response:
        self._record(req).rejected = f"unknown path {req.path}"
        return json_response(404, self.error_body("not_found_error", f"no route {req.path}"))

    def _record(self, req: Request) -> RecordedRequest:
        try:
            body = msgspec.json.decode(req.body)
        except msgspec.DecodeError:
            body = None
        record = RecordedRequest(
            req.method, req.path, dict(req.headers), body, trio.current_time()
        )
        self.requests.append(record)
        return record



# -- OpenAI Chat Completions ---------------------------------------------------------------


class FakeOpenAI(FakeLLM):
    """``POST /v1/chat/completions``; ``base_url`` ends in ``/v1``."""

    path = "/v1/chat/completions"
    prefix = "/v1"

    def reply_text(
        self, text: str, *, finish_reason: str | None = "stop", usage: tuple[int, int] = (10, 5),
        delay_s: float = 0.0, times: int = 1,
    ) -> Self:
        """A plain assistant answer."""
        message = {"role": "assistant", "content": text}
        return self.reply_message(
            message, finish_reason=finish_reason, usage=usage, delay_s=delay_s, times=times
        )

    def reply_tool_calls(
        self, calls: list[tuple[str, str, str]], *, text: str | None = None,
        finish_reason: str | None = "tool_calls", usage: tuple[int, int] = (10, 5),
    ) -> Self:
        """Tool calls given as ``(id, name, arguments JSON string)``, sent verbatim."""
        message = {"role": "assistant", "content": text, "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in calls
        ]}
        return self.reply_message(message, finish_reason=finish_reason, usage=usage)

    def reply_message(
        self, message: dict[str, Any], *, finish_reason: str | None = "stop",
        usage: tuple[int, int] | None = (10, 5), delay_s: float = 0.0, times: int = 1,
    ) -> Self:
        """``choices[0].message = message`` with ``finish_reason`` (``None``: key left out)."""
        step = self._message_step(message, finish_reason, usage, delay_s)
        return self.push(step, times=times)

    def _message_step(
        self, message: dict[str, Any], finish_reason: str | None,
        usage: tuple[int, int] | None, delay_s: float,
    ) -> Step:
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None}
        if finish_reason is not None:
            choice["finish_reason"] = finish_reason

        def build(req: dict[str, Any]) -> Any:
            body: dict[str, Any] = {
                "id": self.next_id("chatcmpl-"), "object": "chat.completion", "created": 0,
                "model": req.get("model"), "choices": [choice],
            }
            if usage is not None:
                body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                 "total_tokens": sum(usage)}
            return body

        return Step(200, build, [], delay_s)

    def context_length(self) -> Self:
        """The 400 OpenAI sends when the prompt is longer than the model's window."""
        body = {"error": {
            "message": "This model's maximum context length is 8192 tokens. However, your "
                       "messages resulted in 9001 tokens. Please reduce the length of the "
                       "messages.",
            "type": "invalid_request_error", "param": "messages",
            "code": "context_length_exceeded",
        }}
        return self.reply_json(body, status=400)

    def error_type(self, status: int) -> str:
        return {400: "invalid_request_error", 401: "invalid_request_error",
                429: "requests", 404: "invalid_request_error"}.get(status, "server_error")

    def error_body(self, error_type: str, message: str) -> Any:
        return {"error": {"message": message, "type": error_type, "param": None, "code": None}}

    def check_auth(self, req: Request) -> str | None:
        if req.header("authorization") != f"Bearer {self.api_key}":
            return "Incorrect API key provided."
        return None

    def default_reply(self) -> Step:
        return self._message_step({"role": "assistant", "content": "ok"}, "stop", (10, 5), 0.0)

    def check_body(self, body: Any) -> str | None:
        """Reject what the real endpoint rejects (a useful subset)."""
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request."
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "you must provide a model parameter"
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            return "Invalid 'max_tokens': integer below minimum value."
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must contain at least one message."
        for tool in body.get("tools", []):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict) or not (
                function.get("name")
            ):
                return "Invalid 'tools': each tool needs type 'function' and function.name."
        return _check_openai_messages(messages)


def _check_openai_messages(messages: list[Any]) -> str | None:
    pending: set[str] = set()  # tool_call ids of the last assistant turn not yet answered
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return f"Invalid value for 'messages[{i}].role'."
        if role != "tool" and pending:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(sorted(pending))}")
        content = m.get("content")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                return (f"Invalid parameter: messages[{i}] with role 'tool' must be a response "
                        "to a preceeding message with 'tool_calls'.")
            pending.discard(call_id)
            if not isinstance(content, str):
                return f"Invalid type for 'messages[{i}].content'."
        elif role == "assistant" and "tool_calls" in m:
            for call in m["tool_calls"]:
                if not isinstance(call.get("function", {}).get("arguments"), str):
                    return f"Invalid type for 'messages[{i}].tool_calls.function.arguments'."
                pending.add(call.get("id"))
            if content is not None and not isinstance(content, str):
                return f"Invalid type for 'messages[{i}].content'."
        elif not isinstance(content, str):
            return f"Invalid type for 'messages[{i}].content': expected a string."
    return None


# -- Anthropic Messages --------------------------------------------------------------------


class FakeAnthropic(FakeLLM):
    """``POST /v1/messages``; ``base_url`` is the bare origin."""

    path = "/v1/messages"

    def reply_text(
        self, text: str, *, stop_reason: str | None = "end_turn",
        usage: tuple[int, int] = (10, 5), delay_s: float = 0.0, times: int = 1,
    ) -> Self:
        """A message with one text block."""
        return self.reply_blocks(
            [{"type": "text", "text": text}], stop_reason=stop_reason, usage=usage,
            delay_s=delay_s, times=times,
        )

    def reply_tool_use(
        self, calls: list[tuple[str, str, dict[str, Any]]], *, text: str = "",
        usage: tuple[int, int] = (10, 5),
    ) -> Self:
        """Tool calls given as ``(id, name, input)``, after a text block when ``text``."""
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        blocks += [{"type": "tool_use", "id": cid, "name": name, "input": args}
                   for cid, name, args in calls]
        return self.reply_blocks(blocks, stop_reason="tool_use", usage=usage)

    def reply_blocks(
        self, blocks: list[dict[str, Any]], *, stop_reason: str | None = "end_turn",
        usage: tuple[int, int] = (10, 5), delay_s: float = 0.0, times: int = 1,
    ) -> Self:
        """A message with exactly these content blocks."""
        return self.push(self._blocks_step(blocks, stop_reason, usage, delay_s), times=times)

    def _blocks_step(
        self, blocks: list[dict[str, Any]], stop_reason: str | None, usage: tuple[int, int],
        delay_s: float,
    ) -> Step:
        def build(req: dict[str, Any]) -> Any:
            return {
                "id": self.next_id("msg_"), "type": "message", "role": "assistant",
                "model": req.get("model"), "content": blocks, "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
            }

        return Step(200, build, [], delay_s)

    def overloaded(self, *, times: int = 1) -> Self:
        """Anthropic's 529 ``overloaded_error``."""
        return self.fail(529, "Overloaded", error_type="overloaded_error", times=times)

    def context_length(self) -> Self:
        """The 400 Anthropic sends when the prompt does not fit."""
        return self.fail(400, "prompt is too long: 300000 tokens > 200000 maximum")

    def error_type(self, status: int) -> str:
        return {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")

    def error_body(self, error_type: str, message: str) -> Any:
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def check_auth(self, req: Request) -> str | None:
        if req.header("x-api-key") == self.api_key:
            return None
        if req.header("authorization") == f"Bearer {self.api_key}":
            return None
        return "invalid x-api-key"

    def default_reply(self) -> Step:
        return self._blocks_step([{"type": "text", "text": "ok"}], "end_turn", (10, 5), 0.0)

    def check_body(self, body: Any) -> str | None:
        """Reject what the real endpoint rejects (a useful subset)."""
        if not isinstance(body, dict):
            return "invalid JSON body"
        if not isinstance(body.get("model"), str) or not body["model"]:
            return "model: Field required"
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return "max_tokens: Field required"
        if "system" in body and not isinstance(body["system"], str | list):
            return "system: Input should be a valid string or list"
        for tool in body.get("tools", []):
            if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
                return "tools: each tool needs name and input_schema"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        return _check_anthropic_messages(messages)


def _check_anthropic_messages(messages: list[Any]) -> str | None:
    previous_tool_uses: set[Any] = set()
    previous_role = None
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == previous_role:
            return ('messages: roles must alternate between "user" and "assistant", but found '
                    f'multiple "{role}" roles in a row')
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        last = i == len(messages) - 1
        empty = not isinstance(blocks, list) or not blocks or any(
            b.get("type") == "text" and not b.get("text") for b in blocks
        )
        if empty and not (last and role == "assistant"):
            return (f"messages.{i}: all messages must have non-empty content except for "
                    "the optional final assistant message")
        types = [b.get("type") for b in blocks or []]
        if role == "user":
            answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
            if orphans := answered - previous_tool_uses:
                return (f"messages.{i}.content: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {', '.join(sorted(map(str, orphans)))}. Each "
                        "`tool_result` block must have a corresponding `tool_use` block in "
                        "the previous message.")
            if unanswered := previous_tool_uses - answered:
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                        f"immediately after: {', '.join(sorted(map(str, unanswered)))}")
            if any(t != "tool_result" for t in types[: types.count("tool_result")]):
                return f"messages.{i}.content: tool_result blocks must come first"
            if any(not isinstance(b.get("is_error", False), bool) for b in blocks):
                return f"messages.{i}.content: is_error must be a boolean"
            previous_tool_uses = set()
        else:
            if "tool_result" in types:
                return f"messages.{i}.content: tool_result blocks are only allowed in user turns"
            previous_tool_uses = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
        previous_role = role
    return None
