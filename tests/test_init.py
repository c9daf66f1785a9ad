"""``orrad init`` through the real console script: the files it writes are accepted by
``orrad check`` (and by the loader, key for key), keys are only ``${VAR}`` references,
nothing is overwritten without ``--force``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orrad.config import (
    BUILTIN_CHANNEL_KINDS,
    StdinChannelConfig,
    WebhookChannelConfig,
    load_channels,
    load_daemon_config,
)
from orrad.config.schema import normalized_base_url

OPENAI_SECRET = "sk-live-0123456789-do-not-write-me"
ANTHROPIC_SECRET = "sk-ant-api03-also-never-written"


def _orrad_command() -> list[str]:
    script = Path(sys.executable).parent / "orrad"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orrad"]


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORRAD_", "NOTIFY_", "OPENAI_", "ANTHROPIC_"))}
    env.update(extra)
    return env


def orrad(*args: str, cwd: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_orrad_command(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env=env if env is not None else _environ(), check=False)


def _written(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


KEYS = {"OPENAI_API_KEY": OPENAI_SECRET, "ANTHROPIC_API_KEY": ANTHROPIC_SECRET}


@pytest.mark.parametrize("provider", [None, "openai", "anthropic", "ollama"])
def test_written_files_pass_check_and_load_as_intended(tmp_path: Path, provider: str | None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["init"] if provider is None else ["init", "--provider", provider]
    env = _environ(**KEYS)
    result = orrad(*args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert set(_written(tmp_path)) == {
        "orrad.yaml", "channels.d/stdin.yaml", "channels.d/hooks.yaml"}
    assert "next:" in result.stdout
    assert "orrad run" in result.stdout.split("next:")[1]

    check = orrad("check", cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stderr
    assert "configuration ok: 2 channel file(s) (hooks, stdin)" in check.stderr

    config = load_daemon_config(str(tmp_path / "orrad.yaml"), environ=env)
    agent = config.agents["default"]
    assert config.default_agent == "default"
    if provider is None:
        assert agent.provider == "echo"
    else:
        spec = config.providers[provider]
        assert agent.provider == provider
        expected = {
            "openai": ("openai", "https://api.openai.com/v1", OPENAI_SECRET, "gpt-4o-mini"),
            "anthropic": ("anthropic", "https://api.anthropic.com", ANTHROPIC_SECRET,
                          "claude-3-5-haiku-latest"),
            "ollama": ("openai", "http://127.0.0.1:11434/v1", "", "llama3.2"),
        }[provider]
        assert (spec.kind, normalized_base_url(spec), spec.api_key, spec.model) == expected
    channels = load_channels(config, BUILTIN_CHANNEL_KINDS, environ=env)
    assert not channels.errors
    by_name = {c.name: c for c in channels.ok.values()}
    assert isinstance(by_name["stdin"], StdinChannelConfig) and by_name["stdin"].enabled
    hooks = by_name["hooks"]
    assert isinstance(hooks, WebhookChannelConfig)
    assert not hooks.enabled
    assert (hooks.listen, hooks.path) == ("127.0.0.1:8080", "/hook")


@pytest.mark.parametrize(("provider", "variable", "secret"), [
    ("openai", "OPENAI_API_KEY", OPENAI_SECRET),
    ("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_SECRET),
])
def test_the_key_is_a_reference_never_the_value(tmp_path: Path, provider: str, variable: str,
                                                secret: str) -> None:
    result = orrad("init", "--provider", provider, cwd=tmp_path, env=_environ(**KEYS))
    assert result.returncode == 0, result.stderr
    files = _written(tmp_path)
    assert f"api_key: ${{{variable}}}" in files["orrad.yaml"]
    for name, text in files.items():
        for value in KEYS.values():
            assert value not in text, name
    assert secret not in result.stdout + result.stderr
    assert f"{variable} is set in this shell" in result.stdout


def test_an_unset_key_is_said_and_check_names_it(tmp_path: Path) -> None:
    result = orrad("init", "--provider", "openai", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OPENAI_API_KEY is not set in this shell" in result.stdout
    assert "export OPENAI_API_KEY=" in result.stdout.split("next:")[1]
    check = orrad("check", cwd=tmp_path)
    assert check.returncode == 78
    assert "orrad.yaml:" in check.stderr
    assert "OPENAI_API_KEY is not set" in check.stderr


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    (tmp_path / "orrad.yaml").write_text("instance: mine\n")
    refused = orrad("init", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "orrad.yaml" in refused.stderr and "--force" in refused.stderr
    assert (tmp_path / "orrad.yaml").read_text() == "instance: mine\n"
    assert not (tmp_path / "channels.d").exists()  # nothing written when one file is refused

    forced = orrad("init", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "replaced orrad.yaml" in forced.stdout
    assert "provider: echo" in (tmp_path / "orrad.yaml").read_text()

    # The same files again: nothing to overwrite, so no --force needed.
    again = orrad("init", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged ") == 3

    # A changed channel file is refused too, naming it.
    (tmp_path / "channels.d" / "hooks.yaml").write_text("kind: webhook\nenabled: true\n")
    refused = orrad("init", "--provider", "ollama", cwd=tmp_path)
    assert refused.returncode == 1
    assert "channels.d/hooks.yaml" in refused.stderr
    assert "orrad.yaml" in refused.stderr  # it would change too
    assert refused.stderr.count("\n") == 1, refused.stderr


def test_a_folder_argument_is_created_and_named_in_the_next_command(tmp_path: Path) -> None:
    result = orrad("init", "my bot", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my bot" / "orrad.yaml").is_file()
    assert "cd 'my bot'" in result.stdout
    assert orrad("check", cwd=tmp_path / "my bot").returncode == 0


def test_a_model_is_written_so_it_reads_back_unchanged(tmp_path: Path) -> None:
    model = "odd: name # with ${NOT_A_VAR} and \"quotes\""
    result = orrad("init", "--provider", "ollama", "--model", model, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = load_daemon_config(str(tmp_path / "orrad.yaml"), environ={})
    assert config.providers["ollama"].model == model
    for plain in ("yes", "3.5", "qwen2.5:7b-instruct"):
        result = orrad("init", "--provider", "ollama", "--model", plain, "--force",
                       cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        config = load_daemon_config(str(tmp_path / "orrad.yaml"), environ={})
        assert config.providers["ollama"].model == plain


def test_model_without_provider_is_a_usage_error(tmp_path: Path) -> None:
    result = orrad("init", "--model", "gpt-4o", cwd=tmp_path)
    assert result.returncode == 2
    assert "--model needs --provider" in result.stderr
    assert not (tmp_path / "orrad.yaml").exists()
