"""Run ``orrad run`` as a real process for tests: config files, plugins, API, notify socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

PLUGINS = Path(__file__).resolve().parent / "plugins"
# Started and not yet stopped: tests/conftest.py kills what a failing test left behind.
RUNNING: list[DaemonProcess] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_test_plugins(root: Path) -> str:
    """A dist-info folder declaring the ticker kind; returns a PYTHONPATH including it."""
    dist = root / "orrad_test_ticker-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: orrad-test-ticker\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[orrad.channels]\nticker = orrad_test_ticker:TickerChannel\n")
    return os.pathsep.join([str(root), str(PLUGINS)])


class DaemonProcess:
    """``orrad run -c <tmp>/orrad.yaml`` with the API on a free loopback port."""

    def __init__(self, root: Path, *, extra_config: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.channels = root / "channels.d"
        self.channels.mkdir(exist_ok=True)
        self.config_path = root / "orrad.yaml"
        self.config_path.write_text(
            f"instance: test\napi:\n  listen: 127.0.0.1:{self.port}\n{extra_config}")
        self.stderr_path = root / "stderr.log"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("ORRAD_", "NOTIFY_", "WATCHDOG_"))}
        self.env["PYTHONPATH"] = install_test_plugins(root / "site")
        self.env.update(env or {})
        self.process: trio.Process | None = None
        self.base_url = f"http://127.0.0.1:{self.port}"

    def write_channel(self, name: str, text: str) -> Path:
        path = self.channels / name
        path.write_text(text)
        return path

    async def start(self) -> None:
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "orrad", "run", "-c", str(self.config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
            env=self.env, cwd=self.root,
        )
        RUNNING.append(self)

    async def wait_api(self, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while True:
                try:
                    async with httpx.AsyncClient() as client:
                        if (await client.get(self.base_url + "/healthz")).status_code == 200:
                            return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient() as client:
            return (await client.get(self.base_url + path)).json()

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(self.base_url + path, json=body)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.terminate()
        try:
            with trio.fail_after(timeout):
                code = await self.process.wait()
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """Make sure the process is gone (SIGKILL if still running) and forget it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
        if self in RUNNING:
            RUNNING.remove(self)
        if not self._stderr.closed:
            self._stderr.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def channel_states(self) -> dict[str, tuple[str, int]]:
        status = await self.get("/v1/status")
        return {c["name"]: (c["state"], c["generation"]) for c in status["channels"]}

    async def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        """Poll ``/v1/status`` channel states until ``predicate(states)`` holds."""
        with trio.fail_after(timeout):
            while not predicate(await self.channel_states()):
                await trio.sleep(0.05)
