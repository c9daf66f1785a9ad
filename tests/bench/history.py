"""History benchmark: the per-message cost on long sessions against short ones.

Two ``orrad run`` daemons, one after the other, each with one webhook channel, the ``echo``
provider and the SQLite store (:func:`tests.bench.webhook.orrad_daemon`):

``short``
    ``--short-namespaces`` sessions (default 512) of ``--short-messages`` messages each
    (default 10). Many namespaces so that the load adds only a few dozen messages to each.
``long``
    ``--long-namespaces`` sessions (default 32) of ``--long-messages`` messages each
    (default 10,000, far past the agent's 8,192-token context budget, so every turn trims).

Both histories are written before the daemon starts, through the real store
(:class:`orrad.state.SqliteSessionStore` on :class:`orrad.state.Database` in the daemon's
``state_dir``): alternating user/assistant messages like the ones the load itself adds.
Each daemon then gets one request per namespace (unmeasured: the first turn of a session
loads and indexes its history once), the load generator's warm-up, and the measured load
(wrk when installed, else :mod:`tests.bench.loadgen`; ``--loadgen``) at ``--concurrency``
over its namespaces, with requests like :mod:`tests.bench.webhook`'s.

``history_overhead_ratio`` = req/s on the short sessions ÷ req/s on the long ones, i.e. the
per-message cost on long history over that on short history (1.0 = flat; issue 12 wants
≤ 2). ``cpu_overhead_ratio`` is the same for the daemon's CPU time per answered message and
``p50_overhead_ratio`` for the median latency.

Usage (from the repository root, in the project's venv)::

    python tests/bench/history.py [--duration 8] [--warmup 2] [--concurrency 32]
                                  [--long-messages 10000] [--long-namespaces 32]

One JSON document goes to stdout, logs to stderr; the exit status is 1 when a daemon could
not be run or measured. Both daemons are stopped at the end (SIGTERM, then SIGKILL).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    # appended, not prepended: an orrad first on PYTHONPATH (another checkout) is the one run
    sys.path.append(str(Path(__file__).resolve().parents[2]))

from orrad.model import Message
from orrad.runtime.sessions import Session
from orrad.state import Database, SqliteSessionStore
from orrad.state.db import DB_FILENAME
from tests.bench import webhook
from tests.bench.cli import add_workdir, report_main

__all__ = ["Options", "main", "run_benchmark", "seed_sessions"]

log = logging.getLogger("bench.history")

NAMESPACE_PREFIX = "webhook:hooks"  # the benchmark daemon's webhook channel (hooks.yaml)


@dataclass(frozen=True)
class Options:
    """Benchmark settings (see ``--help``)."""

    duration_s: float = 8.0
    warmup_s: float = 2.0
    concurrency: int = 32
    short_messages: int = 10
    short_namespaces: int = 512
    long_messages: int = 10_000
    long_namespaces: int = 32
    timeout_s: float = 10.0
    loadgen: str = "auto"
    workdir: Path | None = None

    def webhook_options(self) -> webhook.Options:
        """The load settings in :mod:`tests.bench.webhook`'s terms."""
        return webhook.Options(duration_s=self.duration_s, warmup_s=self.warmup_s,
                               concurrency=self.concurrency, timeout_s=self.timeout_s,
                               loadgen=self.loadgen)


# -- seeding ---------------------------------------------------------------------------------


def _history(namespace: str, count: int) -> list[Message]:
    """``count`` messages as the echo agent leaves them: user, then its echo, and so on."""
    start = datetime.now(UTC) - timedelta(seconds=count)
    messages = []
    for i in range(count):
        turn = i // 2
        text = f"bench seed {turn} in {namespace}"
        at, run = start + timedelta(seconds=i), f"seed-{turn}"
        messages.append(Message("user", text, timestamp=at, run_id=run) if i % 2 == 0 else
                        Message("assistant", f"echo: {text}", timestamp=at, run_id=run))
    return messages


async def _seed(state_dir: Path, namespaces: int, messages: int) -> None:
    db = Database.in_state_dir(str(state_dir))
    await db.open()
    try:
        store = SqliteSessionStore(db, cache_size=1)
        for k in range(namespaces):
            key = f"{NAMESPACE_PREFIX}:ns{k}"
            await store.save(Session(key, _history(key, messages)))
    finally:
        await db.close()


def seed_sessions(state_dir: Path, namespaces: int, messages: int) -> None:
    """Write ``namespaces`` sessions of ``messages`` messages into ``state_dir``'s database.

    The namespaces are the ones the load generators use (``ns0`` … below the channel's
    prefix), so the load lands on these sessions.
    """
    began = time.monotonic()
    if messages > 0:
        trio.run(_seed, state_dir, namespaces, messages)
    log.info("seeded %d sessions of %d messages in %.1f s", namespaces, messages,
             time.monotonic() - began)


