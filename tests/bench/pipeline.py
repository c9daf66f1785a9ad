"""The message pipeline's own cost, without HTTP: CPU time (or instructions) per message.

The daemon's pieces are built as ``orrad run`` builds them (a state database in a temporary
``state_dir``, the ledger, the SQLite session store, the configured agents with the ``echo``
provider, the router), and ``--concurrency`` tasks send ``--messages`` messages through
:meth:`orrad.router.Router.call`, each with a new delivery id, over 64 namespaces: every
message is recorded, run, saved with its answer and settled, as a webhook request is. The
first ``--warmup`` messages are not measured.

It prints one JSON object: ``cpu_us_per_message`` (the process: event loop and database
worker), ``loop_cpu_us_per_message`` (the event loop's thread alone) and the rate. These
move with whatever else the machine runs; ``--instructions`` instead runs the measurement
twice under ``valgrind --tool=callgrind`` (``--messages`` and three times as many) and
reports the difference in instructions divided by the difference in messages
(``instructions_per_message``): start-up cancels out, and the figure repeats within ~1%
from run to run whatever the machine is doing. Compare trees with it, not with seconds.
Under callgrind one run takes ~40× its normal time (about two minutes with the defaults).

Usage (from the repository root, in the project's venv)::

    python tests/bench/pipeline.py [--messages 6000] [--warmup 2000] [--concurrency 32]
    python tests/bench/pipeline.py --instructions [--messages 640] [--warmup 320]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.cli import report_main

NAMESPACES = 64


async def measure(messages: int, warmup: int, concurrency: int) -> dict[str, Any]:
    """Build the pipeline in a temporary state_dir and time ``messages`` calls through it."""
    from orrad.agents import build_agents
    from orrad.config.loader import load_daemon_config
    from orrad.daemon import GC_THRESHOLDS
    from orrad.metrics import Metrics
    from orrad.model import InboundMessage, Message, Namespace
    from orrad.router import Router
    from orrad.runtime.loop import NamespaceLocks
    from orrad.runtime.providers.http import make_http_client
    from orrad.runtime.tools import default_tool_registry
    from orrad.state import Database, Ledger, SqliteSessionStore

    root = Path(tempfile.mkdtemp(prefix="orrad-pipeline-"))
    try:
        (root / "channels.d").mkdir()
        config_file = root / "orrad.yaml"
        config_file.write_text(f"instance: bench\nstate_dir: {root / 'state'}\n"
                               f"channels_dir: {root / 'channels.d'}\napi:\n  listen: ''\n")
        config = load_daemon_config(str(config_file))
        db = Database.in_state_dir(config.state_dir)
        await db.open()
        metrics = Metrics()
        store = SqliteSessionStore(db)
        client = make_http_client(64)  # unused by echo; the daemon builds one
        agents = build_agents(config, store=store, tools=default_tool_registry(),
                              client=client, locks=NamespaceLocks(), metrics=metrics)
        router = Router(agents, ledger=Ledger(db), max_concurrency=64, metrics=metrics)
        namespaces = [Namespace.parse(f"webhook:hooks:ns{i}") for i in range(NAMESPACES)]

        async def sender(index: int, count: int, tag: str) -> None:
            for k in range(count):
                namespace = namespaces[(index + k * concurrency) % NAMESPACES]
                await router.call(InboundMessage(namespace, Message.user(f"bench {index}/{k}"),
                                                 delivery_id=f"{tag}-{index}-{k}"),
                                  source="hooks")

        async def phase(total: int, tag: str) -> None:
            async with trio.open_nursery() as nursery:
                for index in range(concurrency):
                    nursery.start_soon(sender, index, total // concurrency, tag)

        async with trio.open_nursery() as nursery:
            await nursery.start(router.serve)
            await phase(warmup, "warm")
            gc.freeze()  # as `orrad run` does once started
            gc.set_threshold(*GC_THRESHOLDS)
            measured = messages // concurrency * concurrency
            started, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
            await phase(measured, "run")
            wall = time.perf_counter() - started
            cpu, loop = time.process_time() - cpu, time.thread_time() - loop
            nursery.cancel_scope.cancel()
        await client.aclose()
        await db.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"messages": measured, "concurrency": concurrency, "wall_s": round(wall, 3),
            "messages_per_s": round(measured / wall, 1),
            "cpu_us_per_message": round(cpu / measured * 1e6, 1),
            "loop_cpu_us_per_message": round(loop / measured * 1e6, 1)}


def _callgrind_total(messages: int, warmup: int, concurrency: int) -> int:
    """Instructions of one whole run of this script under callgrind."""
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
            __file__, "--messages", str(messages), "--warmup", str(warmup),
            "--concurrency", str(concurrency)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed: {done.stderr[-2000:]}")
    return int(found.group(1))


def instructions(messages: int, warmup: int, concurrency: int) -> dict[str, Any]:
    """Instructions per message: the slope between two runs (start-up cancels out). The
    two runs are independent, so they run side by side."""
    if shutil.which("valgrind") is None:
        raise RuntimeError("--instructions needs valgrind (apt-get install valgrind)")
    counts = (messages, 3 * messages)
    with ThreadPoolExecutor(max_workers=2) as pool:
        small, large = pool.map(lambda count: _callgrind_total(count, warmup, concurrency),
                                counts)
    measured = [count // concurrency * concurrency for count in counts]
    per_message = (large - small) / (measured[1] - measured[0])
    return {"instructions_per_message": round(per_message),
            "runs": {str(measured[0]): small, str(measured[1]): large},
            "concurrency": concurrency, "warmup": warmup}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=None,
                        help="messages measured (default 6000; 640 with --instructions)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="messages sent first, not measured (default 2000; 320 with "
                             "--instructions)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under callgrind instead of timing")
    opts = parser.parse_args(argv)
    if opts.instructions:
        messages = opts.messages or 640
        warmup = 320 if opts.warmup is None else opts.warmup
        return report_main(lambda: (instructions(messages, warmup, opts.concurrency), True))
    messages = opts.messages or 6000
    warmup = 2000 if opts.warmup is None else opts.warmup
    return report_main(lambda: (trio.run(measure, messages, warmup, opts.concurrency), True))


if __name__ == "__main__":
    raise SystemExit(main())
