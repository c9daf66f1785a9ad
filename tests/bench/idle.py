"""Idle-sessions benchmark: the daemon's resident memory for 10,000 sessions.

One ``orrad run`` (one webhook channel, ``echo`` provider, SQLite store:
:func:`tests.bench.webhook.orrad_daemon`). Its ``VmRSS`` (``/proc/<pid>/status``) is read

1. ``empty``: as soon as the webhook port accepts connections;
2. ``warm``: after ``--warm-requests`` messages (default 512) over 32 namespaces of their
   own, so that what a first message imports, compiles and caches is already in;
3. ``after``: after ``--sessions`` messages (default 10,000), each in a namespace of its own,
   so that each creates one session (a user message and the echo's answer), all answered
   (``--concurrency`` at a time, default 16).

Each reading comes ``--settle`` seconds (default 2) after the last answer.
``idle_sessions_mb`` = (after − warm) / 1024 (MiB; issue 12 wants ≤ 50 MB);
``idle_sessions_mb_from_empty`` counts from the empty daemon instead.

Usage (from the repository root, in the project's venv)::

    python tests/bench/idle.py [--sessions 10000] [--concurrency 16] [--settle 2]

One JSON document goes to stdout, logs to stderr; the exit status is 1 when the run failed
or a request was not answered 200. The daemon is stopped at the end (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    # appended, not prepended: an orrad first on PYTHONPATH (another checkout) is the one run
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from tests.bench import webhook
from tests.bench.cli import add_workdir, report_main
from tests.bench.history import message_counts

__all__ = ["Options", "main", "rss_kib", "run_benchmark"]

log = logging.getLogger("bench.idle")

WARM_NAMESPACES = 32


@dataclass(frozen=True)
class Options:
    """Benchmark settings (see ``--help``)."""

    sessions: int = 10_000
    warm_requests: int = 512
    concurrency: int = 16
    settle_s: float = 2.0
    timeout_s: float = 30.0
    workdir: Path | None = None


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``, …)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB."""
    return proc_status_kib(pid, "VmRSS")


def _send(daemon: webhook.Daemon, namespaces: list[str], tag: str, opts: Options) -> int:
    began = time.monotonic()
    failures = trio.run(functools.partial(
        webhook.post_each, daemon.port, daemon.token, namespaces, tag=tag,
        concurrency=opts.concurrency, timeout_s=opts.timeout_s))
    elapsed = time.monotonic() - began
    log.info("%s: %d messages in %.1f s (%.0f/s), %d not answered 200", tag, len(namespaces),
             elapsed, len(namespaces) / elapsed if elapsed else 0.0, failures)
    return failures


def _measure(opts: Options, workdir: Path) -> dict[str, Any]:
    with webhook.orrad_daemon("idle", workdir) as daemon:
        pid = daemon.processes[0].process.pid
        time.sleep(opts.settle_s)
        empty = rss_kib(pid)
        warm_failures = _send(daemon, [f"warm{i % WARM_NAMESPACES}"
                                       for i in range(opts.warm_requests)], "warm", opts)
        time.sleep(opts.settle_s)
        warm = rss_kib(pid)
        began = time.monotonic()
        failures = _send(daemon, [f"idle{i}" for i in range(opts.sessions)], "idle", opts)
        create_s = time.monotonic() - began
        time.sleep(opts.settle_s)
        after, peak = rss_kib(pid), proc_status_kib(pid, "VmHWM")
        log.info("RSS: empty %d KiB, warm %d KiB, after %d sessions %d KiB (peak %d KiB)",
                 empty, warm, opts.sessions, after, peak)
    counts = message_counts(workdir / "idle" / "state")
    return {
        "rss_kib": {"empty": empty, "warm": warm, "after": after, "peak": peak},
        "sessions_created": opts.sessions, "create_s": round(create_s, 2),
        "failures": failures + warm_failures, "sessions_in_db": counts["sessions"],
        "idle_sessions_mb": round((after - warm) / 1024, 1),
        "idle_sessions_mb_from_empty": round((after - empty) / 1024, 1),
        "daemon_exit_code": daemon.exit_code,
    }


def run_benchmark(opts: Options) -> tuple[dict[str, Any], bool]:
    """Start the daemon, create the sessions, read its memory; the report and success."""
    report: dict[str, Any] = {"machine": webhook.machine_info(), "sessions": opts.sessions,
                              "concurrency": opts.concurrency, "settle_s": opts.settle_s}
    ok = True
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="orrad-bench-idle-")))
        else:
            workdir = opts.workdir.resolve()
            workdir.mkdir(parents=True)
        try:
            report.update(_measure(opts, workdir))
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError,
                sqlite3.Error) as exc:
            log.error("idle benchmark failed: %s", exc)
            report["error"] = str(exc)
            report["idle_sessions_mb"] = None
            ok = False
    if report.get("failures") or report.get("daemon_exit_code"):
        ok = False
    return report, ok



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report; 0 when every message was answered."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000,
                        help="sessions to create, one message each (default 10000)")
    parser.add_argument("--warm-requests", type=int, default=512,
                        help="messages sent before the 'warm' reading (default 512)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight at once (default 16)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds between the last answer and each reading (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="per-request timeout in seconds (default 30)")
    add_workdir(parser)
    args = parser.parse_args(argv)
    if min(args.sessions, args.concurrency) < 1 or args.warm_requests < 0 or \
            args.settle < 0 or args.timeout <= 0:
        parser.error("sessions and concurrency must be at least 1, warm requests and settle "
                     "at least 0, timeout positive")
    opts = Options(sessions=args.sessions, warm_requests=args.warm_requests,
                   concurrency=args.concurrency, settle_s=args.settle,
                   timeout_s=args.timeout, workdir=args.workdir)
    return report_main(lambda: run_benchmark(opts))


if __name__ == "__main__":
    sys.exit(main())
