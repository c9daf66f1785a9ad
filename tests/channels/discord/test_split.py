"""Splitting answers into Discord-sized chunks with balanced code fences."""

from __future__ import annotations

import itertools
import time

import pytest

from orrad.channels.discord.split import DISCORD_LIMIT, MAX_CHUNKS, TRUNCATED, split_message
from tests.channels.discord.harness import balanced, strip_fences


def long_answer() -> str:
    """About 4,500 characters: prose, a Python block crossing a cut, a shell block."""
    intro = "".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 5 + "\n\n"
                    for i in range(12))
    code = "```python\n" + "".join(f"value_{i} = compute({i})  # step {i}\n"
                                   for i in range(70)) + "```\n"
    outro = "Then run:\n```sh\n" + "make test\n" * 40 + "```\nDone.\n"
    text = intro + code + outro
    assert 4300 <= len(text) <= 4700
    return text


def test_short_text_is_one_chunk() -> None:
    assert split_message("hello") == ["hello"]


def test_empty_and_whitespace_give_no_chunk() -> None:
    assert split_message("") == []
    assert split_message("  \n\t\n ") == []


def test_4500_chars_with_code_blocks() -> None:
    text = long_answer()
    chunks = split_message(text)
    assert len(chunks) == 3
    assert all(0 < len(c) <= DISCORD_LIMIT for c in chunks)
    assert all(c.strip() for c in chunks)
    assert all(balanced(c) for c in chunks)
    # The Python block crosses the first cut: closed there, reopened with its language.
    assert chunks[0].rstrip().endswith("```")
    assert chunks[1].startswith("```python\n")
    # Nothing lost or repeated, apart from the fences added at the cuts.
    assert strip_fences("".join(chunks)) == strip_fences(text)
    # Cuts fall on line boundaries when lines are short.
    for chunk in chunks[:-1]:
        assert chunk.endswith(("\n", "```"))


def test_counts_code_points_not_bytes() -> None:
    # 4-byte emoji and 2-byte letters: 2,000 code points is far more than 2,000 bytes.
    line = "é🙂" * 950  # 1,900 code points, 5,700 bytes of UTF-8
    text = f"{line}\n{line}"
    chunks = split_message(text)
    assert chunks == [line + "\n", line]


def test_single_overlong_token_is_hard_split() -> None:
    word = "x" * 4500
    chunks = split_message(word)
    assert [len(c) for c in chunks] == [1996, 1996, 508]
    assert "".join(chunks) == word


def test_words_before_hard_cuts() -> None:
    text = " ".join(["word"] * 1000)  # one 4,999-character line
    chunks = split_message(text)
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    assert "".join(chunks) == text
    assert all(not c.startswith("ord") for c in chunks)  # cut between words


def test_hard_cut_keeps_combining_marks_and_zwj_sequences() -> None:
    family = "👨\u200d👩\u200d👧"
    text = ("e\u0301" * 1500) + family * 300
    chunks = split_message(text.replace(" ", ""))
    assert "".join(chunks) == text
    for left, right in itertools.pairwise(chunks):
        assert right[0] != "\u0301" and right[0] != "\u200d" and left[-1] != "\u200d"


def test_mentions_and_urls_are_not_cut() -> None:
    token = "<@123456789012345678>"
    url = "https://example.com/" + "a" * 40
    text = " ".join([token, url] * 120)
    chunks = split_message(text)
    for chunk in chunks:
        for word in chunk.split():
            assert word in (token, url)


def test_closing_fence_that_does_not_fit_is_not_reopened_empty() -> None:
    body = "a" * 1990 + "\n"
    chunks = split_message("```\n" + body + "```\nafter")
    assert all(balanced(c) for c in chunks)
    assert not any(c.strip() in ("```\n```", "``````") for c in chunks)
    assert chunks[-1].strip() == "after"


def test_unclosed_fence_is_closed_at_the_end() -> None:
    chunks = split_message("```js\nlet x = 1;\n" + "x++;\n" * 600)
    assert len(chunks) >= 2
    assert all(balanced(c) for c in chunks)
    assert all(c.startswith("```js\n") for c in chunks)


def test_inline_fences_on_one_line_do_not_toggle() -> None:
    line = "use ```x``` here\n"
    chunks = split_message(line * 300)
    assert all(balanced(c) for c in chunks)
    assert not any(c.startswith("```\n") for c in chunks)


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        split_message("x", limit=10)