def message_counts(state_dir: Path) -> dict[str, int]:
    """Fewest and most messages of a session, and the number of sessions, read afterwards."""
    conn = sqlite3.connect(f"file:{state_dir / DB_FILENAME}?mode=ro", uri=True)
    try:
        low, high, count = conn.execute(
            "SELECT min(message_count), max(message_count), count(*) FROM sessions").fetchone()
    finally:
        conn.close()
    return {"min": int(low or 0), "max": int(high or 0), "sessions": int(count)}


# -- load ------------------------------------------------------------------------------------


def _measure(name: str, opts: Options, workdir: Path, namespaces: int,
             messages: int) -> dict[str, Any]:
    """Seed, start, prime, load and stop one daemon; its figures."""
    seed = functools.partial(seed_sessions, namespaces=namespaces, messages=messages)
    wopts = opts.webhook_options()
    with webhook.orrad_daemon(f"history_{name}", workdir, before_start=seed) as daemon:
        began = time.monotonic()
        failures = trio.run(functools.partial(
            webhook.post_each, daemon.port, daemon.token, [f"ns{k}" for k in range(namespaces)],
            tag=f"prime-{name}", timeout_s=opts.timeout_s))
        primed_s = time.monotonic() - began
        log.info("%s: one request in each of %d namespaces took %.1f s (%d failed)", name,
                 namespaces, primed_s, failures)
        result = webhook.load(daemon.port, wopts, concurrency=opts.concurrency,
                              namespaces=namespaces, path=webhook.WEBHOOK_PATH,
                              token=daemon.token, tag=f"history-{name}",
                              servers=daemon.processes)
    counts = message_counts(workdir / f"history_{name}" / "state")
    cores = result.get("cpu_cores", {}).get(f"history_{name}")
    rps = result.get("rps") or 0.0
    return {
        **result, "namespaces": namespaces, "seeded_messages": messages,
        "messages_after": counts, "prime_s": round(primed_s, 2), "prime_failures": failures,
        "daemon_cpu_ms_per_message": round(cores * 1000 / rps, 3) if cores and rps else None,
        "daemon_exit_code": daemon.exit_code,
    }


def run_benchmark(opts: Options) -> tuple[dict[str, Any], bool]:
    """Measure short then long sessions; the report and whether both ran."""
    report: dict[str, Any] = {
        "machine": webhook.machine_info(), "concurrency": opts.concurrency,
        "duration_s": opts.duration_s, "warmup_s": opts.warmup_s,
    }
    ok = True
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="orrad-bench-history-")))
        else:
            workdir = opts.workdir.resolve()
            workdir.mkdir(parents=True)
        for name, namespaces, messages in (
                ("short", opts.short_namespaces, opts.short_messages),
                ("long", opts.long_namespaces, opts.long_messages)):
            log.info("== %s: %d sessions of %d messages", name, namespaces, messages)
            try:
                report[name] = _measure(name, opts, workdir, namespaces, messages)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError,
                    sqlite3.Error) as exc:
                log.error("%s failed: %s", name, exc)
                report[name] = {"error": str(exc)}
                ok = False
            if report[name].get("errors") or report[name].get("prime_failures"):
                ok = False
    short, long = report["short"], report["long"]
    report["history_overhead_ratio"] = webhook._ratio(short.get("rps"), long.get("rps"))
    report["cpu_overhead_ratio"] = webhook._ratio(long.get("daemon_cpu_ms_per_message"),
                                                  short.get("daemon_cpu_ms_per_message"))
    report["p50_overhead_ratio"] = webhook._ratio(long.get("p50_ms"), short.get("p50_ms"))
    return report, ok



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report; 0 when both measurements ran cleanly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0,
                        help="measured seconds per daemon (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds of load before each measurement (default 2)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="connections (default 32)")
    parser.add_argument("--short-messages", type=int, default=10,
                        help="messages per short session before the run (default 10)")
    parser.add_argument("--short-namespaces", type=int, default=512,
                        help="short sessions (default 512; at most the store's cache, 1024)")
    parser.add_argument("--long-messages", type=int, default=10_000,
                        help="messages per long session before the run (default 10000)")
    parser.add_argument("--long-namespaces", type=int, default=32,
                        help="long sessions (default 32)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="per-request timeout in seconds (default 10)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default auto: wrk when installed)")
    add_workdir(parser)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.timeout <= 0 or min(
            args.concurrency, args.short_namespaces, args.long_namespaces) < 1 or min(
            args.short_messages, args.long_messages) < 0:
        parser.error("duration and timeout must be positive, warm-up and messages at least "
                     "0, concurrency and namespaces at least 1")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    opts = Options(duration_s=args.duration, warmup_s=args.warmup,
                   concurrency=args.concurrency, short_messages=args.short_messages,
                   short_namespaces=args.short_namespaces, long_messages=args.long_messages,
                   long_namespaces=args.long_namespaces, timeout_s=args.timeout,
                   loadgen=args.loadgen, workdir=args.workdir)
    return report_main(lambda: run_benchmark(opts))


if __name__ == "__main__":
    sys.exit(main())
