"""The client commands reach the running daemon while its file is being edited (issue 11
bug 7): through the address it recorded in ``state_dir``, with one line about a broken file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trio

from orrad.state.address import (
    ADDRESS_FILE,
    clear_api_address,
    read_api_address,
    record_api_address,
)
from tests.daemon_process import DaemonProcess, free_port
from tests.test_reload_daemon_file import run_cli

TICKER = "kind: ticker\nlabel: a\n"

async def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: run_cli(*args, config=config))


async def test_status_and_reload_reach_the_daemon_while_its_file_is_broken(
        tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", TICKER)
    await daemon.start()
    try:
        await daemon.wait_api()
        record = tmp_path / ".orrad" / ADDRESS_FILE
        assert json.loads(record.read_text())["listen"] == f"127.0.0.1:{daemon.port}"
        good = daemon.config_path.read_text()
        daemon.config_path.write_text(good + "agents: [unclosed\n")  # a YAML syntax error

        status = await cli("status", config=daemon.config_path)
        assert status.returncode == 0, status.stderr
        assert "t.yaml" in status.stdout or "ticker" in status.stdout
        note = [line for line in status.stderr.splitlines() if line.strip()]
        assert len(note) == 1 and note[0].startswith("orrad: note: the daemon file does not")
        assert f"{daemon.config_path}:" in note[0]

        reload = await cli("reload", config=daemon.config_path)
        assert reload.returncode == 78, reload.stdout + reload.stderr
        assert reload.stdout.startswith("rejected"), reload.stdout
    finally:
        assert await daemon.stop() == 0
    assert not record.exists()  # a stopped daemon leaves no address behind


async def test_reload_finds_the_daemon_after_api_listen_changed_in_the_file(
        tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", TICKER)
    await daemon.start()
    try:
        await daemon.wait_api()
        text = daemon.config_path.read_text()
        daemon.config_path.write_text(
            text.replace(f"127.0.0.1:{daemon.port}", f"127.0.0.1:{free_port()}"))
        reload = await cli("reload", config=daemon.config_path)
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "restart" in reload.stdout + reload.stderr  # api.listen needs one
        status = await cli("status", config=daemon.config_path)
        assert status.returncode == 0, status.stderr
    finally:
        assert await daemon.stop() == 0


def test_an_address_is_trusted_only_while_its_writer_lives(tmp_path: Path) -> None:
    record_api_address(str(tmp_path), "::1", 8470)
    assert read_api_address(str(tmp_path)) == "[::1]:8470"
    clear_api_address(str(tmp_path), pid=os.getpid() + 1)  # not ours: kept
    assert read_api_address(str(tmp_path)) == "[::1]:8470"

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)
    record_api_address(str(tmp_path), "127.0.0.1", 1, pid=dead)
    assert read_api_address(str(tmp_path)) is None
    (tmp_path / ADDRESS_FILE).write_text("{not json")
    assert read_api_address(str(tmp_path)) is None
    (tmp_path / ADDRESS_FILE).write_text(json.dumps({"listen": "x", "pid": True}))
    assert read_api_address(str(tmp_path)) is None
