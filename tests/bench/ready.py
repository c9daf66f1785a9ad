"""Start-up benchmark: from spawning ``orrad run`` to its ``READY=1``.

The configuration is the shipped one: ``systemd/orrad.yaml`` as it is in the repository
(the ``echo`` assistant, the API on loopback), with only the API's port changed to a free
one, and ``channels.d/webhook.yaml.example`` as its one channel (its ``listen`` port changed
the same way, ``HOOKS_TOKEN`` set). ``state_dir`` comes from ``$STATE_DIRECTORY``, as
under the unit; the first run creates the database, later runs open it.

Each run binds a fresh unix datagram socket, passes it as ``$NOTIFY_SOCKET`` (what systemd
does for ``Type=notify``), spawns the ``orrad`` console script of this interpreter's
environment (``python -m orrad`` when there is none) and waits for a datagram with
``READY=1``; the time from just before the spawn to that datagram is the run's figure. The
daemon is then stopped with SIGTERM (it must exit 0). ``ready_s`` is the median over
``--runs`` runs (default 5); issue 12 wants ≤ 1 s. ``readyz_status`` is what ``GET
/readyz`` answered right after each ``READY=1`` (200 expected).

orrad's own modules are compiled to bytecode first (``python -m compileall``), as pip does
when it installs a package and as the service's installed orrad has them. In a checkout
with ``PYTHONDONTWRITEBYTECODE`` set (these machines set it), every start would otherwise
compile ~100 modules from source, ~0.2 s here, which no installed daemon pays.

Usage (from the repository root, in the project's venv)::

    python tests/bench/ready.py [--runs 5]

One JSON document goes to stdout, logs to stderr; the exit status is 1 when a run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import re
import secrets
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    # appended, not prepended: an orrad first on PYTHONPATH (another checkout) is the one run
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.bench import webhook
from tests.bench.cli import add_workdir, report_main

__all__ = ["Options", "main", "run_benchmark", "time_to_ready"]

log = logging.getLogger("bench.ready")

DAEMON_FILE = webhook.REPO / "systemd" / "orrad.yaml"
CHANNEL_EXAMPLE = webhook.REPO / "channels.d" / "webhook.yaml.example"
LISTEN_LINE = re.compile(r"^(\s*listen:\s*)127\.0\.0\.1:\d+", re.MULTILINE)


@dataclass(frozen=True)
class Options:
    """Benchmark settings (see ``--help``)."""

    runs: int = 5
    timeout_s: float = 30.0
    workdir: Path | None = None


def _with_port(text: str, port: int, what: str) -> str:
    """``text`` with its one ``listen: 127.0.0.1:<port>`` line moved to ``port``."""
    changed, count = LISTEN_LINE.subn(rf"\g<1>127.0.0.1:{port}", text)
    if count != 1:
        raise RuntimeError(f"{what}: expected one 'listen: 127.0.0.1:<port>' line, found "
                           f"{count}")
    return changed


def write_shipped_config(root: Path) -> tuple[Path, int]:
    """The shipped daemon file and webhook example under ``root``; (daemon file, API port)."""
    api_port, hook_port = webhook.free_port(), webhook.free_port()
    channels = root / "channels.d"
    channels.mkdir(parents=True)
    config = root / "orrad.yaml"
    config.write_text(_with_port(DAEMON_FILE.read_text(), api_port, str(DAEMON_FILE)))
    (channels / "hooks.yaml").write_text(
        _with_port(CHANNEL_EXAMPLE.read_text(), hook_port, str(CHANNEL_EXAMPLE)))
    return config, api_port


def orrad_command() -> list[str]:
    """The ``orrad`` console script next to this interpreter, else ``python -m orrad``."""
    script = Path(sys.executable).with_name("orrad")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "orrad"]


def _wait_ready(receiver: socket.socket, child: webhook.Child, timeout_s: float) -> float:
    """Block until a datagram with ``READY=1``; the monotonic time it arrived."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no READY=1 within {timeout_s:g}s; the log ends with:\n"
                               f"{child.tail()}")
        readable, _, _ = select.select([receiver], [], [], min(left, 0.2))
        if readable:
            data = receiver.recv(4096)
            arrived = time.monotonic()
            if "READY=1" in data.decode(errors="replace").splitlines():
                return arrived
        elif child.process.poll() is not None:
            raise RuntimeError(f"orrad exited with {child.process.returncode} before READY=1; "
                               f"its log ends with:\n{child.tail()}")