# -- review fixes -------------------------------------------------------------------------


@pytest.mark.parametrize("newlines", [1999, 2000, 2001, 5000])
def test_long_run_of_blank_lines_before_text(newlines: int) -> None:
    # 2,000 newlines used to leave no room for the word after them (IndexError).
    assert split_message("\n" * newlines + "Here is the answer.") == ["Here is the answer."]
    chunks = split_message("```py\n" + "\n" * newlines + "x = 1\n```")
    assert all(len(c) <= DISCORD_LIMIT and balanced(c) and c.strip() for c in chunks)
    assert "x = 1" in chunks[-1]


def test_whitespace_that_does_not_fit_is_dropped_at_the_cut() -> None:
    text = "a" * 1990 + " " * 3000 + "b"
    assert [c.rstrip() for c in split_message(text)] == ["a" * 1990, "b"]
    assert split_message(" " * 3000 + "\t" * 3000) == []
    assert split_message("\n \n" * 3000) == []
    text = "first\n" + "\n" * 3000 + "second"
    assert [c.strip() for c in split_message(text)] == ["first", "second"]


def _graphemes(text: str) -> list[str]:
    import regex  # type: ignore[import-untyped]  # tiktoken's dependency

    return list(regex.findall(r"\X", text))


GRAPHEME_TEXTS = {
    "thai": "\u0e01\u0e31" * 1500,  # KO KAI + MAI HAN-AKAT (Mn)
    "devanagari": "\u0915\u093f" * 1500,  # KA + VOWEL SIGN I (Mc)
    "hangul jamo": "\u1100\u1161" * 1500,  # L + V jamo
    "flags": "\U0001f1fa\U0001f1f8" * 1001,  # regional indicator pairs
    "keycap": "1\ufe0f\u20e3" * 700,  # digit, VS16, COMBINING ENCLOSING KEYCAP (Me)
    "tag flag": "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f" * 300,
    "family": "👨\u200d👩\u200d👧" * 450,
    "skin tone": "👍🏽" * 1100,
}


@pytest.mark.parametrize("name", list(GRAPHEME_TEXTS))
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_hard_cuts_fall_on_grapheme_boundaries(name: str, offset: int) -> None:
    text = "a" * offset + GRAPHEME_TEXTS[name]
    chunks = split_message(text)
    assert len(chunks) >= 2 and "".join(chunks) == text
    assert all(len(c) <= DISCORD_LIMIT for c in chunks)
    assert [g for c in chunks for g in _graphemes(c)] == _graphemes(text)


@pytest.mark.parametrize("name", list(GRAPHEME_TEXTS))
def test_conservative_boundaries_without_the_regex_module(
    name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orrad.channels.discord import split

    monkeypatch.setattr(split, "_GRAPHEME", None)
    text = "a" + GRAPHEME_TEXTS[name]
    chunks = split_message(text)
    assert "".join(chunks) == text
    if name != "hangul jamo":  # the conservative rule does not know jamo
        assert [g for c in chunks for g in _graphemes(c)] == _graphemes(text)


def test_backtick_runs_are_not_cut() -> None:
    text = "x" * 1995 + "``" + "y" * 10
    assert split_message(text) == ["x" * 1995, "``" + "y" * 10]


@pytest.mark.parametrize("text", [
    "x" * 4_000_000,
    "ab " * 1_400_000,
    "word\n" * 800_000,
    "\n" * 4_000_000 + "end",
    "🙂" * 2_000_000,
])
def test_huge_answers_stop_at_max_chunks_quickly(text: str) -> None:
    started = time.perf_counter()
    chunks = split_message(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"{elapsed:.2f}s"
    if text.strip() == "end":
        assert chunks == ["end"]
        return
    assert len(chunks) == MAX_CHUNKS and chunks[-1] == TRUNCATED
    assert all(0 < len(c) <= DISCORD_LIMIT for c in chunks)
    # The chunks sent are the ones an unlimited split starts with.
    assert "".join(chunks[:-1]) == text[: sum(len(c) for c in chunks[:-1])]


def test_max_chunks_keeps_the_first_chunks_and_adds_the_notice() -> None:
    text = long_answer()
    full = split_message(text, max_chunks=None)
    assert len(full) == 3
    assert split_message(text, max_chunks=3) == full
    assert split_message(text, max_chunks=2) == [full[0], TRUNCATED]
    assert split_message(text, max_chunks=2, notice="(more)") == [full[0], "(more)"]
