"""The ``orrad`` console script: :func:`orrad.cli.main`, with Ctrl-C during start-up (while
the command line's modules are still being imported) ending quietly with 130 as well."""

from __future__ import annotations

__all__ = ["main"]


def main() -> int:
    try:
        from orrad.cli import main as cli_main
    except KeyboardInterrupt:
        return 130
    return cli_main()
