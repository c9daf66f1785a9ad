"""Hostile channel and daemon files against a real ``orrad`` process (issue 10 items 1, 2
and 14): the webhook keeps answering through every file-based attack, SIGTERM stops the
daemon within its grace period right after a reload met a FIFO, a bad daemon file is exit
78 from ``check`` and ``run``, and a rejected file that is deleted is reported ``removed``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from orrad.daemon import SHUTDOWN_GRACE_S
from tests.daemon_process import DaemonProcess, free_port

HOSTILE: dict[str, str] = {
    "deep.yaml": "kind: webhook\nx: " + "[" * 5000 + "]" * 5000 + "\n",
    "deepblock.yaml": "kind: webhook\n" + "".join(" " * i + "k:\n" for i in range(300)),
    "chain.yaml": "kind: webhook\nname: \"" + "${A:-" * 3000 + "x" + "}" * 3000 + "\"\n",
    "merges.yaml": "kind: webhook\na0: &a0 {k: 1}\n" + "".join(
        f"a{i}: &a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * 10) + "]}\n" for i in range(1, 11)),
    "environ.yaml": "kind: webhook\nname: '${file:/proc/self/environ}'\n",
}


def add_hostile_files(channels: Path) -> None:
    for name, text in HOSTILE.items():
        (channels / name).write_text(text)
    os.mkfifo(channels / "f.yaml")
    (channels / "zero.yaml").symlink_to("/dev/zero")
    (channels / "flows.yaml").write_bytes(b"kind: webhook\nx: [" + b"1," * (25 << 20) + b"]\n")


HOSTILE_FILES = {*HOSTILE, "f.yaml", "zero.yaml", "flows.yaml"}


async def ask(port: int, text: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"http://127.0.0.1:{port}/hook", json={"message": text})
    assert response.status_code == 200, response.text
    reply: str = response.json()["message"]
    return reply


def rejected(status: dict[str, object]) -> dict[str, str]:
    channels = status["channels"]
    assert isinstance(channels, list)
    return {Path(c["file"]).name: c["last_error"] for c in channels if c["state"] == "rejected"}


async def test_sigterm_after_a_reload_that_met_a_fifo(tmp_path: Path) -> None:
    """The issue's scenario: a FIFO wedged SIGHUP, the signal loop, and so SIGTERM."""
    daemon = DaemonProcess(tmp_path)
    hook_port = free_port()
    daemon.write_channel("hook.yaml", f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n")
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda s: s.get("hook", ("",))[0] == "running")
        os.mkfifo(daemon.channels / "f.yaml")
        daemon.signal(signal.SIGHUP)
        with trio.fail_after(10):
            while "f.yaml" not in rejected(await daemon.get("/v1/status")):
                await trio.sleep(0.05)
        assert await ask(hook_port, "still there?") == "echo: still there?"
        errors = rejected(await daemon.get("/v1/status"))
        assert errors["f.yaml"] == f"{daemon.channels / 'f.yaml'}: not a regular file (a FIFO)"
        daemon.signal(signal.SIGHUP)  # and again: nothing queues up behind a stuck reload
        assert await ask(hook_port, "again") == "echo: again"
    finally:
        assert await daemon.stop(timeout=SHUTDOWN_GRACE_S) == 0


async def test_the_webhook_serves_through_every_file_based_attack(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    hook_port = free_port()
    daemon.write_channel("hook.yaml", f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n")
    add_hostile_files(daemon.channels)  # present at start: the webhook must still start
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda s: s.get("hook", ("",))[0] == "running")
        assert await ask(hook_port, "hi") == "echo: hi"
        status = await daemon.get("/v1/status")
        assert set(rejected(status)) == HOSTILE_FILES
        for error in rejected(status).values():
            assert error.count("\n") == 0 and "Traceback" not in error
            assert "PATH=" not in error and "\x00" not in error

        # The same files again, changed, through SIGHUP and through the API.
        for name in HOSTILE_FILES:
            (daemon.channels / name).unlink()
        add_hostile_files(daemon.channels)
        daemon.signal(signal.SIGHUP)
        response = await daemon.post("/v1/reload")
        files = {Path(f["file"]).name: f["result"] for f in response.json()["files"]}
        assert {name for name, result in files.items() if result == "rejected"} == HOSTILE_FILES
        assert files["hook.yaml"] == "unchanged"
        assert await ask(hook_port, "still") == "echo: still"
        assert (await daemon.channel_states())["hook"] == ("running", 1)

        # Item 14: a rejected file that is deleted is reported removed, then forgotten.
        (daemon.channels / "f.yaml").unlink()
        response = await daemon.post("/v1/reload")
        files = {Path(f["file"]).name: f["result"] for f in response.json()["files"]}
        assert files["f.yaml"] == "removed"
        status = await daemon.get("/v1/status")
        assert "f.yaml" not in rejected(status)
    finally:
        assert await daemon.stop(timeout=SHUTDOWN_GRACE_S) == 0
    assert "Traceback" not in daemon.stderr()


def orrad(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    return subprocess.run([sys.executable, "-m", "orrad", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_check_rejects_each_hostile_channel_file_with_a_position(tmp_path: Path) -> None:
    channels = tmp_path / "channels.d"
    channels.mkdir()
    (channels / "hook.yaml").write_text("kind: webhook\nlisten: 127.0.0.1:0\n")
    add_hostile_files(channels)
    (tmp_path / "orrad.yaml").write_text("api:\n  listen: ''\n")
    result = orrad("check", cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert sorted(Path(line.split(":")[0]).name for line in lines) == sorted(HOSTILE_FILES)
    assert f"{channels / 'deep.yaml'}:2:68: nested deeper than 64 levels" in lines
    assert f"{channels / 'f.yaml'}: not a regular file (a FIFO)" in lines


def test_a_hostile_daemon_file_is_exit_78_from_check_and_run(tmp_path: Path) -> None:
    cases = {
        "deep.yaml": "agents: " + "[" * 5000 + "]" * 5000 + "\n",
        "chain.yaml": "instance: \"" + "${A:-" * 3000 + "x" + "}" * 3000 + "\"\n",
        "merges.yaml": HOSTILE["merges.yaml"].removeprefix("kind: webhook\n"),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    for name in [*cases, "fifo.yaml", "zero.yaml"]:
        for command in ("check", "run"):
            result = orrad(command, "-c", name, cwd=tmp_path)
            assert result.returncode == 78, (name, command, result.stderr)
            [line] = result.stderr.splitlines()
            assert line.startswith(f"{name}:"), line


def test_a_fifo_where_the_daemon_file_is_looked_for_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "orrad.yaml")
    result = orrad("check", cwd=tmp_path)
    assert result.returncode == 78
    assert result.stderr == "orrad.yaml: not a regular file (a FIFO)\n"
