"""The README's "Writing a plugin" examples run as written."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import msgspec
import trio

from orrad import MemorySessionStore, Runtime
from orrad.channels.base import ChannelContext
from orrad.config import DaemonConfig
from orrad.router import AgentSet, Router
from orrad.runtime.providers.echo import EchoProvider
from orrad.supervisor import ChannelManager, ChannelState

README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_examples() -> dict[str, Any]:
    text = README.read_text()
    section = text[text.index("## Writing a plugin"):]
    namespace: dict[str, Any] = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


async def test_readme_channel_example_runs_under_the_supervisor() -> None:
    examples = plugin_examples()
    room_channel, room_config = examples["RoomChannel"], examples["RoomConfig"]
    config = msgspec.convert(
        {"kind": "room", "name": "lobby", "restart": {"policy": "transient"}}, room_config)
    router = Router(AgentSet({"default": Runtime(EchoProvider(), MemorySessionStore())},
                             "default"))
    daemon = msgspec.convert({}, DaemonConfig)
    output = io.StringIO()
    with redirect_stdout(output):
        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            manager = ChannelManager(router.intake, room_channel,
                                     lambda c: ChannelContext(c.name or "?", daemon))
            await nursery.start(manager.serve)
            await manager.apply({"room.yaml": config}, {})
            with trio.fail_after(5):
                await manager.runners["room.yaml"].finished.wait()
            assert manager.statuses()[0].state is ChannelState.COMPLETED
            nursery.cancel_scope.cancel()
    assert output.getvalue().splitlines() == ["echo: hello", "echo: bye"]


async def test_readme_tool_example() -> None:
    dice = plugin_examples()["DiceTool"]()
    assert dice.definition.name == "dice"
    assert 1 <= int(await dice.execute({"sides": 6})) <= 6
    from orrad import ToolInvalidInput

    try:
        await dice.execute({"sides": 1})
    except ToolInvalidInput as exc:
        assert "sides" in str(exc)
    else:
        raise AssertionError("expected ToolInvalidInput")
