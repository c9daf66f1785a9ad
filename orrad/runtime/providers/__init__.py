"""Model providers: ``echo`` (offline), ``openai`` (Chat Completions) and ``anthropic``.

:func:`build_provider` turns one validated ``providers:`` entry into a
:class:`~orrad.runtime.provider.Provider`. Layering, top to bottom::

    openai.py / anthropic.py   wire mapping (pure) + Provider classes
    retry.py                   status -> error translation, retry-after, tenacity backoff
    http.py                    shared client, one guarded POST, transport errors
"""

from __future__ import annotations

from orrad.errors import ConfigError
from orrad.runtime.provider import Provider
from orrad.runtime.providers import anthropic, openai
from orrad.runtime.providers.anthropic import AnthropicProvider
from orrad.runtime.providers.echo import EchoProvider
from orrad.runtime.providers.http import HTTPClient, make_http_client
from orrad.runtime.providers.openai import OpenAIProvider
from orrad.runtime.providers.retry import RetryPolicy

__all__ = [
    "PROVIDER_KINDS",
    "AnthropicProvider",
    "EchoProvider",
    "OpenAIProvider",
    "RetryPolicy",
    "build_provider",
    "make_http_client",
]

PROVIDER_KINDS = ("openai", "anthropic", "echo")


def build_provider(
    name: str,
    *,
    kind: str,
    base_url: str | None = None,
    api_key: str = "",
    model: str | None = None,
    timeout_s: float = 120.0,
    max_retries: int = 4,
    client: HTTPClient | None = None,
) -> Provider:
    """Build the provider ``name`` of ``kind`` from plain configuration values.

    Args:
        base_url: already normalised by config (openai: ends in ``/v1``; anthropic: no
            ``/v1``); ``None`` or ``""`` means the vendor's public endpoint.
        timeout_s: deadline of each HTTP attempt.
        max_retries: retries after the first attempt for transient failures.
        client: the daemon's shared client; required by ``openai`` and ``anthropic``.

    Raises:
        ConfigError: unknown ``kind``.
        ValueError: an HTTP kind without a ``client``.
    """
    if kind == "echo":
        return EchoProvider(name)
    if kind not in PROVIDER_KINDS:
        raise ConfigError(
            f"provider {name!r}: unknown kind {kind!r} (expected one of "
            f"{', '.join(PROVIDER_KINDS)})"
        )
    if client is None:
        raise ValueError(f"provider {name!r} of kind {kind!r} needs an HTTP client")
    policy = RetryPolicy(max_retries=max_retries, timeout_s=timeout_s)
    if kind == "openai":
        return OpenAIProvider(
            name, client=client, base_url=base_url or openai.DEFAULT_BASE_URL,
            api_key=api_key, model=model, policy=policy,
        )
    return AnthropicProvider(
        name, client=client, base_url=base_url or anthropic.DEFAULT_BASE_URL,
        api_key=api_key, model=model, policy=policy,
    )
