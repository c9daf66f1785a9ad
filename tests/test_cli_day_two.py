"""Day-two commands of the CLI (issue 11): no traceback for a closed pipe, Ctrl-C or bad
input; ``--version`` and a user's ``--help``; ``sessions delete``; ``history --limit``;
``status --watch``; shell completion; one timestamp format. Every test runs the real
command line as a process (``python -m orrad`` or the ``orrad`` console script)."""

from __future__ import annotations

import json
import os
import pty
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orrad.model import Message
from orrad.runtime.sessions import Session
from orrad.state import Database, SqliteSessionStore
from orrad.state.address import ADDRESS_FILE
from orrad.version import __version__
from tests.daemon_process import DaemonProcess, free_port
from tests.test_cli import orrad

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"  # the one format: 2026-12-03T05:30:37Z
SCRIPT = Path(sys.executable).parent / "orrad"  # the console script next to this python
COMMANDS = ["run", "check", "status", "reload", "send", "sessions", "history", "version",
            "completion", "init"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    env.update(extra)
    return env


def command_line(how: str) -> list[str]:
    return [str(SCRIPT)] if how == "script" else [sys.executable, "-m", "orrad"]


def write_config(root: Path, *, listen: str = "") -> Path:
    """A daemon file with state in ``root/state`` and the API on ``listen``."""
    path = root / "orrad.yaml"
    path.write_text(f"state_dir: state\napi:\n  listen: '{listen}'\n")
    return path


async def seed(state_dir: Path, sessions: dict[str, list[str]]) -> None:
    """Store sessions with these user messages, as the daemon would."""
    db = Database.in_state_dir(str(state_dir))
    await db.open()
    try:
        store = SqliteSessionStore(db)
        for key, texts in sessions.items():
            await store.save(Session(key, [Message.user(text) for text in texts]))
    finally:
        await db.close()


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr


def read_until(fd: int, done: Callable[[bytes], bool], timeout: float = 15) -> bytes:
    """Read ``fd`` until ``done(everything read)``; fails after ``timeout`` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not done(data):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; read so far: {data[-2000:]!r}"
            if selector.select(left):
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # a pty whose other side closed
                    chunk = b""
                assert chunk, f"end of output; read so far: {data[-2000:]!r}"
                data += chunk
    return data


# -- bug 3: no traceback for a closed pipe, Ctrl-C or bad input -----------------------------


@pytest.mark.parametrize("how", ["module", "script"])  # buffered, and unbuffered
@pytest.mark.parametrize("args", [
    ["sessions"], ["sessions", "--json"], ["history", "ops:0"], ["--help"], ["--version"],
    ["completion", "bash"],
])
async def test_a_closed_output_pipe_is_exit_141_without_a_traceback(
        tmp_path: Path, how: str, args: list[str]) -> None:
    # `orrad sessions | head -1`, with the reader gone before anything is written: every
    # write fails with EPIPE, however the output is timed.
    write_config(tmp_path)
    await seed(tmp_path / "state", {f"ops:{i}": ["hello"] for i in range(15)})
    env = clean_env(PYTHONUNBUFFERED="1") if how == "script" else clean_env()
    env.pop("PYTHONUNBUFFERED", None) if how == "module" else None
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [*command_line(how), *args], cwd=tmp_path, stdout=write_end,
            stderr=subprocess.PIPE, text=True, env=env, timeout=30, check=False))
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_a_reader_that_stops_midway_leaves_no_traceback(tmp_path: Path) -> None:
    # Like `orrad history ops:big | head -1`: far more output than a pipe holds, so the
    # command is still writing when the reader goes away.
    write_config(tmp_path)
    trio.run(seed, tmp_path / "state",
             {"ops:big": [f"line {i} " + "x" * 200 for i in range(2000)]})
    with subprocess.Popen([str(SCRIPT), "history", "ops:big"], cwd=tmp_path, env=clean_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(b"user: line 0 ")
        process.stdout.close()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 141
    assert stderr == b""


def interrupt(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C, as often as needed (at most 5 times, a second apart): a SIGINT that lands
    just before the client enters its blocking read is only seen when the read returns
    (CPython checks signals between calls), so a user who hits that instant presses
    Ctrl-C again; sent at the very moment the request is complete, a test hits it often."""
    for _ in range(5):
        process.send_signal(signal.SIGINT)
        try:
            return process.communicate(timeout=1)
        except subprocess.TimeoutExpired:
            continue
    return process.communicate(timeout=30)


def test_ctrl_c_while_send_waits_for_a_slow_daemon_is_exit_130(tmp_path: Path) -> None:
    with socket.socket() as server:  # a "daemon" that takes the request and never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(30)
        config = write_config(tmp_path, listen=f"127.0.0.1:{server.getsockname()[1]}")
        with subprocess.Popen([str(SCRIPT), "send", "-c", str(config), "hello"], cwd=tmp_path,
                              env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as process:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                request = b""
                while b"\r\n\r\n" not in request:  # the whole head: the client now waits
                    chunk = connection.recv(4096)
                    assert chunk, request
                    request += chunk
                assert request.startswith(b"POST /v1/messages ")
                stdout, stderr = interrupt(process)
    assert process.returncode == 130
    no_traceback(stderr)
    assert stdout == ""
    assert stderr == "orrad: interrupted; the daemon may still answer and store the reply\n"


@pytest.mark.parametrize(("args", "code", "says"), [
    (["history", "bad::ns"], 2, "invalid namespace"),
    (["sessions", "--prefix", "::"], 2, "invalid namespace"),
    (["sessions", "delete", "a::b"], 2, "invalid namespace"),
    (["send", "--namespace", "a::b", "hi"], 2, "invalid namespace"),
    (["send", b"caf\xe9"], 2, "not valid UTF-8"),  # argv bytes that are not UTF-8
    (["send", "--agent", b"\xff", "hi"], 2, "not valid UTF-8"),
    (["history", "cli:local", "--limit", "0"], 2, "is not at least 1"),
    (["history", "cli:local", "--limit", "many"], 2, "not a whole number"),
    (["status", "--watch", "0"], 2, "is not between"),
    (["status", "--watch", "nan"], 2, "is not between"),
    (["frobnicate"], 2, "invalid choice"),
    (["sessions", "purge", "x"], 2, "invalid choice"),
    (["check", "-c", "/nonexistent/orrad.yaml"], 78, "configuration file not found"),
    (["check", "-c", "."], 78, "not a regular file"),
    (["history", "-c", "/dev/null", "x"], 78, "not a regular file"),
    (["sessions", "-c", "state_is_a_file.yaml"], 1, "storage error"),
])
def test_bad_input_is_a_short_message_never_a_traceback(
        tmp_path: Path, args: Sequence[str | bytes], code: int, says: str) -> None:
    (tmp_path / "state_is_a_file.yaml").write_text("state_dir: afile\n")
    (tmp_path / "afile").mkdir()
    (tmp_path / "afile" / "orrad.sqlite3").write_text("not a database")
    done = subprocess.run([sys.executable, "-m", "orrad", *args], cwd=tmp_path,
                          capture_output=True, text=True, env=clean_env(), timeout=30,
                          check=False)
    assert done.returncode == code, done.stderr
    no_traceback(done.stderr)
    assert says in done.stderr
    assert 1 <= len(done.stderr.splitlines()) <= 3  # argparse: its usage, then the error


FAULT = """
import sys
import orrad.cli as cli
def broken(args):
    raise RuntimeError("a bug\\nover two lines")
cli.COMMANDS["version"] = broken
sys.exit(cli.main(["version"]))
"""


@pytest.mark.parametrize("level", ["", "DEBUG"])
def test_an_unexpected_error_is_one_line_unless_debugging(tmp_path: Path, level: str) -> None:
    env = clean_env(ORRAD_LOG_LEVEL=level) if level else clean_env()
    done = subprocess.run([sys.executable, "-c", FAULT], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=30, check=False)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("orrad: internal error: RuntimeError: a bug over two lines")
    if level:
        assert "Traceback" in done.stderr and ", in broken\n" in done.stderr
    else:
        assert done.stderr.splitlines() == [last]


# -- bug 8: --version and a help written for users ------------------------------------------


def test_version_flag_and_command(tmp_path: Path) -> None:
    for args in (["--version"], ["version"]):
        done = orrad(*args, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"orrad {__version__}\n", "")


def test_help_is_written_for_users(tmp_path: Path) -> None:
    done = orrad("--help", cwd=tmp_path)
    assert done.returncode == 0
    text = done.stdout
    assert "argv to commands" not in text  # the module's docstring is for developers
    assert text.count("orrad connects LLM agents to chat channels") == 1
    for command in COMMANDS:
        assert re.search(rf"^    {command}\b", text, re.M), command
    assert "$ORRAD_CONFIG, ./orrad.yaml" in text and "/etc/orrad/orrad.yaml" in text
    for code in ("0", "1", "2", "78", "130", "141"):
        assert re.search(rf"^  {code} +\S", text, re.M), code
    assert "example:\n  orrad init && orrad check && orrad run" in text


@pytest.mark.parametrize("command", [*COMMANDS, "sessions delete"])
def test_each_command_has_a_description_and_an_example(tmp_path: Path, command: str) -> None:
    done = orrad(*command.split(), "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    usage, description = done.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: orrad {command}")
    assert len(description.split()) >= 5, description  # more than the one-line summary
    example = re.search(r"^examples?:\n((?:  \S.*\n?)+)", done.stdout, re.M)
    assert example, done.stdout
    assert f"orrad {command}" in example.group(1)


# -- sessions delete, history --limit --------------------------------------------------------


async def test_sessions_delete_through_the_running_daemon(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    await daemon.start()
    try:
        await daemon.wait_api()
        for key in ("ops:alice", "ops:bob"):
            answer = await daemon.post("/v1/messages", {"message": "hi", "namespace": key})
            assert answer.status_code == 200, answer.text
        config = str(daemon.config_path)

        done = await trio.to_thread.run_sync(
            lambda: orrad("sessions", "delete", "ops:alice", "-c", config, cwd=tmp_path))
        assert done.returncode == 0, done.stderr
        assert done.stdout == "deleted ops:alice (through the running daemon)\n"
        async with httpx.AsyncClient() as client:
            gone = await client.get(daemon.base_url + "/v1/sessions/ops:alice")
        assert gone.status_code == 404

        again = await trio.to_thread.run_sync(  # -c given to `sessions`, before `delete`
            lambda: orrad("sessions", "-c", config, "delete", "ops:alice", cwd=tmp_path))
        assert (again.returncode, again.stdout) == (1, "")
        assert again.stderr == "orrad: no session ops:alice\n"

        listing = await trio.to_thread.run_sync(
            lambda: orrad("sessions", "-c", config, "--prefix", "ops", cwd=tmp_path))
        assert listing.returncode == 0, listing.stderr
        assert [line.split()[0] for line in listing.stdout.splitlines()] == [
            "NAMESPACE", "ops:bob"]
    finally:
        assert await daemon.stop() == 0


def test_sessions_delete_in_state_dir_when_no_daemon_runs(tmp_path: Path) -> None:
    config = write_config(tmp_path, listen=f"127.0.0.1:{free_port()}")  # nothing listens
    trio.run(seed, tmp_path / "state", {"cli:local": ["hi"], "cli:other": ["hi"]})
    done = orrad("sessions", "delete", "cli:local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    database = tmp_path / "state" / "orrad.sqlite3"
    assert done.stdout == f"deleted cli:local (in {database}; no daemon answered)\n"
    assert done.stderr == ""
    assert orrad("history", "cli:local", cwd=tmp_path).returncode == 1
    assert orrad("history", "cli:other", cwd=tmp_path).stdout == "user: hi\n"
    missing = orrad("sessions", "delete", "cli:local", "-c", str(config), cwd=tmp_path)
    assert (missing.returncode, missing.stderr) == (1, "orrad: no session cli:local\n")


def test_sessions_delete_creates_no_store(tmp_path: Path) -> None:
    write_config(tmp_path, listen=f"127.0.0.1:{free_port()}")
    done = orrad("sessions", "delete", "cli:local", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (1, "orrad: no session cli:local\n")
    assert not (tmp_path / "state").exists()


def test_sessions_delete_with_the_api_disabled_says_what_it_cannot_know(
        tmp_path: Path) -> None:
    write_config(tmp_path, listen="")
    trio.run(seed, tmp_path / "state", {"cli:local": ["hi"]})
    done = orrad("sessions", "delete", "cli:local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted cli:local (in ")
    assert done.stderr.startswith("orrad: note: the daemon API is disabled")
    assert len(done.stderr.splitlines()) == 1


def test_sessions_delete_leaves_a_live_daemons_store_alone(tmp_path: Path) -> None:
    # A daemon whose process lives (here: this test's own pid) but does not answer, e.g.
    # while it starts: its store must not change behind its back.
    port = free_port()
    write_config(tmp_path, listen=f"127.0.0.1:{port}")
    trio.run(seed, tmp_path / "state", {"cli:local": ["hi"]})
    (tmp_path / "state" / ADDRESS_FILE).write_text(
        json.dumps({"listen": f"127.0.0.1:{port}", "pid": os.getpid()}))
    done = orrad("sessions", "delete", "cli:local", cwd=tmp_path)
    assert done.returncode == 1
    assert "still runs, so nothing was deleted" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert orrad("history", "cli:local", cwd=tmp_path).stdout == "user: hi\n"


def test_history_limit_shows_the_last_messages(tmp_path: Path) -> None:
    write_config(tmp_path)
    trio.run(seed, tmp_path / "state", {"cli:local": [f"m{i}" for i in range(5)]})

    def history(*args: str) -> list[str]:
        done = orrad("history", "cli:local", *args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert history("--limit", "2") == ["user: m3", "user: m4"]
    assert history("--limit", "1") == ["user: m4"]
    assert history("--limit", "99") == history() == [f"user: m{i}" for i in range(5)]
    as_json = json.loads("\n".join(history("--limit", "2", "--json")))
    assert [m["content"] for m in as_json["messages"]] == ["m3", "m4"]


# -- status --watch --------------------------------------------------------------------------


HEADER = rf"every 0\.1s: orrad status    {STAMP}\n\ninstance test  version "


async def test_status_watch_prints_a_block_per_interval_into_a_pipe(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", "kind: ticker\nlabel: a\n")
    await daemon.start()
    try:
        await daemon.wait_api()
        config = str(daemon.config_path)
        done = await trio.to_thread.run_sync(lambda: orrad(
            "status", "-c", config, "--watch", "0.1", "--count", "3", cwd=tmp_path))
        assert done.returncode == 0, done.stderr
        blocks = re.split(r"\n\n(?=every )", done.stdout)
        assert len(blocks) == 3
        for block in blocks:
            assert re.match(HEADER, block), block
            assert re.search(rf"^t +ticker +running +1 +0 +{STAMP}$", block, re.M), block
        as_json = await trio.to_thread.run_sync(lambda: orrad(
            "status", "-c", config, "--json", "--watch", "0.1", "--count", "2", cwd=tmp_path))
        assert as_json.returncode == 0, as_json.stderr
        documents = [json.loads(part) for part in as_json.stdout.split("\n\n")]
        assert [d["instance"] for d in documents] == ["test", "test"]
    finally:
        assert await daemon.stop() == 0


def watch_then_ctrl_c(config: Path) -> tuple[int, bytes]:
    """``orrad status --watch 0.1`` into a pipe: Ctrl-C once it has shown two blocks."""
    with subprocess.Popen([str(SCRIPT), "status", "-c", str(config), "--watch", "0.1"],
                          cwd=config.parent, env=clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        read_until(process.stdout.fileno(), lambda data: data.count(b"every 0.1s:") >= 2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def watch_on_a_terminal(config: Path) -> tuple[int, bytes]:
    """``orrad status --watch 0.1`` on a pty: Ctrl-C once it has cleared the screen twice."""
    primary, secondary = pty.openpty()
    try:
        with subprocess.Popen([str(SCRIPT), "status", "-c", str(config), "--watch", "0.1"],
                              cwd=config.parent, env=clean_env(), stdout=secondary,
                              stderr=subprocess.DEVNULL) as process:
            os.close(secondary)
            secondary = -1
            data = read_until(primary, lambda data: data.count(b"\x1b[H\x1b[2J") >= 2)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    return process.returncode, data


async def test_ctrl_c_ends_status_watch_quietly_with_130(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    await daemon.start()
    try:
        await daemon.wait_api()
        code, stderr = await trio.to_thread.run_sync(watch_then_ctrl_c, daemon.config_path)
        assert code == 130
        assert stderr == b""
    finally:
        assert await daemon.stop() == 0


async def test_status_watch_redraws_a_terminal(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    await daemon.start()
    try:
        await daemon.wait_api()
        code, data = await trio.to_thread.run_sync(watch_on_a_terminal, daemon.config_path)
        assert code == 130
        first = data.split(b"\x1b[H\x1b[2J")[1].decode()
        assert re.match(HEADER.replace(r"\n", r"\r?\n"), first), first
    finally:
        assert await daemon.stop() == 0


def test_status_watch_keeps_watching_an_unreachable_daemon(tmp_path: Path) -> None:
    config = write_config(tmp_path, listen=f"127.0.0.1:{free_port()}")
    done = orrad("status", "-c", str(config), "--watch", "0.1", "--count", "2", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout.count("orrad: cannot reach the daemon at") == 2
    assert done.stderr == ""


# -- shell completion ------------------------------------------------------------------------


BASH_COMPLETE = """
source <(orrad completion bash)
complete -p orrad
reply() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _orrad
          printf '%s|' "${COMPREPLY[@]}"; echo; }
reply orrad ""
reply orrad se
reply orrad sessions -c orrad.yaml ""
reply orrad sessions delete -
reply orrad status --w
reply orrad completion ""
reply orrad init --provider o
reply orrad -c
reply orrad run -c orr
reply orrad init my
"""


def test_bash_completion_knows_every_command(tmp_path: Path) -> None:
    (tmp_path / "orrad.yaml").write_text("")
    (tmp_path / "mybot").mkdir()
    (tmp_path / "mynotes.txt").write_text("")  # a file: not offered as a folder
    env = clean_env(PATH=f"{SCRIPT.parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", BASH_COMPLETE], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "complete -F _orrad orrad"
    assert lines[1].split("|")[:-1] == COMMANDS  # every subcommand, in the parser's order
    assert lines[2:] == [
        "send|sessions|", "delete|", "-h|--help|-c|--config|", "--watch|", "bash|zsh|fish|",
        "openai|ollama|", "|",  # the top level has no -c
        "orrad.yaml|", "mybot|"]  # init DIR: folders


def test_completion_scripts_list_every_command(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        done = orrad("completion", shell, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        for command in COMMANDS:
            assert re.search(rf"\b{command}\b", done.stdout), (shell, command)
        assert "delete" in done.stdout and "--watch" in done.stdout


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_registers_and_describes_commands(tmp_path: Path) -> None:
    script = tmp_path / "_orrad"
    script.write_text(orrad("completion", "zsh", cwd=tmp_path).stdout)
    probe = f"""
autoload -U compinit && compinit -u -d {tmp_path}/zcompdump
source {script}
print -r -- "registered: ${{_comps[orrad]}}"
_describe() {{ print -r -- "${{(P)4}}"; }}
words=(orrad sessions ""); CURRENT=3; _orrad
"""
    done = subprocess.run(["zsh", "-fc", probe], cwd=tmp_path, capture_output=True, text=True,
                          env=clean_env(), timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["registered: _orrad", "delete:clear one session"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_completes_commands(tmp_path: Path) -> None:
    script = tmp_path / "orrad.fish"
    script.write_text(orrad("completion", "fish", cwd=tmp_path).stdout)
    done = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script}; complete -C'orrad ses'; "
         "complete -C'orrad sessions '"],
        cwd=tmp_path, capture_output=True, text=True, env=clean_env(), timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["sessions", "delete"]


# -- one timestamp format --------------------------------------------------------------------


async def test_every_time_shown_is_iso_8601_utc_in_whole_seconds(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", "kind: ticker\nlabel: a\n")
    await daemon.start()
    try:
        await daemon.wait_api()
        answer = await daemon.post("/v1/messages", {"message": "hi", "namespace": "ops:a"})
        assert answer.status_code == 200, answer.text
        status: Any = await daemon.get("/v1/status")
        assert [re.fullmatch(STAMP, c["since"]) is not None for c in status["channels"]] == [
            True]
        listing: Any = await daemon.get("/v1/sessions")
        for item in listing:
            assert re.fullmatch(STAMP, item["created_at"]), item
            assert re.fullmatch(STAMP, item["updated_at"]), item
        session: Any = await daemon.get("/v1/sessions/ops:a")
        assert all(re.fullmatch(STAMP, m["timestamp"]) for m in session["messages"]), session
    finally:
        assert await daemon.stop() == 0
    # The same store, read by the CLI with the daemon stopped.
    config = str(daemon.config_path)
    table = orrad("sessions", "-c", config, cwd=tmp_path)
    assert re.search(rf"^ops:a +2  {STAMP}$", table.stdout, re.M), table.stdout
    listed = json.loads(orrad("sessions", "-c", config, "--json", cwd=tmp_path).stdout)
    assert re.fullmatch(STAMP, listed[0]["created_at"])
    assert re.fullmatch(STAMP, listed[0]["updated_at"])
    history = json.loads(orrad("history", "-c", config, "ops:a", "--json", cwd=tmp_path).stdout)
    assert all(re.fullmatch(STAMP, m["timestamp"]) for m in history["messages"])
