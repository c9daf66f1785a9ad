"""Operator edges of ``orrad check``/``run``: a missing channels_dir is said out loud, and
``check`` says which values came from the caller's own environment (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.test_cli import SCRIPT, orrad


def test_check_warns_about_a_missing_channels_dir(tmp_path: Path) -> None:
    done = orrad("check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"warning: channels_dir {tmp_path / 'channels.d'} does not exist" in done.stderr


def test_run_says_that_channels_dir_is_missing(tmp_path: Path) -> None:
    (tmp_path / "orrad.yaml").write_text("channels_dir: nowhere\napi:\n  listen: ''\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    with subprocess.Popen([str(SCRIPT), "run"], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        try:
            for line in process.stderr:  # bounded: the line comes at start-up
                if "does not exist" in line:
                    assert f"channels_dir {tmp_path / 'nowhere'} does not exist" in line
                    break
            else:
                raise AssertionError("no line about the missing channels_dir")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0


def test_check_names_variables_taken_from_this_shell(tmp_path: Path) -> None:
    (tmp_path / "channels.d").mkdir()
    (tmp_path / "channels.d" / "hook.yaml").write_text(
        "kind: webhook\nlisten: 127.0.0.1:0\nauth:\n  bearer_token: ${HOOK_TOKEN}\n")
    (tmp_path / "orrad.yaml").write_text(
        "instance: ${HOST_LABEL:-box}\nstate_dir: $${literal}\n")
    done = orrad("check", cwd=tmp_path, env={"HOOK_TOKEN": "s3cret", "HOST_LABEL": "alpha"})
    assert done.returncode == 0, done.stderr
    assert "hook.yaml uses ${HOOK_TOKEN} from this shell's environment" in done.stderr
    assert "orrad.yaml uses ${HOST_LABEL} from this shell's environment" in done.stderr
    assert "literal" not in done.stderr and "s3cret" not in done.stderr
    quiet = orrad("check", cwd=tmp_path, env={"HOOK_TOKEN": "s3cret"})
    assert "HOST_LABEL" not in quiet.stderr  # unset here: the default applies, nothing to say
