"""Reloading the daemon file: its outcome is part of the reload's answer (``orrad reload``
prints it, 78 when rejected), and a daemon started without one takes up one created later."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.daemon_process import DaemonProcess, install_test_plugins

TICKER = "kind: ticker\nlabel: a\n"

SCRIPT = Path(sys.executable).parent / "orrad"  # the real console script


def run_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


async def test_a_rejected_daemon_file_is_reported_by_orrad_reload(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", TICKER)
    await daemon.start()
    try:
        await daemon.wait_api()
        good = daemon.config_path.read_text()
        daemon.config_path.write_text(
            good + "agents:\n  a: {provider: echo}\nagents:\n  b: {provider: echo}\n")
        reload = await trio.to_thread.run_sync(lambda: run_cli("reload",
                                                               config=daemon.config_path))
        assert reload.returncode == 78, reload.stdout + reload.stderr
        first = reload.stdout.splitlines()[0]
        assert first.startswith("rejected") and str(daemon.config_path) in first
        lines = good.count("\n") + 3  # the second "agents:" key
        assert f"{daemon.config_path}:{lines}:1:" in reload.stdout
        assert "unchanged" in reload.stdout  # the channel file's own line follows

        daemon.config_path.write_text(good + "agents:\n  helper: {provider: echo}\n")
        reload = await trio.to_thread.run_sync(lambda: run_cli("reload",
                                                               config=daemon.config_path))
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert reload.stdout.startswith("reloaded")
        sent = await trio.to_thread.run_sync(lambda: run_cli(
            "send", "--agent", "helper", "--namespace", "x:1", "hi", config=daemon.config_path))
        assert (sent.returncode, sent.stdout) == (0, "echo: hi\n"), sent.stderr
        again = await trio.to_thread.run_sync(lambda: run_cli("reload",
                                                              config=daemon.config_path))
        assert again.returncode == 0 and again.stdout.startswith("unchanged")
    finally:
        assert await daemon.stop() == 0


def _default_api_port_free() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 8470))
        except OSError:
            return False
    return True


async def test_a_daemon_started_without_a_daemon_file_takes_up_a_new_one(
        tmp_path: Path) -> None:
    if not _default_api_port_free():
        pytest.skip("the default api.listen port 8470 is in use on this machine")
    (tmp_path / "channels.d").mkdir()
    (tmp_path / "channels.d" / "t.yaml").write_text(TICKER)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORRAD_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONPATH"] = install_test_plugins(tmp_path / "site")
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "orrad", "run"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    base = "http://127.0.0.1:8470"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            with trio.fail_after(15):
                while True:
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
            refused = await client.post("/v1/messages",
                                        json={"message": "hi", "agent": "helper"})
            assert refused.status_code == 400
            (tmp_path / "orrad.yaml").write_text("agents:\n  helper: {provider: echo}\n")
            files = (await client.post("/v1/reload")).json()["files"]
            assert files[0]["file"].endswith("orrad.yaml")
            assert files[0]["result"] == "reloaded"
            answered = await client.post("/v1/messages",
                                         json={"message": "hi", "agent": "helper"})
            assert answered.status_code == 200, answered.text
            assert answered.json()["agent"] == "helper"
    finally:
        process.terminate()
        with trio.fail_after(15):
            assert await process.wait() == 0
