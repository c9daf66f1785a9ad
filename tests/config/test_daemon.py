"""The daemon file: lookup, defaults, expansion, typing and semantic errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from orrad.config import loader
from orrad.config.loader import find_config_file, load_daemon_config
from orrad.config.schema import (
    AgentConfig,
    ApiConfig,
    DaemonConfig,
    ProviderConfig,
    RoutingConfig,
    normalized_base_url,
)
from orrad.errors import ConfigError, ConfigErrors


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(path: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_daemon_config(path, **kwargs)  # type: ignore[arg-type]
    assert all(isinstance(e, ConfigError) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


# -- lookup ----------------------------------------------------------------------------------


@pytest.fixture
def lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    etc = tmp_path / "etc.yaml"
    monkeypatch.setattr(loader, "DEFAULT_CONFIG_PATHS", ("orrad.yaml", str(etc)))
    return tmp_path


def test_lookup_order(lookup: Path) -> None:
    assert find_config_file(None, environ={}) is None
    etc = write(lookup, "etc.yaml", "")
    assert find_config_file(None, environ={}) == etc
    write(lookup, "orrad.yaml", "")
    assert find_config_file(None, environ={}) == "orrad.yaml"
    env_file = write(lookup, "env.yaml", "")
    assert find_config_file(None, environ={"ORRAD_CONFIG": env_file}) == env_file
    cli = write(lookup, "cli.yaml", "")
    assert find_config_file(cli, environ={"ORRAD_CONFIG": env_file}) == cli
    assert find_config_file(None, environ={"ORRAD_CONFIG": ""}) == "orrad.yaml"


@pytest.mark.parametrize(
    ("cli", "env"), [("missing.yaml", {}), (None, {"ORRAD_CONFIG": "missing.yaml"})]
)
def test_explicit_missing_file_is_an_error(
    lookup: Path, cli: str | None, env: dict[str, str]
) -> None:
    write(lookup, "orrad.yaml", "")  # never falls back
    with pytest.raises(ConfigError) as info:
        find_config_file(cli, environ=env)
    assert info.value.path == "missing.yaml"
    assert str(info.value).startswith("missing.yaml: configuration file not found")


def test_find_config_file_uses_os_environ(lookup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(lookup, "x.yaml", "")
    monkeypatch.setenv("ORRAD_CONFIG", path)
    assert find_config_file(None) == path


# -- defaults --------------------------------------------------------------------------------


def check_defaults(cfg: DaemonConfig, base: Path) -> None:
    assert cfg.instance and isinstance(cfg.instance, str)
    assert cfg.state_dir == str(base / ".orrad")
    assert cfg.channels_dir == str(base / "channels.d")
    assert cfg.api == ApiConfig(listen="127.0.0.1:8470", token="")
    assert cfg.providers == {"echo": ProviderConfig(kind="echo")}
    assert cfg.agents == {"default": AgentConfig(provider="echo")}
    assert cfg.default_agent == "default"
    assert cfg.policies == []
    assert cfg.routing == RoutingConfig(max_concurrency=64, rerun_interrupted=True)
    assert cfg.federation is None
    assert cfg.base_dir == str(base)


def test_builtin_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_daemon_config(None, environ={})
    check_defaults(cfg, tmp_path)
    assert cfg.path is None


@pytest.mark.parametrize("text", ["", "# nothing\n", "---\n", "api:\nagents:\npolicies:\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "conf", "orrad.yaml", text)
    cfg = load_daemon_config(path, environ={})
    check_defaults(cfg, tmp_path / "conf")
    assert cfg.path == path


def test_agent_defaults() -> None:
    a = AgentConfig()
    assert (a.provider, a.system_prompt, a.model, a.max_turns, a.max_output_tokens) == (
        "echo", None, None, 10, 1024)
    assert (a.temperature, a.context_tokens, a.tokenizer, a.tools, a.description) == (
        None, 8192, "cl100k_base", [], "")
    p = ProviderConfig(kind="openai")
    assert (p.base_url, p.api_key, p.model, p.timeout_s, p.max_retries) == (
        None, "", None, 120, 4)


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", "")
    env = {"STATE_DIRECTORY": "/var/lib/orrad:/var/lib/other"}
    assert load_daemon_config(path, environ=env).state_dir == "/var/lib/orrad"
    path = write(tmp_path, "orrad.yaml", "state_dir: mine\n")  # the file wins
    assert load_daemon_config(path, environ=env).state_dir == str(tmp_path / "mine")


def test_full_example(tmp_path: Path) -> None:
    write(tmp_path, "secrets/fed", "fedsecret\n")
    path = write(tmp_path, "etc/orrad.yaml", """\
        instance: alpha
        state_dir: /var/lib/orrad
        channels_dir: ../chan
        api:
          listen: 127.0.0.1:8470
          token: ${ORRAD_API_TOKEN:-}
        providers:
          local:
            kind: openai
            base_url: http://127.0.0.1:11434/v1
            api_key: ${OPENAI_API_KEY:-}
            model: llama3
            timeout_s: ${T:-30}
            max_retries: 4
        agents:
          assistant:
            provider: local
            system_prompt: You are a helpful assistant.
            model: null
            temperature: 0.5
            tools: [current_time]
            description: General helper
          second: {}
        default_agent: second
        policies:
          - namespace: tenant:acme
            allow_tools: [current_time]
          - namespace: tenant
            deny_tools: []
        routing:
          max_concurrency: 8
          rerun_interrupted: false
        federation:
          listen: 0.0.0.0:8471
          secret: ${file:${SECRETS}/fed}
          peers:
            - name: beta
              url: http://beta.internal:8471
              secret: ${ORRAD_FED_SECRET_BETA:-}
              namespaces: [team:ops, acme]
              on_unavailable: queue
        """)
    env = {"OPENAI_API_KEY": "0123", "SECRETS": "../secrets"}
    cfg = load_daemon_config(path, known_tools={"current_time"}, environ=env)
    assert cfg.instance == "alpha"
    assert cfg.state_dir == "/var/lib/orrad"
    assert cfg.channels_dir == str(tmp_path / "chan")
    assert cfg.api.token == ""
    local = cfg.providers["local"]
    assert local.api_key == "0123"  # all digits, still a string
    assert local.timeout_s == 30.0
    assert isinstance(local.timeout_s, float)
    assert set(cfg.providers) == {"echo", "local"}
    assert cfg.agents["assistant"].tools == ["current_time"]
    assert cfg.agents["assistant"].temperature == 0.5
    assert cfg.agents["second"] == AgentConfig()
    assert cfg.default_agent == "second"
    assert cfg.policies[0].allow_tools == ["current_time"]
    assert cfg.policies[1].deny_tools == []
    assert cfg.routing == RoutingConfig(max_concurrency=8, rerun_interrupted=False)
    assert cfg.federation is not None
    assert cfg.federation.secret == "fedsecret"
    assert cfg.federation.peers[0].namespaces == ["team:ops", "acme"]
    assert cfg.federation.peers[0].on_unavailable == "queue"
    assert cfg.federation.peers[0].queue_ttl_s == 3600
    assert cfg.path == path
    assert cfg.base_dir == str(tmp_path / "etc")


def test_expansion_types(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        instance: "${N}"
        routing:
          max_concurrency: ${N}
          rerun_interrupted: ${NO:-false}
        agents:
          a:
            description: ${N}
            system_prompt: ${EMPTY:-}
          b:
            description: $${N} costs $$5
        api:
          token: ${EMPTY}
        """)
    cfg = load_daemon_config(path, environ={"N": "12", "EMPTY": ""})
    assert cfg.agents["b"].description == "${N} costs $$5"
    assert cfg.instance == "12"
    assert cfg.routing == RoutingConfig(max_concurrency=12, rerun_interrupted=False)
    assert cfg.agents["a"].description == "12"
    assert cfg.agents["a"].system_prompt is None  # empty plain scalar -> null
    assert cfg.api.token == ""


