"""What every benchmark script's ``main()`` shares: the ``--workdir`` option, logging,
stopping cleanly on SIGTERM, and printing the JSON report."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_workdir", "report_main", "setup"]

log = logging.getLogger("bench")


def add_workdir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=None,
                        help="a new folder to keep configs, state and logs in (default: a "
                             "temporary folder, removed afterwards)")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: children get stopped


def setup() -> None:
    """Log to stderr (stdout is the report's) and turn SIGTERM into a clean unwinding."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _terminate)


def report_main(run: Callable[[], tuple[dict[str, Any], bool]]) -> int:
    """:func:`setup`, ``run()``, print its report as JSON: 0 when it went well, 1 when not,
    130 on Ctrl-C."""
    setup()
    try:
        report, ok = run()
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if ok else 1
