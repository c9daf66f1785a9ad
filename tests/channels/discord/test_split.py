"""Splitting answers into Discord-sized chunks with balanced code fences."""

from __future__ import annotations

import itertools

import pytest

from orrad.channels.discord.split import DISCORD_LIMIT, split_message
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
