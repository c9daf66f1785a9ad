"""The configuration schema: msgspec Structs for the daemon file and channel files.

Defaults are those of CONTRACT §2. Every Struct forbids unknown fields and is frozen; the
loader (:mod:`orrad.config.loader`) fills derived values (channel ``name``, webhook
``namespace_prefix``, absolute paths, normalised ``base_url``...) with
``msgspec.structs.replace``.

Checks that a type cannot express live in ``problems()`` methods, which return
:class:`Problem` records (a path inside the file plus a message) so the loader can point
at the offending line. Messages name keys, never secret values.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Annotated, ClassVar, Literal, NamedTuple, Self
from urllib.parse import urlsplit

import msgspec

from orrad.config.yamlpos import Path
from orrad.errors import InvalidNamespace
from orrad.listen import parse_listen
from orrad.model import Namespace

__all__ = [
    "AgentConfig",
    "ApiConfig",
    "ChannelConfig",
    "DaemonConfig",
    "DiscordChannelConfig",
    "FederationConfig",
    "PeerConfig",
    "PolicyConfig",
    "Problem",
    "ProviderConfig",
    "RestartConfig",
    "RestartPolicy",
    "RoutingConfig",
    "StdinChannelConfig",
    "WebhookAuthConfig",
    "WebhookChannelConfig",
    "is_loopback",
    "normalized_base_url",
    "parse_listen",
]

PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
RestartPolicy = Literal["permanent", "transient", "temporary"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_NAME_RULE = "use 1-128 characters of A-Z a-z 0-9 _ . -"


class Problem(NamedTuple):
    """A semantic problem at ``path`` (the key itself when ``key`` is true).

    ``see`` points at a related place in the same file (e.g. the first of two conflicting
    declarations); the loader appends ``at line N`` for it to the message.
    """

    path: Path
    message: str
    key: bool = False
    see: Path | None = None


class _Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of every config Struct."""


# -- helpers -------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (not for an empty host)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url_problem(path: Path, url: str) -> list[Problem]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return [Problem(path, "expected an http:// or https:// URL")]
    return []


def _namespace_problem(path: Path, value: str) -> list[Problem]:
    try:
        Namespace.parse(value)
    except InvalidNamespace as e:
        return [Problem(path, str(e))]
    return []


def _listen_problem(path: Path, value: str) -> list[Problem]:
    try:
        parse_listen(value)
    except ValueError as e:
        return [Problem(path, f"invalid listen address: {e}")]
    return []


_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _allow_entry_ok(entry: str) -> bool:
    """A ``callback_allow`` entry: a network, an address, or a host name in ASCII (IDN
    names in their ``xn--`` form), optionally ``*.``-prefixed for its subdomains."""
    try:
        ipaddress.ip_network(entry.strip(), strict=False)
        return True
    except ValueError:
        pass
    name = entry.strip().lower().removesuffix(".").removeprefix("*.")
    return 0 < len(name) <= 253 and all(_HOST_LABEL_RE.fullmatch(p) for p in name.split("."))


def _known(names: Iterable[str]) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:20]) + (", ..." if len(listed) > 20 else "")
    return f"known: {shown}" if listed else "none are defined"


# -- daemon file ---------------------------------------------------------------------------

ProviderKind = Literal["openai", "anthropic", "echo"]

_DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


class ProviderConfig(_Config, frozen=True, kw_only=True):
    """One model provider (``providers.<name>``)."""

    kind: ProviderKind
    base_url: str | None = None
    api_key: str = ""
    model: str | None = None
    timeout_s: PosFloat = 120.0
    max_retries: NonNegInt = 4

    def problems(self) -> list[Problem]:
        if self.kind == "echo" or self.base_url is None:
            return []
        return _http_url_problem(("base_url",), self.base_url)


