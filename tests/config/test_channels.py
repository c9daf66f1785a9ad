"""Channel files: discovery, kinds, defaults, webhook/discord rules, load_channels."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest

from orrad.config.loader import (
    BUILTIN_CHANNEL_KINDS,
    list_channel_files,
    load_channel_file,
    load_channels,
    load_daemon_config,
)
from orrad.config.schema import (
    ChannelConfig,
    DaemonConfig,
    DiscordChannelConfig,
    Problem,
    RestartConfig,
    RestartPolicy,
    StdinChannelConfig,
    WebhookAuthConfig,
    WebhookChannelConfig,
    is_loopback,
    parse_listen,
)
from orrad.errors import ConfigErrors

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def daemon(tmp_path: Path) -> DaemonConfig:
    path = write(tmp_path, "orrad.yaml", """\
        agents:
          assistant: {}
          helper: {}
        federation:
          secret: s
          peers: [{name: beta, url: 'http://beta:8471'}]
        """)
    return load_daemon_config(path, environ={})


def load(daemon: DaemonConfig, text: str, name: str = "chan.yaml",
         env: dict[str, str] | None = None) -> ChannelConfig:
    path = write(Path(daemon.channels_dir), name, text)
    return load_channel_file(path, daemon, BUILTIN_CHANNEL_KINDS, environ=env or {})


def errors(daemon: DaemonConfig, text: str, name: str = "chan.yaml",
           env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(daemon, text, name, env)
    prefix = str(Path(daemon.channels_dir) / name)
    assert all(str(e).startswith(prefix + ":") for e in info.value.errors)
    return [str(e).removeprefix(prefix) for e in info.value.errors]


# -- discovery -------------------------------------------------------------------------------


def test_list_channel_files(tmp_path: Path) -> None:
    for name in ["b.yaml", "a.yml", "c.yaml.example", "d.yaml.disabled", ".hidden.yaml",
                 "notes.txt", "z.YAML.bak"]:
        (tmp_path / name).write_text("kind: stdin\n")
    (tmp_path / "dir.yaml").mkdir()
    assert list_channel_files(str(tmp_path)) == [str(tmp_path / "a.yml"),
                                                 str(tmp_path / "b.yaml")]
    assert list_channel_files(str(tmp_path / "missing")) == []
    assert list_channel_files(str(tmp_path / "b.yaml")) == []


# -- defaults --------------------------------------------------------------------------------


def test_stdin_defaults(daemon: DaemonConfig) -> None:
    cfg = load(daemon, "kind: stdin\n", name="console.yaml")
    assert cfg == StdinChannelConfig(kind="stdin", name="console")
    assert isinstance(cfg, StdinChannelConfig)
    assert (cfg.namespace, cfg.prompt, cfg.enabled, cfg.agent, cfg.restart) == (
        "cli:local", "> ", True, None, None)
    assert cfg.effective_restart() == RestartConfig(policy="transient")


def test_webhook_defaults(daemon: DaemonConfig) -> None:
    cfg = load(daemon, "kind: webhook\n", name="hooks.yml")
    assert isinstance(cfg, WebhookChannelConfig)
    assert cfg.name == "hooks"
    assert (cfg.listen, cfg.path, cfg.namespace_prefix) == ("127.0.0.1:8080", "/hook",
                                                            "webhook:hooks")
    assert (cfg.max_body_bytes, cfg.reply_timeout_s, cfg.auth) == (1048576, 120, None)
    assert cfg.effective_restart() == RestartConfig()
    r = cfg.effective_restart()
    assert (r.policy, r.max_restarts, r.window_s, r.backoff_initial_s, r.backoff_max_s) == (
        "permanent", 5, 60, 1, 60)


def test_discord_defaults(daemon: DaemonConfig) -> None:
    write(Path(daemon.base_dir), "tok", "abc.def\n")
    cfg = load(daemon, "kind: discord\ntoken: ${file:tok}\n", name="bot.yaml")
    assert isinstance(cfg, DiscordChannelConfig)
    assert cfg.token == "abc.def"  # ${file:} relative to the daemon's folder
    assert (cfg.api_base, cfg.filter, cfg.allowed_users, cfg.namespace_prefix) == (
        "https://discord.com/api/v10", "mentions", [], "discord")
    assert (cfg.session_scope, cfg.agents) == ("user", [])
    assert cfg.effective_restart().policy == "permanent"


def test_full_channel(daemon: DaemonConfig) -> None:
    cfg = load(daemon, """\
        kind: webhook
        name: inbound
        enabled: false
        agent: helper
        listen: 0.0.0.0:${PORT}
        path: /in
        namespace_prefix: hooks:in
        max_body_bytes: 2048
        reply_timeout_s: ${RT:-5}
        auth:
          bearer_token: ${TOKEN}
          signing_secret: [SECRET, SECRET]
        restart:
          policy: temporary
          max_restarts: 2
          window_s: 10
          backoff_initial_s: 0.5
          backoff_max_s: 4
        """.replace("SECRET", SECRET), env={"PORT": "9000", "TOKEN": "12345"})
    assert isinstance(cfg, WebhookChannelConfig)
    assert (cfg.name, cfg.enabled, cfg.agent) == ("inbound", False, "helper")
    assert (cfg.listen, cfg.path, cfg.namespace_prefix) == ("0.0.0.0:9000", "/in", "hooks:in")
    assert (cfg.max_body_bytes, cfg.reply_timeout_s) == (2048, 5.0)
    assert cfg.auth == WebhookAuthConfig(bearer_token="12345", signing_secret=[SECRET, SECRET])
    assert cfg.effective_restart() == RestartConfig(
        policy="temporary", max_restarts=2, window_s=10, backoff_initial_s=0.5, backoff_max_s=4)


@pytest.mark.parametrize(
    ("head", "restart", "policy"),
    [
        ("kind: stdin", "{max_restarts: 1}", "transient"),
        ("kind: webhook", "{max_restarts: 1}", "permanent"),
        ("kind: discord\ntoken: t", "{max_restarts: 1}", "permanent"),
        ("kind: stdin", "{max_restarts: 1, policy: permanent}", "permanent"),
    ],
)
def test_partial_restart_keeps_kind_default_policy(
    daemon: DaemonConfig, head: str, restart: str, policy: RestartPolicy
) -> None:
    cfg = load(daemon, f"{head}\nrestart: {restart}\n")
    assert cfg.effective_restart().policy == policy
    assert cfg.effective_restart().max_restarts == 1


def test_agent_may_name_remote_agent(daemon: DaemonConfig) -> None:
    cfg = load(daemon, "kind: discord\ntoken: t\nagent: x@beta\nagents: [helper, y@beta]\n")
    assert cfg.agent == "x@beta"


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ":1:1: channel file is empty"),
        ("# just a comment\n", ":1:1: channel file is empty"),
        ("[stdin]\n", ":1:1: a channel file must be a mapping of keys, got a list"),
        ("name: x\n", ":1:1: missing required key 'kind' (known kinds: discord, stdin, webhook)"),
        ("kind: irc\n", ":1:7: unknown channel kind 'irc' (known kinds: discord, stdin, webhook)"),
        ("kind: [stdin]\n", ":1:7: kind must be a string"),
        ("kind: stdin\nprot: 1\n", ":2:1: unknown key 'prot'; did you mean 'prompt'?"),
        ("kind: stdin\nrestart:\n  polcy: x\n", ":3:3: unknown key 'polcy'; did you mean "
                                                "'policy'? (allowed: backoff_initial_s, "
                                                "backoff_max_s, max_restarts, policy, window_s)"),
        ("kind: stdin\nrestart:\n  max_restarts: many\n",
         ":3:17: invalid value for 'max_restarts': expected int, got string"),
        ("kind: stdin\nrestart:\n  policy: always\n",
         ":3:11: invalid value for 'policy': expected one of permanent, transient, temporary"),
        ("kind: stdin\nrestart:\n  backoff_initial_s: 9\n  backoff_max_s: 2\n",
         ":4:18: backoff_max_s is below backoff_initial_s"),
        ("kind: stdin\nenabled: maybe\n", ":2:10: invalid value for 'enabled': expected bool"),
        ("kind: stdin\nagent: ghost\n", ":2:8: unknown agent 'ghost' (known: assistant, helper)"),
        ("kind: stdin\nagent: x@gamma\n", ":2:8: unknown agent 'x@gamma'"),
        ("kind: stdin\nnamespace: 'a:'\n", ":2:12: invalid namespace segment ''"),
        ("kind: stdin\nname: 'a b'\n", ":2:7: invalid channel name"),
        ("kind: stdin\nkind: stdin\n", ":2:1: duplicate key 'kind'"),
        ("kind: stdin\nnamespace: ${NS}\n", ":2:12: environment variable NS is not set"),
        ("kind: ${KIND}\n", ":1:7: environment variable KIND is not set"),
        ("kind: stdin\n  prompt: x\n", ":2:9: invalid YAML"),
        ("kind: discord\n", ":1:1: missing required key 'token'"),
        ("kind: discord\ntoken: ''\n", ":2:8: token is empty"),
        ("kind: discord\ntoken: t\nagents: [helper, ghost]\n", ":3:18: unknown agent 'ghost'"),
        ("kind: discord\ntoken: t\nfilter: some\n",
         ":3:9: invalid value for 'filter': expected one of mentions, all, dm"),
        ("kind: discord\ntoken: t\nsession_scope: guild\n", ":3:16: invalid value"),
        ("kind: discord\ntoken: t\nnamespace_prefix: 'a b'\n", ":3:19: invalid namespace"),
        ("kind: discord\ntoken: t\napi_base: discord.com\n", ":3:11: expected an http"),
        ("kind: webhook\nlisten: 0.0.0.0:8080\n",
         ":2:9: a webhook without auth (bearer_token or signing_secret) must listen on a "
         "loopback address"),
        ("kind: webhook\nlisten: ':8080'\nauth: {bearer_token: ''}\n",
         ":2:9: a webhook without auth"),
        ("kind: webhook\nlisten: '127.0.0.1:\uff18\uff10'\n",
         ":2:9: invalid listen address: the port must be a number"),
        ("kind: webhook\nlisten: 192.168.1.4:8080\nauth: {}\n", ":2:9: a webhook without auth"),
        ("kind: webhook\nlisten: example.com:80\n", ":2:9: a webhook without auth"),
        ("kind: webhook\nlisten: '8080'\n", ":2:9: invalid listen address"),
        ("kind: webhook\npath: hook\n", ":2:7: path must start with '/'"),
        ("kind: webhook\nauth: {signing_secret: nope}\n",
         ":2:24: signing_secret must start with 'whsec_'"),
        (f"kind: webhook\nauth:\n  signing_secret: [{SECRET}, 'whsec_!!']\n",
         f":3:{22 + len(SECRET)}: signing_secret is not base64 after 'whsec_'"),
        ("kind: webhook\nauth: {bearer_token: [x]}\n",
         ":2:22: invalid value for 'bearer_token': expected string | null, got list"),
        ("kind: webhook\nmax_body_bytes: 0\n", ":2:17: invalid value for 'max_body_bytes'"),
        ("kind: webhook\nname: 'a:b'\n", ":2:7: invalid channel name"),
    ],
)
def test_errors(daemon: DaemonConfig, text: str, expected: str) -> None:
    got = errors(daemon, text)
    assert got[0].startswith(expected), got


def test_invalid_name_from_file_name(daemon: DaemonConfig) -> None:
    assert errors(daemon, "kind: stdin\n", name="my chan.yaml")[0].startswith(
        ":1:1: invalid channel name")


def test_every_problem_of_a_channel_file(daemon: DaemonConfig) -> None:
    got = errors(daemon, """\
        kind: webhook
        lisen: 1
        auth: {bearer: x}
        restart: {max_restarts: -1}
        """)
    assert [e.split(": ")[0] for e in got] == [":2:1", ":3:8", ":4:25"]


@pytest.mark.parametrize("listen", ["127.0.0.1:80", "localhost:80", "[::1]:80", "127.9.9.9:1"])
def test_webhook_loopback_needs_no_auth(daemon: DaemonConfig, listen: str) -> None:
    cfg = load(daemon, f"kind: webhook\nlisten: '{listen}'\n")
    assert isinstance(cfg, WebhookChannelConfig)
    assert cfg.listen == listen


@pytest.mark.parametrize(
    "auth",
    ["{bearer_token: t}", f"{{signing_secret: {SECRET}}}", f"{{signing_secret: [{SECRET}]}}"],
)
def test_webhook_public_with_auth(daemon: DaemonConfig, auth: str) -> None:
    cfg = load(daemon, f"kind: webhook\nlisten: 0.0.0.0:80\nauth: {auth}\n")
    assert isinstance(cfg, WebhookChannelConfig) and cfg.auth is not None
    assert cfg.auth.enabled


def test_secrets_are_not_echoed(daemon: DaemonConfig) -> None:
    secret = "hunter2-very-secret"
    got = errors(daemon, f"kind: webhook\nauth: {{signing_secret: {secret}, "
                         f"bearer_token: [{secret}]}}\n")
    assert got and not any(secret in e for e in got)
    got = errors(daemon, f"kind: discord\ntoken: [{secret}]\n")
    assert got and not any(secret in e for e in got)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:1", ("::1", 1)), (":80", ("", 80)),
     ("localhost:0", ("localhost", 0))],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", "host:x", "::1:80", "h:70000", "",
                                   "h:\uff18\uff10", "h:+80", "h:000080", "[::1:80", "a b:80"])
def test_parse_listen_errors(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets|port|IPv6|white space"):
        parse_listen(value)


def test_one_listen_parser_for_check_and_every_listener() -> None:
    from orrad import listen
    from orrad.http import limits, server

    assert parse_listen is listen.parse_listen
    assert limits.parse_listen is listen.parse_listen
    assert vars(server)["parse_listen"] is listen.parse_listen


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
     ("0.0.0.0", False), ("", False), ("::", False), ("10.0.0.1", False), ("example", False)],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


# -- load_channels ---------------------------------------------------------------------------


def test_load_channels(daemon: DaemonConfig) -> None:
    d = Path(daemon.channels_dir)
    a = write(d, "a.yaml", "kind: stdin\nname: shared\n")
    b = write(d, "b.yaml", "kind: webhook\nenabled: false\n")
    c = write(d, "c.yaml", "kind: irc\n")
    e = write(d, "e.yaml", "kind: stdin\n\nname: shared\n")
    write(d, "f.yaml.example", "kind: irc\n")
    result = load_channels(daemon, BUILTIN_CHANNEL_KINDS, environ={})
    assert list(result.ok) == [a, b]
    assert result.ok[b].enabled is False  # disabled channels are still loaded
    assert set(result.errors) == {c, e}
    [dup] = result.errors[e].errors
    assert str(dup) == f"{e}:3:7: duplicate channel name 'shared': also used by {a}:2:7"
    assert [str(x) for x in result.all_errors()] == [
        str(result.errors[c].errors[0]), str(dup)]


def test_load_channels_missing_dir(daemon: DaemonConfig) -> None:
    result = load_channels(daemon, BUILTIN_CHANNEL_KINDS, environ={})
    assert (result.ok, result.errors) == ({}, {})


def test_duplicate_names_from_file_stems(daemon: DaemonConfig) -> None:
    d = Path(daemon.channels_dir)
    write(d, "x.yaml", "kind: stdin\n")
    yml = write(d, "x.yml", "kind: stdin\n")
    result = load_channels(daemon, BUILTIN_CHANNEL_KINDS, environ={})
    assert list(result.errors) == [yml]
    assert "duplicate channel name 'x'" in str(result.errors[yml])


# -- plugin kinds ----------------------------------------------------------------------------


class EchoChannelConfig(ChannelConfig, frozen=True, kw_only=True):
    default_restart_policy: ClassVar[RestartPolicy] = "temporary"

    greeting: str = "hi"
    count: int = 1

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        out = super().problems(daemon)
        if self.count > 3:
            out.append(Problem(("count",), "count is at most 3"))
        return out


def test_plugin_kind(daemon: DaemonConfig) -> None:
    kinds: dict[str, type[ChannelConfig]] = {**BUILTIN_CHANNEL_KINDS, "echo": EchoChannelConfig}
    path = write(Path(daemon.channels_dir), "e.yaml", "kind: echo\ngreeting: yo\n")
    cfg = load_channel_file(path, daemon, kinds, environ={})
    assert cfg == EchoChannelConfig(kind="echo", name="e", greeting="yo")
    assert cfg.effective_restart().policy == "temporary"
    path = write(Path(daemon.channels_dir), "e.yaml", "kind: echo\ncount: 9\n")
    with pytest.raises(ConfigErrors, match=r"e\.yaml:2:8: count is at most 3"):
        load_channel_file(path, daemon, kinds, environ={})
    with pytest.raises(ConfigErrors, match="unknown channel kind 'echo'"):
        load_channel_file(path, daemon, BUILTIN_CHANNEL_KINDS, environ={})


def test_configs_are_frozen(daemon: DaemonConfig) -> None:
    cfg = load(daemon, "kind: stdin\n")
    with pytest.raises(AttributeError):
        cfg.name = "other"  # type: ignore[misc]
    assert msgspec.structs.replace(cfg, name="other").name == "other"


def test_invalid_webhook_name_is_one_problem(daemon: DaemonConfig) -> None:
    assert errors(daemon, "kind: webhook\nname: 'a b'\n") == [
        ":2:7: invalid channel name: invalid namespace segment 'a b': use 1-128 characters "
        "of A-Z a-z 0-9 _ . @ + = -"]
