"""What a start costs: the shipped configuration imports no module it does not use.

httpx (with its models, and its command-line module when click and rich are installed)
was a tenth of a start, trio-websocket and wsproto (the Discord kind) another; neither is
needed by a daemon with a webhook channel and no federation. The daemon runs in a child
process (this one has imported both long ago) and answers one request before it looks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench import ready

CHILD = r"""
import json, os, secrets, signal, socket, sys, threading, urllib.request
from pathlib import Path

root = Path(sys.argv[1])
token = secrets.token_urlsafe(24)
os.environ.update(NOTIFY_SOCKET=str(root / "notify.sock"), STATE_DIRECTORY=str(root / "state"),
                  HOOKS_TOKEN=token)
receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
receiver.bind(os.environ["NOTIFY_SOCKET"])
hook_port = int(sys.argv[2])
seen = {}

def watch() -> None:
    while b"READY=1" not in receiver.recv(4096):
        pass
    seen["at_ready"] = sorted(m for m in WATCHED if m in sys.modules)
    request = urllib.request.Request(
        f"http://127.0.0.1:{hook_port}/hook", method="POST",
        data=json.dumps({"id": "one", "namespace": "t", "message": "hi"}).encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        seen["status"] = answer.status
    seen["after_request"] = sorted(m for m in WATCHED if m in sys.modules)
    os.kill(os.getpid(), signal.SIGTERM)

WATCHED = ("httpx", "httpcore", "trio_websocket", "wsproto", "orrad.peering",
           "orrad.channels.discord")
threading.Thread(target=watch, daemon=True).start()
from orrad.cli import main
code = main(["run", "-c", str(root / "orrad.yaml")])
print(json.dumps({"exit": code, **seen}))
"""


def test_the_shipped_config_starts_and_answers_without_httpx_or_discord(tmp_path: Path) -> None:
    ready.write_shipped_config(tmp_path)
    channel = (tmp_path / "channels.d" / "hooks.yaml").read_text()
    listen = ready.LISTEN_LINE.search(channel)
    assert listen is not None
    hook_port = int(listen.group(0).rsplit(":", 1)[1])
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(hook_port)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"exit": 0, "at_ready": [], "status": 200, "after_request": []}, \
        done.stderr[-3000:]
