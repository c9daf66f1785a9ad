"""The decoded-ranks cache: used when intact, rebuilt from the source when damaged, never
trusted for a file other than the one its name's hash stands for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiktoken.load
import tiktoken.registry

import orrad.runtime.tokenizer as tokenizer_module
from orrad.runtime.ranks import cached_ranks, entry_path
from orrad.runtime.tokenizer import TiktokenTokenizer, load_tokenizer

SHA = "ab" * 32
RANKS = {b"a": 0, b"b": 1, b"ab": 2}


class Source:
    """A stand-in for ``load_tiktoken_bpe`` that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, path: str, expected_hash: str | None = None) -> dict[bytes, int]:
        self.calls.append((path, expected_hash))
        return dict(RANKS)


def test_the_second_load_reads_the_entry_not_the_source(tmp_path: Path) -> None:
    source = Source()
    load = cached_ranks(source, str(tmp_path))
    assert load("file.tiktoken", SHA) == RANKS
    assert load("file.tiktoken", SHA) == RANKS
    assert len(source.calls) == 1
    assert Path(entry_path(str(tmp_path), SHA)).is_file()


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_entry_is_rebuilt_from_the_source(tmp_path: Path, damage: str) -> None:
    source = Source()
    cached_ranks(source, str(tmp_path))("file.tiktoken", SHA)
    entry = Path(entry_path(str(tmp_path), SHA))
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-1] ^= 0xFF
    elif damage == "truncate":
        del data[len(data) // 2:]
    else:
        data.clear()
    entry.write_bytes(bytes(data))
    assert cached_ranks(source, str(tmp_path))("file.tiktoken", SHA) == RANKS
    assert len(source.calls) == 2
    assert cached_ranks(source, str(tmp_path))("file.tiktoken", SHA) == RANKS
    assert len(source.calls) == 2  # written again, whole


def test_without_an_expected_hash_or_a_folder_nothing_is_cached(tmp_path: Path) -> None:
    source = Source()
    cached_ranks(source, str(tmp_path))("file.tiktoken", None)
    cached_ranks(source, "")("file.tiktoken", SHA)
    assert len(source.calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_written_only_costs_the_parse(tmp_path: Path) -> None:
    source = Source()
    missing = str(tmp_path / "not-there")
    assert cached_ranks(source, missing)("file.tiktoken", SHA) == RANKS
    assert cached_ranks(source, missing)("file.tiktoken", SHA) == RANKS
    assert len(source.calls) == 2


def test_cl100k_writes_its_entry_and_the_next_start_never_parses_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    # As in a new process: tiktoken keeps every encoding it built (earlier tests').
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    first = load_tokenizer("cl100k_base")
    assert isinstance(first, TiktokenTokenizer)
    entries = list(tmp_path.glob("orrad-ranks-*.msgpack"))
    assert len(entries) == 1
    # A new process: nothing loaded yet, in orrad or in tiktoken's registry.
    monkeypatch.setattr(tokenizer_module, "_loaded", {})
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_source_read(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("the .tiktoken file was read again")

    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_source_read)
    second = load_tokenizer("cl100k_base")
    assert second is not first
    for text in ("hello world", "<|endoftext|>", "naïve café 東京 🙂"):
        assert second.count(text) == first.count(text)
