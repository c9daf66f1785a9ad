"""One exception tree for everything orrad raises on purpose.

Foreign errors (httpx, sqlite3, yaml, msgspec, trio-websocket) are translated into these at
the boundary where they occur, so callers only ever catch ``OrradError`` subclasses.
"""

from __future__ import annotations


class OrradError(Exception):
    """Base of every error orrad raises deliberately."""


# -- configuration --------------------------------------------------------------------------


class ConfigError(OrradError):
    """An invalid configuration file or value.

    ``str()`` is ``PATH:LINE:COL: message`` (line and column 1-based, left out when unknown),
    the form every configuration problem is printed in.
    """

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None,
        col: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        super().__init__(self.location_prefix() + message)

    def location_prefix(self) -> str:
        if self.path is None:
            return ""
        parts = [self.path]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts) + ": "


class ConfigErrors(OrradError):
    """Several configuration problems found in one pass (``orrad check`` prints them all)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


# -- model ---------------------------------------------------------------------------------


class InvalidNamespace(OrradError, ValueError):
    """A namespace key or segment that breaks the rules of CONTRACT §3."""


# -- providers -----------------------------------------------------------------------------


class ProviderError(OrradError):
    """A model provider failed. ``str()`` starts with ``provider error:``."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.detail = message
        self.status = status
        super().__init__(f"provider error: {message}")


class ProviderAuthError(ProviderError):
    """The provider rejected our credentials (401/403). Never retried."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(f"authentication failed: {message}", status=status)


class ProviderRateLimited(ProviderError):
    """429 from the provider; ``retry_after_s`` comes from ``retry-after`` when present."""

    retryable = True

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, status: int | None = 429
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"rate limited: {message}", status=status)


class ProviderUnavailable(ProviderError):
    """A transient failure: 408/409/5xx/529, connection errors, timeouts. Retried."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, status=status)


class ContextLengthExceeded(ProviderError):
    """The request did not fit the model's context window."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(f"context length exceeded: {message}", status=status)


# -- tools ---------------------------------------------------------------------------------


class ToolError(OrradError):
    """A tool failed; its ``str()`` becomes the tool result shown to the model."""


class ToolInvalidInput(ToolError):
    def __init__(self, message: str) -> None:
        super().__init__(f"invalid input: {message}")


class ToolExecutionFailed(ToolError):
    def __init__(self, message: str) -> None:
        super().__init__(f"execution failed: {message}")


# -- state ---------------------------------------------------------------------------------


class StoreError(OrradError):
    """The state store could not be read or written."""

    def __init__(self, message: str) -> None:
        super().__init__(f"storage error: {message}")


class StoreCorrupt(StoreError):
    """The state database is damaged: SQLite found a malformed page (``SQLITE_CORRUPT``,
    ``SQLITE_NOTADB``) or a stored record cannot be read back. Retrying cannot repair it;
    the operator restores the file from a backup or moves it away."""

    def __init__(self, detail: str, path: str | None = None, *, hint: str = "") -> None:
        # SQLite quotes damaged bytes: keep the log line printable and short.
        detail = "".join(c if c.isprintable() else "?" for c in detail)[:300]
        self.detail = detail
        self.path = path
        where = f"the state database {path}" if path else "the state database"
        super().__init__(f"{where} is damaged ({detail})" + (f"; {hint}" if hint else ""))


class UnsavedRun(StoreError):
    """A run produced its answer but the session could not be saved afterwards.

    ``result`` is the run's result: a caller waiting in this process can still be given
    the answer, although the conversation does not hold it.
    """

    def __init__(self, error: StoreError, result: object) -> None:
        super().__init__(str(error).removeprefix("storage error: "))
        self.result = result


# -- runtime -------------------------------------------------------------------------------


class AgentError(OrradError):
    """A run of the agent loop failed (wraps provider and store errors)."""


class MaxTurnsExceeded(AgentError):
    def __init__(self, turns: int) -> None:
        self.turns = turns
        super().__init__(f"max turns ({turns}) exceeded")


class UnknownAgent(AgentError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown agent {name!r}; known agents: {', '.join(known) or 'none'}")


# -- channels ------------------------------------------------------------------------------


class ChannelError(OrradError):
    """A channel could not deliver or receive (the seed's ``ChannelError``)."""


class ChannelSendError(ChannelError):
    """A reply could not be delivered. ``retryable``: the same send may work later (a
    platform outage, a rate limit), so the pipeline keeps the reply and tries again; false
    means the platform refused this reply for good and it is recorded as failed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"send error: {message}")
        self.retryable = retryable


class ChannelClosed(ChannelError):
    def __init__(self) -> None:
        super().__init__("channel closed")


class FatalChannelError(ChannelError):
    """Retrying cannot help (rejected credentials, invalid configuration).

    The supervisor moves the channel straight to ``failed``; the message tells the
    operator what to fix.
    """


class DaemonError(OrradError):
    """The running daemon could not be reached or answered an error (CLI client side)."""


class DaemonStopping(OrradError):
    """The daemon is stopping, so a request (a reload) was not carried out."""
