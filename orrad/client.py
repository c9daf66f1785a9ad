"""``orrad status``, ``reload``, ``send`` and the API half of ``sessions delete``: small
clients of the running daemon's API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from orrad.config import DaemonConfig
from orrad.errors import DaemonError
from orrad.model import Namespace
from orrad.timefmt import utc_iso

__all__ = [
    "DaemonAnswered",
    "DaemonUnreachable",
    "cmd_reload",
    "cmd_send",
    "cmd_status",
    "delete_session",
    "render_status",
]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 78

CLEAR_SCREEN = "\x1b[H\x1b[2J"


class DaemonUnreachable(DaemonError):
    """No answer at all: nothing listens there, the connection failed or timed out."""


class DaemonAnswered(DaemonError):
    """The daemon answered with an HTTP error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _base_url(config: DaemonConfig) -> str:
    listen = config.api.listen
    if not listen:
        raise DaemonError("the daemon API is disabled (api.listen is empty)")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _request(config: DaemonConfig, method: str, path: str, *, body: Any = None,
             timeout: float = 30.0) -> Any:
    headers = {"Authorization": f"Bearer {config.api.token}"} if config.api.token else {}
    url = _base_url(config) + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DaemonUnreachable(f"cannot reach the daemon at {url}: {exc}") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        if response.status_code == 422 or not isinstance(error, dict):
            raise DaemonAnswered(f"daemon answered HTTP {response.status_code}",
                                 response.status_code)
        raise DaemonAnswered(
            f"daemon answered {response.status_code} {error.get('code', '')}: "
            f"{error.get('message', response.text)}",
            response.status_code,
        )
    return payload


def cmd_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    if args.watch is None:
        status = _request(config, "GET", "/v1/status")
        sys.stdout.write(json.dumps(status, indent=2) + "\n" if args.json
                         else render_status(status))
        return EXIT_OK
    return _watch_status(args, config)


def _watch_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    """Redraw the status every ``args.watch`` seconds until Ctrl-C (or ``args.count`` times).

    On a terminal each redraw clears the screen; into a pipe or a file the blocks follow
    each other, separated by a blank line (with ``--json``: one JSON document per block, a
    stream ``jq`` reads). A daemon that cannot be reached is shown, not fatal: watching
    often waits for one to come back. Ctrl-C ends it (the CLI exits 130).
    """
    interval: float = args.watch
    terminal = sys.stdout.isatty()
    shown = 0
    code = EXIT_OK
    next_at = time.monotonic()
    while True:
        try:
            status = _request(config, "GET", "/v1/status", timeout=max(5.0, interval))
        except DaemonError as exc:
            code = EXIT_FAILURE
            if args.json:
                print(f"orrad: {exc}", file=sys.stderr)
                text = ""
            else:
                text = f"orrad: {exc}\n"
        else:
            code = EXIT_OK
            text = json.dumps(status, indent=2) + "\n" if args.json else render_status(status)
        if not args.json:
            text = f"every {interval:g}s: orrad status    {utc_iso()}\n\n{text}"
        if text:
            if terminal:
                text = CLEAR_SCREEN + text
            elif shown:
                text = "\n" + text
            sys.stdout.write(text)
            sys.stdout.flush()
        shown += 1
        if args.count is not None and shown >= args.count:
            return code
        next_at += interval
        now = time.monotonic()
        if next_at < now:  # a slow answer: start the next interval now, don't catch up
            next_at = now
        time.sleep(next_at - now)


def render_status(status: dict[str, Any]) -> str:
    """The human view of ``/v1/status``: a header line, channels, peers, agents."""
    lines = [f"instance {status['instance']}  version {status['version']}  "
             f"up {status['uptime_s']:.0f}s"]
    rows = [("CHANNEL", "KIND", "STATE", "GEN", "RESTARTS", "SINCE", "LAST ERROR")]
    for ch in status.get("channels", []):
        since = ch.get("since")
        rows.append((ch["name"], ch["kind"], ch["state"], str(ch["generation"]),
                     str(ch["restarts"]), utc_iso(since) if since else "-",
                     (ch.get("last_error") or "")[:60]))
    lines += _table(rows)
    if status.get("peers"):
        lines.append("")
        lines += _table([("PEER", "URL", "STATE", "QUEUE", "LAST ERROR")] + [
            (p["name"], p["url"], p["state"], str(p.get("queue_depth", 0)),
             (p.get("last_error") or "")[:60]) for p in status["peers"]])
    lines.append("")
    lines += _table([("AGENT", "PROVIDER", "MODEL")] + [
        (a["name"], a["provider"], a.get("model") or "-") for a in status.get("agents", [])])
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            .rstrip() for row in rows]


def cmd_reload(args: argparse.Namespace, config: DaemonConfig) -> int:
    result = _request(config, "POST", "/v1/reload")
    rejected = False
    for item in result.get("files", []):
        line = f"{item['result']:<10} {item['file']}"
        for extra in (item.get("error"), item.get("note")):
            if extra:
                line += f"\n  {extra}"
        rejected = rejected or item["result"] == "rejected"
        print(line)
    return EXIT_CONFIG if rejected else EXIT_OK


def cmd_send(args: argparse.Namespace, config: DaemonConfig) -> int:
    body: dict[str, Any] = {"message": args.text}
    if args.namespace:
        body["namespace"] = Namespace.parse(args.namespace).key  # a bad one is a usage error
    if args.agent:
        body["agent"] = args.agent
    try:
        reply = _request(config, "POST", "/v1/messages", body=body, timeout=600)
    except DaemonError as exc:
        print(f"orrad: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("orrad: interrupted; the daemon may still answer and store the reply",
              file=sys.stderr)
        raise
    print(reply["message"])
    return EXIT_OK


def delete_session(config: DaemonConfig, namespace: Namespace) -> bool:
    """Clear ``namespace`` through the daemon's API; False when it has no such session.

    Raises:
        DaemonUnreachable: no daemon answered (the caller may then act on the store).
        DaemonError: the API is disabled, or the daemon answered another error.
    """
    try:
        _request(config, "DELETE", "/v1/sessions/" + quote(namespace.key, safe=":"))
    except DaemonAnswered as exc:
        if exc.status == 404:
            return False
        raise
    return True