def normalized_base_url(cfg: ProviderConfig) -> str:
    """The base URL requests are built on (CONTRACT §8), without a trailing ``/``.

    openai: default ``https://api.openai.com/v1``; ``/v1`` is appended only when the URL's
    path is empty or ``/``. anthropic: default ``https://api.anthropic.com``; a trailing
    ``/v1`` is stripped (requests go to ``{base_url}/v1/messages``). echo: ``""`` unless set.
    """
    url = cfg.base_url or _DEFAULT_BASE_URLS.get(cfg.kind, "")
    if cfg.kind == "openai":
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            return parts._replace(path="/v1").geturl()
        return url.rstrip("/")
    if cfg.kind == "anthropic":
        return url.rstrip("/").removesuffix("/v1").rstrip("/")
    return url


class AgentConfig(_Config, frozen=True, kw_only=True):
    """One agent (``agents.<name>``): a provider, a prompt, tools and a token budget."""

    provider: str = "echo"
    system_prompt: str | None = None
    model: str | None = None
    max_turns: PosInt = 10
    max_output_tokens: PosInt = 1024
    temperature: NonNegFloat | None = None
    context_tokens: PosInt = 8192
    tokenizer: str = "cl100k_base"
    tools: list[str] = msgspec.field(default_factory=list)
    description: str = ""


class PolicyConfig(_Config, frozen=True, kw_only=True):
    """Tool policy for a namespace prefix: exactly one of ``allow_tools``/``deny_tools``."""

    namespace: str
    allow_tools: list[str] | None = None
    deny_tools: list[str] | None = None

    def problems(self) -> list[Problem]:
        out = _namespace_problem(("namespace",), self.namespace)
        if (self.allow_tools is None) == (self.deny_tools is None):
            out.append(Problem((), "a policy needs exactly one of allow_tools or deny_tools"))
        return out


class ApiConfig(_Config, frozen=True, kw_only=True):
    """The daemon API listener; ``listen: ""`` disables it, ``token: ""`` means no auth."""

    listen: str = "127.0.0.1:8470"
    token: str = ""

    def problems(self) -> list[Problem]:
        return _listen_problem(("listen",), self.listen) if self.listen else []


class RoutingConfig(_Config, frozen=True, kw_only=True):
    max_concurrency: PosInt = 64
    rerun_interrupted: bool = True


class PeerConfig(_Config, frozen=True, kw_only=True):
    """A federation peer; ``secret: ""`` means ``federation.secret``."""

    name: str
    url: str
    secret: str = ""
    namespaces: list[str] = msgspec.field(default_factory=list)
    on_unavailable: Literal["fail", "queue", "local"] = "fail"
    queue_ttl_s: PosFloat = 3600.0
    timeout_s: PosFloat = 120.0

    def problems(self) -> list[Problem]:
        out = _http_url_problem(("url",), self.url)
        if not _NAME_RE.fullmatch(self.name):
            out.append(Problem(("name",), f"invalid peer name: {_NAME_RULE}"))
        for i, ns in enumerate(self.namespaces):
            out += _namespace_problem(("namespaces", i), ns)
        return out


class FederationConfig(_Config, frozen=True, kw_only=True):
    """Federation listener and peers (CONTRACT §6)."""

    listen: str = "0.0.0.0:8471"
    secret: str = ""
    max_hops: PosInt = 4
    peers: list[PeerConfig] = msgspec.field(default_factory=list)

    def problems(self, instance: str) -> list[Problem]:
        """Peer names unique and not ``instance``; no namespace prefix declared twice
        (by two peers, or twice by one); every peer has a secret."""
        out = _listen_problem(("listen",), self.listen)
        names: dict[str, int] = {}
        owners: dict[str, tuple[int, int]] = {}  # prefix -> (peer index, its position)
        for i, peer in enumerate(self.peers):
            at: Path = ("peers", i)
            out += [Problem(at + p.path, p.message, p.key) for p in peer.problems()]
            if peer.name in names:
                out.append(Problem((*at, "name"), f"duplicate peer name {peer.name!r}: "
                                   "already used", see=("peers", names[peer.name], "name")))
            else:
                names[peer.name] = i
            if peer.name == instance:
                out.append(Problem((*at, "name"), "a peer cannot be this daemon's instance "
                                   f"({instance!r}): a daemon is not its own peer"))
            if not (peer.secret or self.secret):
                out.append(Problem(at, f"peer {peer.name!r} has no secret and "
                                       "federation.secret is empty"))
            for j, prefix in enumerate(peer.namespaces):
                first = owners.setdefault(prefix, (i, j))
                if first == (i, j):
                    continue
                see: Path = ("peers", first[0], "namespaces", first[1])
                if first[0] != i:
                    other = self.peers[first[0]].name
                    message = (f"namespace prefix {prefix!r} of peer {peer.name!r} is already "
                               f"declared by peer {other!r}")
                else:
                    message = f"namespace prefix {prefix!r} is listed twice"
                out.append(Problem((*at, "namespaces", j), message, see=see))
        return out