@pytest.mark.parametrize(
    ("kind", "base_url", "expected"),
    [
        ("openai", None, "https://api.openai.com/v1"),
        ("openai", "http://127.0.0.1:11434", "http://127.0.0.1:11434/v1"),
        ("openai", "http://127.0.0.1:11434/", "http://127.0.0.1:11434/v1"),
        ("openai", "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
        ("openai", "http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434/v1"),
        ("openai", "https://proxy/openai/v2", "https://proxy/openai/v2"),
        ("anthropic", None, "https://api.anthropic.com"),
        ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com"),
        ("anthropic", "http://fake:9/v1/", "http://fake:9"),
        ("anthropic", "http://fake:9/", "http://fake:9"),
        ("anthropic", "http://fake:9/prefix", "http://fake:9/prefix"),
        ("echo", None, ""),
    ],
)
def test_normalized_base_url(
    tmp_path: Path, kind: str, base_url: str | None, expected: str
) -> None:
    cfg = ProviderConfig(kind=kind, base_url=base_url)  # type: ignore[arg-type]
    assert normalized_base_url(cfg) == expected
    url = "" if base_url is None else f"base_url: {base_url}"
    path = write(tmp_path, "orrad.yaml", f"providers:\n  p:\n    kind: {kind}\n    {url}\n")
    loaded = load_daemon_config(path, environ={}).providers["p"]
    assert loaded.base_url == (expected or None)


# -- errors ----------------------------------------------------------------------------------


def test_exact_positions(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        api:
          listn: 127.0.0.1:1
        agents:
          x:
            tools: [current_time, 3]
        routing:
          max_concurrency: ${MISSING}
        """)
    assert errors_of(path, environ={}) == [
        f"{path}:2:3: unknown key 'listn'; did you mean 'listen'? (allowed: listen, token)",
        f"{path}:5:27: invalid value for 'tools[1]': expected string, got int",
        f"{path}:7:20: environment variable MISSING is not set",
    ]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", "api:\n  listen: [1\nrouting: {}\n")
    [error] = errors_of(path)
    assert error.startswith(f"{path}:3:8: invalid YAML:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n", "1:1: the daemon file must be a mapping of keys, got a list"),
        ("just text\n", "1:1: the daemon file must be a mapping of keys, got a string"),
        ("bogus: 1\n", "1:1: unknown key 'bogus'"),
        ("path: /x\n", "1:1: unknown key 'path'"),  # internal fields are not keys
        ("api: [1]\n", "1:6: api: expected a mapping, got list"),
        ("agents: [a]\n", "1:9: agents: expected a mapping, got list"),
        ("agents: {}\n", "1:9: at least one agent is required"),
        ("agents:\n  a: 3\n", "2:6: a: expected a mapping, got int"),
        ("routing:\n  max_concurrency: 0\n", "2:20: invalid value for 'max_concurrency': "
                                             "expected int >= 1"),
        ("routing:\n  max_concurrency: '5'\n", "2:20: invalid value for 'max_concurrency': "
                                               "expected int, got string"),
        ("routing:\n  max_concurrency:\n", "2:19: invalid value for 'max_concurrency': "
                                           "expected int, got null"),
        ("providers:\n  p: {}\n", "2:6: missing required key 'kind'"),
        ("providers:\n  p: {kind: gpt}\n", "2:13: invalid value for 'kind': expected one of "
                                           "openai, anthropic, echo"),
        ("providers:\n  p: {kind: openai, base_url: ftp://x}\n",
         "2:31: expected an http:// or https:// URL"),
        ("providers:\n  p: {kind: echo, timeout_s: -1}\n",
         "2:30: invalid value for 'timeout_s': expected float > 0"),
        ("agents:\n  a:\n    provider: nope\n",
         "3:15: unknown provider 'nope' (known: echo)"),
        ("agents:\n  a@b: {}\n", "2:3: invalid agent name 'a@b'"),
        ("default_agent: ghost\n", "1:16: unknown agent 'ghost' (known: default)"),
        ("api:\n  listen: nowhere\n", "2:11: invalid listen address"),
        ("instance: 'a b'\n", "1:11: invalid instance name"),
        ("policies:\n  - namespace: a\n", "2:5: a policy needs exactly one of allow_tools "
                                          "or deny_tools"),
        ("policies:\n  - {namespace: a, allow_tools: [], deny_tools: []}\n",
         "2:5: a policy needs exactly one"),
        ("policies:\n  - {namespace: 'a::b', deny_tools: []}\n", "2:17: invalid namespace"),
        ("policies:\n  - {namespace: a, deny_tools: []}\n  - {namespace: a, deny_tools: []}\n",
         "3:17: duplicate policy for namespace 'a'"),
        ("policies:\n  - {allow_tools: []}\n", "2:5: missing required key 'namespace'"),
        ("federation:\n  peers:\n    - {name: b, url: 'http://b', secret: s, namespaces: [a]}\n"
         "    - {name: c, url: 'http://c', secret: s, namespaces: [x, a]}\n",
         "4:61: namespace prefix 'a' of peer 'c' is already declared by peer 'b' at line 3"),
        ("federation:\n  peers:\n    - {name: b, url: 'http://b'}\n",
         "3:7: peer 'b' has no secret and federation.secret is empty"),
        ("federation:\n  secret: s\n  peers:\n    - {name: b, url: 'http://b'}\n"
         "    - {name: b, url: 'http://c'}\n", "5:14: duplicate peer name 'b'"),
        ("instance: me\nfederation:\n  secret: s\n  peers:\n    - {name: me, url: 'http://b'}\n",
         "5:14: a peer cannot be this daemon's instance"),
        ("federation:\n  secret: s\n  peers:\n    - {name: b, url: 'b:1'}\n",
         "4:22: expected an http:// or https:// URL"),
        ("federation:\n  secret: s\n  peers:\n    - {name: b, url: 'http://b', "
         "namespaces: ['x y']}\n", "4:47: invalid namespace segment"),
        ("federation:\n  secret: s\n  max_hops: 0\n", "3:13: invalid value for 'max_hops'"),
        ("federation:\n  peers:\n    - {name: b, url: 'http://b', on_unavailable: retry}\n",
         "3:50: invalid value for 'on_unavailable': expected one of fail, queue, local"),
    ],
)
def test_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "orrad.yaml", text)
    errors = errors_of(path, environ={})
    assert errors[0].startswith(f"{path}:{expected}"), errors


def test_all_problems_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        bogus: 1
        api: {listen: 1}
        agents:
          a: {max_turns: x}
          b: {tools: 3}
        federation: {peers: [{name: p}]}
        """)
    errors = errors_of(path, environ={})
    assert [e.split(": ", 1)[0].removeprefix(path) for e in errors] == [
        ":1:1", ":2:15", ":4:18", ":5:14", ":6:22"]
    assert "missing required key 'url'" in errors[-1]


def test_semantic_problems_are_all_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        agents:
          a: {provider: x, tools: [t1, ok, t2]}
        default_agent: z
        """)
    errors = errors_of(path, known_tools=["ok"], environ={})
    assert [e.removeprefix(path) for e in errors] == [
        ":2:17: unknown provider 'x' (known: echo)",
        ":2:28: unknown tool 't1' (known: ok)",
        ":2:36: unknown tool 't2' (known: ok)",
        ":3:16: unknown agent 'z' (known: a)",
    ]


def test_unknown_tools_only_checked_with_a_registry(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        agents:
          a: {tools: [anything]}
        policies:
          - {namespace: x, deny_tools: [whatever]}
        """)
    assert load_daemon_config(path, environ={}).agents["a"].tools == ["anything"]
    errors = errors_of(path, known_tools=[], environ={})
    assert [e.removeprefix(path)[:6] for e in errors] == [":2:15:", ":4:33:"]


