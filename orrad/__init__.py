"""orrad: a trio daemon connecting an LLM agent runtime to many chat channels.

The names below are the Python API for plugin authors and embedders (CONTRACT §9).
"""

from __future__ import annotations

from orrad.adapter import ChannelAdapter
from orrad.channels.base import BaseChannel, Channel, ChannelContext
from orrad.errors import (
    ChannelError,
    ChannelSendError,
    ConfigError,
    FatalChannelError,
    OrradError,
    ProviderError,
    ToolError,
    ToolExecutionFailed,
    ToolInvalidInput,
)
from orrad.model import (
    InboundMessage,
    Message,
    Namespace,
    OutboundError,
    OutboundMessage,
    Receipt,
    RunSummary,
    ToolCall,
    ToolResult,
    Usage,
)
from orrad.runtime.loop import RunResult, Runtime, RuntimeConfig
from orrad.runtime.policy import PolicyRegistry, ToolPolicy
from orrad.runtime.provider import (
    CompletionRequest,
    CompletionResponse,
    Provider,
    ToolDefinition,
)
from orrad.runtime.sessions import MemorySessionStore, Session, SessionStore
from orrad.runtime.tools import Tool, ToolRegistry
from orrad.version import __version__

__all__ = [
    "BaseChannel",
    "Channel",
    "ChannelAdapter",
    "ChannelContext",
    "ChannelError",
    "ChannelSendError",
    "CompletionRequest",
    "CompletionResponse",
    "ConfigError",
    "FatalChannelError",
    "InboundMessage",
    "MemorySessionStore",
    "Message",
    "Namespace",
    "OrradError",
    "OutboundError",
    "OutboundMessage",
    "PolicyRegistry",
    "Provider",
    "ProviderError",
    "Receipt",
    "RunResult",
    "RunSummary",
    "Runtime",
    "RuntimeConfig",
    "Session",
    "SessionStore",
    "Tool",
    "ToolCall",
    "ToolDefinition",
    "ToolError",
    "ToolExecutionFailed",
    "ToolInvalidInput",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "Usage",
    "__version__",
]
