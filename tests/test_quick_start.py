"""The README's "Quick start", followed literally in a fresh folder with real processes.

The shell commands are read from the README's Quick start code blocks and run as written
(through ``bash -c``, in the folder the steps ``cd`` into), so the README and this test
cannot drift apart: a command added to, changed in or removed from the README fails the
test until the step list below follows it. What differs from a user's machine, and only
that:

* the install step is not run (the test runs inside the installed package: it checks the
  ``orrad`` console script is there);
* ``OPENAI_BASE_URL`` points at the test suite's fake OpenAI server (the generated
  ``orrad.yaml`` reads it, as the README says), which also checks the README's
  ``OPENAI_API_KEY`` value arrives as the bearer key;
* the API and webhook addresses in the written files (and the ``curl`` URL) are moved to
  free ports, so the test never meets another daemon on 8470 or 8080;
* ``orrad run`` gets its terminal lines from a pipe; the long-running ``orrad run`` of the
  webhook step has an open pipe as stdin, and the test waits for its readiness and channel
  states through ``NOTIFY_SOCKET`` (systemd's protocol) rather than by polling.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tests.daemon_process import free_port
from tests.fakes.llm import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
API = "127.0.0.1:8470"
HOOK = "127.0.0.1:8080"


def quick_start() -> tuple[list[str], list[str]]:
    """The README's Quick start: its shell commands (trailing ``  # comments`` dropped) and
    its YAML blocks, in order."""
    text = README.read_text()
    assert "\n## Quick start\n" in text, "README has no '## Quick start' section"
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    yaml_blocks: list[str] = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", section, re.DOTALL):
        if lang == "sh":
            for line in body.splitlines():
                line = re.sub(r"\s{2,}#.*$", "", line).strip()
                if line:
                    commands.append(line)
        elif lang == "yaml":
            yaml_blocks.append(body)
    return commands, yaml_blocks


class Walkthrough:
    """A user following the quick start: a current folder, an environment, a daemon."""

    def __init__(self, home: Path, fake: FakeOpenAI) -> None:
        self.cwd = home
        self.fake = fake
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(
            ("ORRAD_", "NOTIFY_", "WATCHDOG_", "JOURNAL_", "OPENAI_", "ANTHROPIC_"))}
        self.env["PATH"] = os.pathsep.join([str(BIN), self.env.get("PATH", "")])
        self.env["OPENAI_BASE_URL"] = fake.base_url
        self.api_port = free_port()
        self.hook_port = free_port()
        self.daemon: trio.Process | None = None
        self.notify: trio.socket.SocketType | None = None
        self.log = ""
        self._logged = trio.Event()

    async def shell(self, command: str, *, stdin: bytes = b"", timeout: float = 60
                    ) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(timeout):
            return await trio.run_process(
                ["bash", "-c", command], cwd=self.cwd, env=self.env, stdin=stdin,
                capture_stdout=True, capture_stderr=True, check=False)

    async def ok(self, command: str, *, stdin: bytes = b"") -> str:
        result = await self.shell(command, stdin=stdin)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        return result.stdout.decode()

    def own_ports(self) -> None:
        """Move the written API and webhook addresses to this test's free ports."""
        for path in [self.cwd / "orrad.yaml", *sorted((self.cwd / "channels.d").glob("*"))]:
            text = path.read_text()
            path.write_text(text.replace(API, f"127.0.0.1:{self.api_port}")
                            .replace(HOOK, f"127.0.0.1:{self.hook_port}"))

    def local(self, command: str) -> str:
        return command.replace(HOOK, f"127.0.0.1:{self.hook_port}")

    async def start_daemon(self, command: str, nursery: trio.Nursery) -> None:
        """``orrad run`` left running, as in a terminal of its own."""
        self.notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock_path = str(self.cwd.parent / "notify.sock")
        await self.notify.bind(sock_path)
        env = dict(self.env, NOTIFY_SOCKET=sock_path)
        self.daemon = await trio.lowlevel.open_process(
            ["bash", "-c", command], cwd=self.cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        nursery.start_soon(self._read_log)
        await self.notified(lambda m: m.get("READY") == "1")

    async def _read_log(self) -> None:
        assert self.daemon is not None and self.daemon.stderr is not None
        async for chunk in self.daemon.stderr:
            self.log += chunk.decode(errors="replace")
            self._logged.set()
            self._logged = trio.Event()

    async def logged(self, needle: str, timeout: float = 20) -> None:
        """Wait until the daemon's log (its stderr) shows ``needle``."""
        with trio.fail_after(timeout):
            while needle not in self.log:
                await self._logged.wait()

    async def notified(self, wanted: Callable[[dict[str, str]], bool],
                       timeout: float = 20) -> dict[str, str]:
        """The next notification the daemon sends that ``wanted`` accepts."""
        assert self.notify is not None
        with trio.fail_after(timeout):
            while True:
                data = await self.notify.recv(4096)
                message = dict(line.split("=", 1) for line in data.decode().splitlines()
                               if "=" in line)
                if wanted(message):
                    return message

    async def stop_daemon(self) -> int | None:
        code = None
        if self.daemon is not None:
            if self.daemon.returncode is None:
                self.daemon.send_signal(signal.SIGTERM)
            try:
                with trio.fail_after(20):
                    code = await self.daemon.wait()
            finally:
                if self.daemon.returncode is None:
                    self.daemon.kill()
                    await self.daemon.wait()
            self.daemon = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return code


def _files(root: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in root.rglob("*")
            if p.is_file() and ".orrad" not in p.parts}


async def test_the_readme_quick_start_leads_from_echo_to_a_real_provider(tmp_path: Path) -> None:
    commands, yaml_blocks = quick_start()
    async with FakeOpenAI() as fake:
        fake.reply_text("the fake model says hello")
        fake.reply_text("the fake model answers the webhook")
        user = Walkthrough(tmp_path, fake)
        key = ""

        async def install(command: str) -> None:
            assert (BIN / "orrad").exists(), "the install step gives an `orrad` command"

        async def init_echo(command: str) -> None:
            out = await user.ok(command)
            folder = shlex.split(command)[2]
            assert f"wrote {folder}/orrad.yaml" in out
            assert "next:" in out and f"cd {folder}" in out.split("next:")[1]

        async def cd(command: str) -> None:
            user.cwd = user.cwd / shlex.split(command)[1]
            user.own_ports()

        async def check(command: str) -> None:
            result = await user.shell(command)
            assert result.returncode == 0, result.stderr
            assert b"configuration ok: 2 channel file(s) (hooks, stdin)" in result.stderr

        async def chat_echo(command: str) -> None:
            assert await user.ok(command, stdin=b"hello\n") == "echo: hello\n"

        async def export(command: str) -> None:
            nonlocal key
            name, _, value = command.removeprefix("export ").partition("=")
            assert name == "OPENAI_API_KEY"
            key = user.env[name] = value
            fake.api_key = value  # the fake answers 401 to any other key

        async def init_openai(command: str) -> None:
            out = await user.ok(command)
            assert "replaced orrad.yaml" in out
            assert "OPENAI_API_KEY is set in this shell" in out
            user.own_ports()
            text = (user.cwd / "orrad.yaml").read_text()
            assert "api_key: ${OPENAI_API_KEY}" in text
            for name, content in _files(user.cwd).items():
                assert key not in content, name

        async def chat_model(command: str) -> None:
            assert await user.ok(command, stdin=b"hello\n") == "the fake model says hello\n"
            request = fake.requests[-1]
            assert request.path == "/v1/chat/completions" and request.rejected is None
            assert request.headers["authorization"] == f"Bearer {key}"
            assert request.body["messages"][-1] == {"role": "user", "content": "hello"}

        async def run_in_background(command: str) -> None:
            await user.start_daemon(command, nursery)

        async def enable_webhook(command: str) -> None:
            await user.ok(command)
            assert "\nenabled: true\n" in (user.cwd / "channels.d" / "hooks.yaml").read_text()

        async def reload(command: str) -> None:
            out = await user.ok(command)
            assert re.search(r"^started +\S*hooks\.yaml$", out, re.MULTILINE), out
            await user.logged("webhook hooks listening on ")

        async def curl(command: str) -> None:
            reply = json.loads(await user.ok(user.local(command)))
            assert reply["message"] == "the fake model answers the webhook"
            assert reply["namespace"].startswith("webhook:hooks:")
            assert fake.requests[-1].body["messages"][-1] == {"role": "user", "content": "hi"}

        steps: list[tuple[str, Callable[[str], Awaitable[None]]]] = [
            ("python3 -m venv .venv && . .venv/bin/activate && pip install -e .", install),
            ("orrad init mybot", init_echo),
            ("cd mybot", cd),
            ("orrad check", check),
            ("orrad run", chat_echo),
            ("export OPENAI_API_KEY=sk-...", export),
            ("orrad init --provider openai --force", init_openai),
            ("orrad run", chat_model),
            ("orrad run", run_in_background),
            ("sed -i 's/^enabled: false/enabled: true/' channels.d/hooks.yaml", enable_webhook),
            ("orrad reload", reload),
            ("curl -s -H 'content-type: application/json' -d '{\"message\": \"hi\"}' "
             "http://127.0.0.1:8080/hook", curl),
        ]
        assert commands == [c for c, _ in steps], (
            "the README's quick start changed: make this test follow it")
        async with trio.open_nursery() as nursery:
            try:
                for command, step in zip(commands, (s for _, s in steps), strict=True):
                    await step(command)
            finally:
                code = await user.stop_daemon()
        assert code == 0, user.log

        # Step 5: the Discord channel file as shown passes `orrad check` (its token in a
        # file next to orrad.yaml); nothing here talks to Discord.
        assert len(yaml_blocks) == 1
        token = user.cwd / "discord.token"
        token.write_text("fake-token\n")
        token.chmod(0o600)
        (user.cwd / "channels.d" / "discord.yaml").write_text(yaml_blocks[0])
        result = await user.shell("orrad check")
        assert result.returncode == 0, result.stderr
        assert b"3 channel file(s) (discord, hooks, stdin)" in result.stderr