def test_unreadable_file_reference(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", "api:\n  token: ${file:nope}\n")
    assert errors_of(path, environ={}) == [
        f"{path}:2:10: cannot read ${{file:nope}}: No such file or directory"]


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    path = write(tmp_path, "orrad.yaml", f"""\
        api: {{token: [{secret}]}}
        providers:
          p: {{kind: openai, api_key: {{k: {secret}}}}}
        federation: {{secret: 12, peers: [{{name: b, url: http://b, secret: [{secret}]}}]}}
        """)
    errors = errors_of(path, environ={})
    assert len(errors) == 4
    assert not any(secret in e for e in errors)


def test_unreadable_daemon_file(tmp_path: Path) -> None:
    assert errors_of(str(tmp_path / "nope.yaml")) == [
        f"{tmp_path / 'nope.yaml'}: cannot read file: No such file or directory"]


def test_relative_paths_follow_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "conf/orrad.yaml", "state_dir: state\nchannels_dir: ../ch\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_daemon_config("conf/orrad.yaml", environ={})
    assert cfg.state_dir == str(tmp_path / "conf" / "state")
    assert cfg.channels_dir == str(tmp_path / "ch")
    assert cfg.path == str(tmp_path / "conf" / "orrad.yaml")
    assert os.path.isabs(cfg.base_dir)


def test_federation_peer_may_be_remote_agent_target(tmp_path: Path) -> None:
    path = write(tmp_path, "orrad.yaml", """\
        federation:
          secret: s
          peers: [{name: beta, url: 'http://beta:8471'}]
        """)
    cfg = load_daemon_config(path, environ={})
    assert cfg.has_agent("default")
    assert cfg.has_agent("helper@beta")
    assert not cfg.has_agent("helper@gamma")
    assert not cfg.has_agent("@beta")


def test_expanded_value_reports_the_typed_problem(tmp_path: Path) -> None:
    path = tmp_path / "orrad.yaml"
    path.write_text("routing:\n  max_concurrency: ${MC:-0}\n")
    with pytest.raises(ConfigErrors) as info:
        load_daemon_config(str(path), environ={})
    assert str(info.value) == f"{path}:2:20: invalid value for 'max_concurrency': expected int >= 1"
