"""orrad: a trio daemon connecting an LLM agent runtime to many chat channels.

The names below are the Python API for plugin authors and embedders (CONTRACT §9).
"""

from __future__ import annotations

__version__ = "0.1.0"

from orrad.channels.base import BaseChannel, Channel, ChannelAdapter, ChannelContext
from orrad.errors import (
    ChannelError,
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

__all__ = [
    "BaseChannel",
    "Channel",
    "ChannelAdapter",
    "ChannelContext",
    "ChannelError",
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
    "RunResult",
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
