"""Scripted fake-OpenAI answers shared by the process tests."""

from __future__ import annotations

from typing import Any

from tests.fakes.llm import Step

__all__ = ["echo_step"]


def echo_step(delay_s: float = 0.0, prefix: str = "llm: ") -> Step:
    """A chat completion answering ``<prefix><the last user message>`` after ``delay_s``
    (push it on a :class:`~tests.fakes.llm.FakeOpenAI` with ``fake.push(step, times=N)``)."""

    def build(request: dict[str, Any]) -> Any:
        last = next(m for m in reversed(request["messages"]) if m["role"] == "user")
        message = {"role": "assistant", "content": f"{prefix}{last['content']}"}
        return {
            "id": "chatcmpl-echo", "object": "chat.completion", "created": 0,
            "model": request.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": message}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    return Step(200, build, [], delay_s)
