"""Tools the model may call, kept in a registry that preserves insertion order.

Order matters: the tool list is part of the prompt, and a stable order keeps provider-side
prompt caches warm (orra's HashMap shuffled it on every request).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from orrad.errors import ToolInvalidInput
from orrad.runtime.provider import ToolDefinition

__all__ = ["CurrentTimeTool", "Tool", "ToolRegistry", "builtin_tools", "load_tool_plugins"]

log = logging.getLogger(__name__)

TOOL_ENTRY_POINT_GROUP = "orrad.tools"


@runtime_checkable
class Tool(Protocol):
    """Something the model can ask to run.

    ``execute`` returns the text shown to the model, or raises
    :class:`~orrad.errors.ToolError` (its message is shown instead, marked as an error).
    """

    @property
    def definition(self) -> ToolDefinition: ...

    async def execute(self, arguments: dict[str, Any]) -> str: ...


class ToolRegistry:
    """Tools by name. Registering a name again replaces the tool in its original position."""

    def __init__(self, tools: list[Tool] | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools or ():
            self.register(tool)

    def register(self, tool: Tool) -> None:
        self._tools[tool.definition.name] = tool

    def remove(self, name: str) -> bool:
        return self._tools.pop(name, None) is not None

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[ToolDefinition]:
        return [tool.definition for tool in self._tools.values()]

    def subset(self, names: list[str]) -> ToolRegistry:
        """A registry with only ``names`` (in this registry's order); unknown names skipped."""
        wanted = set(names)
        return ToolRegistry([t for n, t in self._tools.items() if n in wanted])

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())


class CurrentTimeTool:
    """``current_time``: the current date and time, in UTC unless an offset is asked for."""

    definition = ToolDefinition(
        name="current_time",
        description="Get the current date and time (ISO 8601). Optional utc_offset_hours.",
        input_schema={
            "type": "object",
            "properties": {
                "utc_offset_hours": {
                    "type": "number",
                    "description": "Offset from UTC in hours, e.g. 2 or -5.5",
                }
            },
        },
    )

    async def execute(self, arguments: dict[str, Any]) -> str:
        from datetime import timedelta, timezone

        offset = arguments.get("utc_offset_hours", 0)
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise ToolInvalidInput("utc_offset_hours must be a number")
        if not -24 < offset < 24:
            raise ToolInvalidInput("utc_offset_hours must be between -24 and 24")
        tz = UTC if offset == 0 else timezone(timedelta(hours=offset))
        return datetime.now(tz).isoformat(timespec="seconds")


def builtin_tools() -> list[Tool]:
    return [CurrentTimeTool()]


def load_tool_plugins(registry: ToolRegistry) -> None:
    """Add the tools that installed packages declare in the ``orrad.tools`` group.

    An entry point names a Tool class (instantiated without arguments) or a Tool instance.
    A plugin that fails to load is logged and skipped: one broken package must not stop the
    daemon.
    """
    for ep in entry_points(group=TOOL_ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            tool = obj() if isinstance(obj, type) else obj
            if not isinstance(tool, Tool):
                raise TypeError(f"{ep.value} is not a Tool")
            registry.register(tool)
        except Exception as exc:
            log.error("tool plugin %s failed to load: %s", ep.name, exc)


def default_tool_registry() -> ToolRegistry:
    registry = ToolRegistry(builtin_tools())
    load_tool_plugins(registry)
    return registry
