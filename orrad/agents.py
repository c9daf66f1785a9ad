"""Build the agent runtimes a daemon file describes (providers, tools, policies, budgets)."""

from __future__ import annotations

import os

from orrad.config import DaemonConfig, normalized_base_url
from orrad.errors import ConfigError
from orrad.metrics import Metrics
from orrad.model import Namespace
from orrad.router import AgentSet
from orrad.runtime.loop import NamespaceLocks, Runtime, RuntimeConfig
from orrad.runtime.policy import PolicyRegistry, ToolPolicy
from orrad.runtime.provider import Provider
from orrad.runtime.providers import build_provider
from orrad.runtime.providers.http import HTTPClient
from orrad.runtime.sessions import SessionStore
from orrad.runtime.tokenizer import load_tokenizer
from orrad.runtime.tools import ToolRegistry

__all__ = ["build_agents", "build_policies", "tokenizer_cache_dir"]


def tokenizer_cache_dir(config: DaemonConfig) -> str:
    """A writable folder for tiktoken's cache (the bundled file is copied there)."""
    return os.path.join(config.state_dir, "tiktoken")


def build_policies(config: DaemonConfig) -> PolicyRegistry:
    registry = PolicyRegistry()
    for policy in config.policies:
        if policy.allow_tools is not None:
            rule = ToolPolicy.allow_list(policy.allow_tools)
        else:
            rule = ToolPolicy.deny_list(policy.deny_tools or [])
        registry.set_policy(Namespace.parse(policy.namespace), rule)
    return registry


def build_providers(config: DaemonConfig, client: HTTPClient) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name, spec in config.providers.items():
        providers[name] = build_provider(
            name,
            kind=spec.kind,
            base_url=normalized_base_url(spec),
            api_key=spec.api_key,
            model=spec.model,
            timeout_s=spec.timeout_s,
            max_retries=spec.max_retries,
            client=client,
        )
    if "echo" not in providers:
        providers["echo"] = build_provider(
            "echo", kind="echo", base_url="", api_key="", model=None, timeout_s=0,
            max_retries=0, client=client,
        )
    return providers


def build_agents(
    config: DaemonConfig,
    *,
    store: SessionStore,
    tools: ToolRegistry,
    client: HTTPClient,
    locks: NamespaceLocks | None = None,
    metrics: Metrics | None = None,
) -> AgentSet:
    """One :class:`Runtime` per configured agent, sharing store, locks, HTTP client and
    metrics (private ones when none are given)."""
    providers = build_providers(config, client)
    policies = build_policies(config)
    locks = locks or NamespaceLocks()
    cache_dir = tokenizer_cache_dir(config)
    runtimes: dict[str, Runtime] = {}
    for name, agent in config.agents.items():
        try:
            tokenizer = load_tokenizer(agent.tokenizer, cache_dir=cache_dir)
        except ConfigError as exc:
            raise ConfigError(f"agents.{name}.tokenizer: {exc.message}",
                              path=config.path) from None
        runtimes[name] = Runtime(
            providers[agent.provider],
            store,
            tools.subset(agent.tools),
            policies,
            tokenizer,
            RuntimeConfig(
                system_prompt=agent.system_prompt,
                model=agent.model,
                max_turns=agent.max_turns,
                max_output_tokens=agent.max_output_tokens,
                temperature=agent.temperature,
                context_tokens=agent.context_tokens,
            ),
            name=name,
            locks=locks,
            metrics=metrics,
        )
    default = config.default_agent or next(iter(config.agents))
    return AgentSet(runtimes, default)