def _default_agents() -> dict[str, AgentConfig]:
    return {"default": AgentConfig()}


class DaemonConfig(_Config, frozen=True, kw_only=True):
    """The daemon file (CONTRACT §2.1).

    After :func:`~orrad.config.loader.load_daemon_config`: ``state_dir`` and
    ``channels_dir`` are absolute, ``providers`` contains ``echo``, every provider's
    ``base_url`` is normalised, and ``default_agent`` names an agent. ``path`` (the file,
    absolute, or ``None`` for built-in defaults) and ``base_dir`` (its folder, else the
    working directory) are filled by the loader and are not keys of the file.
    """

    internal_fields: ClassVar[frozenset[str]] = frozenset({"path", "base_dir"})

    instance: str = msgspec.field(default_factory=socket.gethostname)
    state_dir: str = ".orrad"
    channels_dir: str = "channels.d"
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    providers: dict[str, ProviderConfig] = msgspec.field(default_factory=dict)
    agents: dict[str, AgentConfig] = msgspec.field(default_factory=_default_agents)
    default_agent: str | None = None
    policies: list[PolicyConfig] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    federation: FederationConfig | None = None
    path: str | None = None
    base_dir: str = ""

    def peer_names(self) -> set[str]:
        return {p.name for p in self.federation.peers} if self.federation else set()

    def has_agent(self, name: str) -> bool:
        """``name`` is a local agent, or ``agent@peer`` with a declared peer."""
        local, at, peer = name.rpartition("@")
        return name in self.agents or (bool(at and local) and peer in self.peer_names())

    def problems(self, known_tools: frozenset[str] | None = None) -> list[Problem]:
        """Everything a type cannot say, including references between sections."""
        out: list[Problem] = []
        if not _NAME_RE.fullmatch(self.instance):
            out.append(Problem(("instance",), f"invalid instance name: {_NAME_RULE}"))
        out += [Problem(("api", *p.path), p.message, p.key) for p in self.api.problems()]
        for name, provider in self.providers.items():
            out += [Problem(("providers", name, *p.path), p.message) for p in provider.problems()]
        if not self.agents:
            out.append(Problem(("agents",), "at least one agent is required"))
        for name, agent in self.agents.items():
            out += self._agent_problems(name, agent, known_tools)
        if self.default_agent is not None and self.default_agent not in self.agents:
            out.append(Problem(("default_agent",), f"unknown agent {self.default_agent!r} "
                                                   f"({_known(self.agents)})"))
        seen: set[str] = set()
        for i, policy in enumerate(self.policies):
            out += [Problem(("policies", i, *p.path), p.message) for p in policy.problems()]
            if policy.namespace in seen:
                out.append(Problem(("policies", i, "namespace"),
                                   f"duplicate policy for namespace {policy.namespace!r}"))
            seen.add(policy.namespace)
            for key in ("allow_tools", "deny_tools"):
                tools = getattr(policy, key) or []
                out += _tool_problems(("policies", i, key), tools, known_tools)
        if self.federation is not None:
            out += [Problem(("federation", *p.path), p.message, p.key,
                            None if p.see is None else ("federation", *p.see))
                    for p in self.federation.problems(self.instance)]
        return out

    def _agent_problems(
        self, name: str, agent: AgentConfig, known_tools: frozenset[str] | None
    ) -> list[Problem]:
        at: Path = ("agents", name)
        out: list[Problem] = []
        if not _NAME_RE.fullmatch(name):
            out.append(Problem(at, f"invalid agent name {name!r}: {_NAME_RULE}", key=True))
        if agent.provider not in self.providers:
            out.append(Problem((*at, "provider"), f"unknown provider {agent.provider!r} "
                                                  f"({_known(self.providers)})"))
        out += _tool_problems((*at, "tools"), agent.tools, known_tools)
        problem = tokenizer_problem(agent.tokenizer)
        if problem:
            out.append(Problem((*at, "tokenizer"), problem))
        return out