def _readyz(api_port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def time_to_ready(workdir: Path, index: int, timeout_s: float) -> dict[str, Any]:
    """One run: spawn ``orrad run`` with the shipped config, time its ``READY=1``."""
    root = workdir / "service"
    if not root.exists():
        write_shipped_config(root)
    config = root / "orrad.yaml"
    api_port = int(re.findall(r"listen:\s*127\.0\.0\.1:(\d+)", config.read_text())[0])
    sock_path = workdir / f"notify-{index}.sock"
    env = webhook._child_env(NOTIFY_SOCKET=str(sock_path), STATE_DIRECTORY=str(root / "state"),
                             HOOKS_TOKEN=secrets.token_urlsafe(24))
    argv = [*orrad_command(), "run", "-c", str(config)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(sock_path))
        began = time.monotonic()
        with webhook.spawn(f"orrad-run-{index}", argv, workdir, env) as child:
            ready_at = _wait_ready(receiver, child, timeout_s)
            readyz = _readyz(api_port)
        exit_code = child.process.returncode
    sock_path.unlink(missing_ok=True)
    seconds = ready_at - began
    log.info("run %d: READY=1 after %.3f s (/readyz %s, exit %s)", index, seconds, readyz,
             exit_code)
    return {"ready_s": round(seconds, 3), "readyz_status": readyz, "exit_code": exit_code}


def compile_orrad() -> str:
    """Bytecode for the orrad package the daemon will import (module docstring); where."""
    spec = importlib.util.find_spec("orrad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("orrad is not importable here")
    package = next(iter(spec.submodule_search_locations))
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True,
                   stdout=subprocess.DEVNULL)
    return package


def run_benchmark(opts: Options) -> tuple[dict[str, Any], bool]:
    """``opts.runs`` timed starts; the report (``ready_s`` the median) and success."""
    report: dict[str, Any] = {"machine": webhook.machine_info(), "runs": opts.runs,
                              "bytecode_compiled": compile_orrad(),
                              "dont_write_bytecode_env": bool(
                                  os.environ.get("PYTHONDONTWRITEBYTECODE")),
                              "command": [*orrad_command(), "run", "-c", "<orrad.yaml>"],
                              "config": [str(DAEMON_FILE.relative_to(webhook.REPO)),
                                         str(CHANNEL_EXAMPLE.relative_to(webhook.REPO))]}
    runs: list[dict[str, Any]] = []
    ok = True
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="orrad-bench-ready-")))
        else:
            workdir = opts.workdir.resolve()
            workdir.mkdir(parents=True)
        for index in range(opts.runs):
            try:
                runs.append(time_to_ready(workdir, index, opts.timeout_s))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log.error("run %d failed: %s", index, exc)
                report["error"] = str(exc)
                ok = False
                break
    times = [run["ready_s"] for run in runs]
    report["each"] = runs
    report["ready_s"] = round(statistics.median(times), 3) if times else None
    report["ready_s_min"] = min(times) if times else None
    report["ready_s_max"] = max(times) if times else None
    if any(run["exit_code"] != 0 or run["readyz_status"] != 200 for run in runs):
        ok = False
    return report, ok



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report; 0 when every run got ready and stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed starts (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for READY=1 (default 30)")
    add_workdir(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.timeout <= 0:
        parser.error("runs must be at least 1, timeout positive")
    opts = Options(runs=args.runs, timeout_s=args.timeout, workdir=args.workdir)
    return report_main(lambda: run_benchmark(opts))


if __name__ == "__main__":
    sys.exit(main())
