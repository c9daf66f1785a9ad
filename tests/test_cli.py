"""The command line end to end, as a user runs it (real processes, real files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The real console script the package installs, next to the interpreter running the tests.
SCRIPT = Path(sys.executable).parent / "orrad"


def orrad(*args: str, cwd: Path, stdin: str = "", env: dict[str, str] | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    environ.update(env or {})
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, input=stdin, capture_output=True,
        text=True, timeout=timeout, env=environ, check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder laid out like a fresh checkout: the shipped channels.d, no orrad.yaml."""
    shutil.copytree(REPO / "channels.d", tmp_path / "channels.d")
    return tmp_path


def test_hello_then_history_across_restarts(checkout: Path) -> None:
    first = orrad("run", cwd=checkout, stdin="hello\n")
    assert first.returncode == 0, first.stderr
    assert "echo: hello" in first.stdout
    second = orrad("run", cwd=checkout, stdin="again\n")
    assert second.returncode == 0, second.stderr
    history = orrad("history", "cli:local", cwd=checkout)
    assert history.returncode == 0, history.stderr
    assert history.stdout.splitlines() == [
        "user: hello", "assistant: echo: hello", "user: again", "assistant: echo: again"]
    sessions = orrad("sessions", "--json", cwd=checkout)
    assert '"message_count": 4' in sessions.stdout


def test_several_lines_answered_in_order_before_exit(checkout: Path) -> None:
    lines = [f"line {i}" for i in range(20)]
    result = orrad("run", cwd=checkout, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"echo: {line}" for line in lines]


def test_history_of_unknown_namespace_fails(checkout: Path) -> None:
    result = orrad("history", "no:such", cwd=checkout)
    assert result.returncode == 1
    assert "no session no:such" in result.stderr


def test_check_reports_unknown_key_with_position(checkout: Path) -> None:
    (checkout / "channels.d" / "bad.yaml").write_text("kind: stdin\nnamespce: x\n")
    result = orrad("check", cwd=checkout)
    assert result.returncode == 78
    bad = str(checkout / "channels.d" / "bad.yaml")
    assert f"{bad}:2:1:" in result.stderr
    assert "namespce" in result.stderr


def test_check_accepts_shipped_configuration() -> None:
    result = orrad("check", cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_run_refuses_invalid_daemon_file(checkout: Path) -> None:
    (checkout / "orrad.yaml").write_text("routing:\n  max_concurency: 3\n")
    result = orrad("run", cwd=checkout, stdin="hello\n")
    assert result.returncode == 78
    assert "orrad.yaml:2:3: unknown key 'max_concurency'" in result.stderr
    assert "echo:" not in result.stdout


def test_run_survives_invalid_channel_file(checkout: Path) -> None:
    (checkout / "channels.d" / "broken.yaml").write_text("kind: [unclosed\n")
    result = orrad("run", cwd=checkout, stdin="still works\n")
    # A broken drop-in never stops the others; it cannot receive, so end of input still ends
    # the daemon.
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: still works\n"
    assert "broken.yaml:2:1: invalid YAML" in result.stderr


def test_missing_env_var_is_config_error(checkout: Path) -> None:
    (checkout / "orrad.yaml").write_text("instance: ${ORRAD_TEST_UNSET_VAR}\n")
    result = orrad("check", cwd=checkout)
    assert result.returncode == 78
    assert "ORRAD_TEST_UNSET_VAR" in result.stderr


def test_version_and_usage() -> None:
    version = orrad("version", cwd=REPO)
    assert version.returncode == 0 and version.stdout.startswith("orrad ")
    assert orrad("frobnicate", cwd=REPO).returncode == 2
    assert orrad(cwd=REPO).returncode == 2


def test_journald_priority_prefixes_when_stderr_is_the_journal(checkout: Path) -> None:
    (checkout / "channels.d" / "bad.yaml").write_text("kind: stdin\nnope: 1\n")
    log_path = checkout / "journal.log"
    with open(log_path, "wb") as log_file:
        st = os.fstat(log_file.fileno())
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ORRAD_")}
        environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-m", "orrad", "run"], cwd=checkout, input=b"hi\n",
                       stdout=subprocess.DEVNULL, stderr=log_file, env=environ, timeout=30,
                       check=True)
    lines = log_path.read_text().splitlines()
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines)
    assert any(line.startswith("<3>") and "bad.yaml:2:1:" in line for line in lines)
    assert any(line.startswith("<6>") for line in lines)