def tokenizer_problem(name: str) -> str | None:
    """Why ``name`` can never be a tokenizer, or None (whether its file is cached is only
    known when it is loaded; orrad never downloads one)."""
    import tiktoken

    known = {"chars", "cl100k_base", *tiktoken.list_encoding_names()}
    if name in known:
        return None
    return f"unknown tokenizer {name!r} (known: {', '.join(sorted(known))})"


def _tool_problems(at: Path, tools: list[str], known: frozenset[str] | None) -> list[Problem]:
    if known is None:
        return []
    return [Problem((*at, i), f"unknown tool {t!r} ({_known(known)})")
            for i, t in enumerate(tools) if t not in known]


# -- channel files -------------------------------------------------------------------------


class RestartConfig(_Config, frozen=True, kw_only=True):
    """Supervisor settings of one channel (OTP restart types, intensity, backoff)."""

    policy: RestartPolicy = "permanent"
    max_restarts: NonNegInt = 5
    window_s: PosFloat = 60.0
    backoff_initial_s: NonNegFloat = 1.0
    backoff_max_s: NonNegFloat = 60.0

    def problems(self) -> list[Problem]:
        if self.backoff_max_s < self.backoff_initial_s:
            return [Problem(("backoff_max_s",), "backoff_max_s is below backoff_initial_s")]
        return []


class ChannelConfig(_Config, frozen=True, kw_only=True):
    """Keys common to every channel file (CONTRACT §2.2); kinds subclass it.

    A plugin kind subclasses this Struct, may set ``default_restart_policy`` and may
    override :meth:`with_defaults` and :meth:`problems` (calling ``super()``).
    """

    default_restart_policy: ClassVar[RestartPolicy] = "permanent"

    kind: str
    name: str | None = None
    enabled: bool = True
    agent: str | None = None
    restart: RestartConfig | None = None

    def effective_restart(self) -> RestartConfig:
        """``restart`` if given, else the kind's default policy with default limits."""
        if self.restart is not None:
            return self.restart
        return RestartConfig(policy=self.default_restart_policy)

    def with_defaults(self, stem: str) -> Self:
        """Fill derived defaults; ``stem`` is the file name without extension."""
        return self if self.name else msgspec.structs.replace(self, name=stem)

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        """Checks after :meth:`with_defaults`, including references to ``daemon``."""
        out: list[Problem] = []
        try:
            Namespace(self.name or "")
        except InvalidNamespace as e:
            out.append(Problem(("name",), f"invalid channel name: {e}"))
        if self.agent is not None and not daemon.has_agent(self.agent):
            out.append(Problem(("agent",), f"unknown agent {self.agent!r} "
                                           f"({_known(daemon.agents)})"))
        if self.restart is not None:
            out += [Problem(("restart", *p.path), p.message) for p in self.restart.problems()]
        return out


class StdinChannelConfig(ChannelConfig, frozen=True, kw_only=True):
    """``kind: stdin`` — lines from standard input; end of input completes it."""

    default_restart_policy: ClassVar[RestartPolicy] = "transient"

    namespace: str = "cli:local"
    prompt: str = "> "

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        return super().problems(daemon) + _namespace_problem(("namespace",), self.namespace)


class WebhookAuthConfig(_Config, frozen=True, kw_only=True):
    """Bearer token and/or Standard Webhooks signing secrets (a list allows rotation)."""

    bearer_token: str | None = None
    signing_secret: str | list[str] | None = None

    @property
    def signing_secrets(self) -> list[str]:
        """The non-empty signing secrets, in order."""
        raw = self.signing_secret
        items = [raw] if isinstance(raw, str) else list(raw or [])
        return [s for s in items if s]

    @property
    def enabled(self) -> bool:
        return bool(self.bearer_token) or bool(self.signing_secrets)

    def problems(self) -> list[Problem]:
        raw = self.signing_secret
        items = [(("signing_secret",), raw)] if isinstance(raw, str) else [
            (("signing_secret", i), s) for i, s in enumerate(raw or [])]
        out: list[Problem] = []
        for at, secret in items:
            if not secret:
                continue
            if not secret.startswith("whsec_"):
                out.append(Problem(at, "signing_secret must start with 'whsec_'"))
                continue
            try:
                base64.b64decode(secret[6:], validate=True)
            except (binascii.Error, ValueError):
                out.append(Problem(at, "signing_secret is not base64 after 'whsec_'"))
        return out


class WebhookChannelConfig(ChannelConfig, frozen=True, kw_only=True):
    """``kind: webhook`` — an HTTP endpoint (CONTRACT §4)."""

    listen: str = "127.0.0.1:8080"
    path: str = "/hook"
    namespace_prefix: str | None = None
    max_body_bytes: PosInt = 1048576
    reply_timeout_s: PosFloat = 120.0
    auth: WebhookAuthConfig | None = None
    # Where callback_url may point: CIDRs, addresses, host names, "*.example.com"; empty =
    # every address the fixed rules (link-local, unspecified, multicast...) do not refuse.
    callback_allow: list[str] = msgspec.field(default_factory=list)

    def with_defaults(self, stem: str) -> Self:
        cfg = super().with_defaults(stem)
        if cfg.namespace_prefix is None:
            cfg = msgspec.structs.replace(cfg, namespace_prefix=f"webhook:{cfg.name}")
        return cfg

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        out = super().problems(daemon) + _listen_problem(("listen",), self.listen)
        if not self.path.startswith("/"):
            out.append(Problem(("path",), "path must start with '/'"))
        if self.namespace_prefix not in (None, f"webhook:{self.name}"):  # else: name's check
            out += _namespace_problem(("namespace_prefix",), self.namespace_prefix)
        if self.auth is not None:
            out += [Problem(("auth", *p.path), p.message) for p in self.auth.problems()]
        out += [Problem(("callback_allow", i), f"callback_allow entry {entry!r} is not a "
                        "network (10.0.0.0/8), an address or a host name (*.example.com)")
                for i, entry in enumerate(self.callback_allow) if not _allow_entry_ok(entry)]
        if not (self.auth and self.auth.enabled):
            try:
                host, _ = parse_listen(self.listen)
            except ValueError:
                return out
            if not is_loopback(host):
                out.append(Problem(("listen",), "a webhook without auth (bearer_token or "
                                                "signing_secret) must listen on a loopback "
                                                "address"))
        return out


class DiscordChannelConfig(ChannelConfig, frozen=True, kw_only=True):
    """``kind: discord`` — a Discord bot over the gateway."""

    token: str
    api_base: str = "https://discord.com/api/v10"
    filter: Literal["mentions", "all", "dm"] = "mentions"
    allowed_users: list[str] = msgspec.field(default_factory=list)
    namespace_prefix: str = "discord"
    session_scope: Literal["user", "channel"] = "user"
    agents: list[str] = msgspec.field(default_factory=list)

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        out = super().problems(daemon)
        if not self.token:
            out.append(Problem(("token",), "token is empty"))
        out += _http_url_problem(("api_base",), self.api_base)
        out += _namespace_problem(("namespace_prefix",), self.namespace_prefix)
        out += [Problem(("agents", i), f"unknown agent {a!r} ({_known(daemon.agents)})")
                for i, a in enumerate(self.agents) if not daemon.has_agent(a)]
        return out
