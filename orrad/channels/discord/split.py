"""Splitting a long answer into Discord messages of at most 2000 code points.

Discord counts message length in Unicode code points (Python's ``len``), and rejects
longer content with 400/50035. :func:`split_message` cuts a text into chunks that each fit,
preferring line boundaries, then word boundaries, and only as a last resort cutting a single
over-long word: then on a grapheme cluster boundary (never between a letter and its
combining marks, inside an emoji ZWJ sequence, a flag or a keycap), and never inside a run
of backticks.

Code fences stay balanced: when a cut falls inside a ```` ``` ```` block, the chunk is
closed with ```` ``` ```` and the next chunk reopens the block with the same language tag,
so every chunk renders as the author meant it. Whitespace-only chunks are never produced
(Discord answers an empty message with 400/50006); whitespace that does not fit at a cut,
and blank lines at the start of a chunk, are dropped.

At most ``max_chunks`` chunks come back: a longer text ends with a truncation notice
instead, and the work done is bounded by what is returned (a multi-megabyte answer is not
split to the end only to be thrown away).
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from typing import Any

__all__ = ["DISCORD_LIMIT", "MAX_CHUNKS", "TRUNCATED", "split_message"]

DISCORD_LIMIT = 2000
MAX_CHUNKS = 10
TRUNCATED = "… (answer truncated: too long for Discord)"
FENCE = "```"
# A language tag longer than this is not reopened verbatim: it would eat into the budget of
# every following chunk, and no real highlighter name is that long.
MAX_LANG = 16
_LANG_RE = re.compile(r"[A-Za-z0-9_+#.\-]*")
_WORD_RE = re.compile(r"\S+\s*|\s+")
_SPACE_RE = re.compile(r"\s*")
# The line boundaries of ``str.splitlines``.
_EOL_CHARS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_EOL_RE = re.compile(r"\r\n|[" + _EOL_CHARS + "]")
_ZWJ = "\u200d"

# Extended grapheme clusters (UAX #29) from the ``regex`` module, which orrad has through
# tiktoken; without it, a conservative rule of our own (see :func:`_joins`).
try:
    _GRAPHEME: Any = importlib.import_module("regex").compile(r"\X")
except ImportError:  # pragma: no cover - regex comes with tiktoken
    _GRAPHEME = None

# Pieces of the text waiting to be placed: a line (tried whole, then word by word), a run of
# words (taken one word at a time) or a single word (hard-cut when it fits nowhere).
_LINE, _WORDS, _WORD = 0, 1, 2


def _fence_after(fence: str | None, piece: str) -> str | None:
    """The open fence's language after ``piece`` (``None`` when no fence is open).

    An odd number of ```` ``` ```` in ``piece`` toggles the state; ```` ```a``` ```` on one
    line opens and closes, leaving it unchanged.
    """
    count = piece.count(FENCE)
    if count % 2 == 0:
        return fence
    if fence is not None:
        return None
    tail = piece[piece.rfind(FENCE) + len(FENCE):]
    match = _LANG_RE.match(tail)
    lang = match.group() if match else ""
    return lang if len(lang) <= MAX_LANG else ""


def _closing(ends_clean: bool, fence: str | None) -> str:
    """What ends a chunk whose fence ``fence`` is still open; ``ends_clean``: the chunk is
    empty or ends with a newline."""
    if fence is None:
        return ""
    return FENCE if ends_clean else "\n" + FENCE


def _reopen(fence: str | None) -> str:
    return "" if fence is None else f"{FENCE}{fence}\n"


def _is_regional(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def _joins(prev: str, nxt: str) -> bool:
    """Conservative "no grapheme boundary between ``prev`` and ``nxt``", used without the
    ``regex`` module (regional indicator pairs are handled by the caller)."""
    code = ord(nxt)
    return (unicodedata.category(nxt) in ("Mn", "Mc", "Me") or nxt == _ZWJ or prev == _ZWJ
            or 0xFE00 <= code <= 0xFE0F or 0xE0100 <= code <= 0xE01EF  # variation selectors
            or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
            or 0x1F3FB <= code <= 0x1F3FF)  # skin-tone modifiers


def _boundaries(window: str) -> list[int]:
    """Grapheme cluster boundaries inside ``window`` (0 < b < len(window)), ascending.

    A boundary is decided by the text before it and the character after it, so one found
    in a prefix of a word is a boundary of the whole word.
    """
    if _GRAPHEME is not None:
        bounds: list[int] = []
        pos = 0
        for cluster in _GRAPHEME.findall(window):
            pos += len(cluster)
            bounds.append(pos)
        return bounds[:-1]
    bounds = []
    regional = 1 if window and _is_regional(window[0]) else 0  # length of the current run
    for i in range(1, len(window)):
        prev, nxt = window[i - 1], window[i]
        pair = _is_regional(nxt) and regional % 2 == 1  # flags pair up from a run's start
        regional = regional + 1 if _is_regional(nxt) else 0
        if not pair and not _joins(prev, nxt):
            bounds.append(i)
    return bounds


def _safe_cut(word: str, room: int) -> int:
    """Where to hard-cut ``word`` (a prefix of it is enough: at least ``room + 1`` code
    points) so the first part has at most ``room`` code points: the last grapheme boundary
    that is not inside a run of backticks, else the last grapheme boundary, else ``room``."""
    room = max(1, min(room, len(word) - 1))
    bounds = [b for b in _boundaries(word[: room + 1]) if b <= room]
    for b in reversed(bounds):
        if not (word[b - 1] == "`" and word[b] == "`"):
            return b
    # One cluster longer than a message, or nothing but backticks: any cut beats no progress.
    return bounds[-1] if bounds else room


def _line_end(text: str, pos: int, limit: int) -> int:
    """Where the line starting at ``pos`` ends (after its line break)."""
    eol = _EOL_RE.search(text, pos, pos + limit + 2)
    if eol is not None:
        return eol.end()
    # A line longer than a message: ``str.find`` per separator beats the regex by far on
    # a multi-megabyte line, and only such lines get here.
    found = [i for sep in _EOL_CHARS if (i := text.find(sep, pos)) != -1]
    if not found:
        return len(text)
    first = min(found)
    return first + 2 if text.startswith("\r\n", first) else first + 1


def _skip_blank_lines(text: str, pos: int) -> int:
    """Where the blank lines starting at ``pos`` end (``pos`` when there are none)."""
    spaces = _SPACE_RE.match(text, pos)
    run_end = spaces.end() if spaces is not None else pos
    if run_end == pos:
        return pos
    last = max(text.rfind(sep, pos, run_end) for sep in _EOL_CHARS)
    return pos if last < 0 else last + 1


def split_message(text: str, limit: int = DISCORD_LIMIT, *,
                  max_chunks: int | None = MAX_CHUNKS, notice: str = TRUNCATED) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` code points, fences balanced.

    Returns ``[]`` for an empty or whitespace-only text. Concatenating the chunks, minus the
    fence lines added at the cuts, gives back ``text`` (whitespace-only stretches at a cut
    may be dropped). When the text needs more than ``max_chunks`` chunks (``None``: no
    limit), the first ``max_chunks - 1`` are returned followed by ``notice``.
    """
    if limit < 2 * (len(FENCE) + MAX_LANG + 2):
        raise ValueError(f"limit {limit} is too small to keep code fences balanced")
    if max_chunks is not None and (max_chunks < 1 or len(notice) > limit):
        raise ValueError("max_chunks must be at least 1 and the notice fit in a chunk")
    stop = None if max_chunks is None else max_chunks + 1  # one more tells "too long"
    chunks: list[str] = []
    parts: list[str] = []  # the chunk being built
    length = 0
    prefix = 0  # length of the reopened fence at the start of the chunk
    content = False  # the chunk has more than whitespace after the prefix
    ends_clean = True  # the chunk is empty or ends with a newline
    fence: str | None = None
    pos, end_of_text = 0, len(text)
    pending: list[tuple[int, int, int]] = []  # (start, end, kind), next one last

    def start_chunk(new_fence: str | None) -> None:
        nonlocal parts, length, prefix, content, ends_clean, fence
        fence = new_fence
        opening = _reopen(fence)
        parts = [opening] if opening else []
        length = prefix = len(opening)
        content = False
        ends_clean = True

    def finish_chunk() -> None:
        # A block still open here is closed, so every chunk is balanced on its own (this
        # also closes a block the text itself never closed).
        if content:
            chunks.append("".join(parts) + _closing(ends_clean, fence))

    while stop is None or len(chunks) < stop:
        if pending:
            start, end, kind = pending.pop()
        elif pos < end_of_text:
            if not content:
                # Blank lines at the start of a chunk show nothing (Discord trims them):
                # skipped in one go, however many there are.
                skipped = _skip_blank_lines(text, pos)
                if skipped > pos:
                    pos = skipped
                    continue
            start, end, kind = pos, _line_end(text, pos, limit), _LINE
            pos = end
        else:
            break
        if kind == _WORDS:
            word = _WORD_RE.match(text, start, end)
            assert word is not None  # \S+\s*|\s+ matches any non-empty text
            if word.end() < end:
                pending.append((word.end(), end, _WORDS))
            end, kind = word.end(), _WORD
        size = end - start
        # Only a piece that can fit is copied: a megabyte-long word is never sliced whole.
        piece = text[start:end] if size <= limit else None
        after = fence if piece is None else _fence_after(fence, piece)
        if piece is not None and length + size <= limit:
            clean = piece.endswith("\n")
            if length + size + len(_closing(clean, after)) <= limit:
                parts.append(piece)
                length += size
                fence, ends_clean = after, clean
                content = content or not piece.isspace()
                continue
        if piece is not None:
            blank = piece.isspace()
        else:
            spaces = _SPACE_RE.match(text, start, end)
            blank = spaces is not None and spaces.end() == end
        if content:
            finish_chunk()
            if (piece is not None and fence is not None and after is None
                    and piece.strip() == FENCE):
                # The block's own closing line does not fit; the closing added at the cut
                # stands in for it, instead of opening an empty block in the next chunk.
                start_chunk(None)
                continue
            start_chunk(fence)
            if not blank:
                pending.append((start, end, kind))  # again, in the new chunk
            continue
        if length > prefix:
            # Only whitespace so far: drop it and try the piece in an emptied chunk.
            start_chunk(fence)
            pending.append((start, end, kind))
            continue
        if blank:
            continue  # whitespace that does not fit even in an empty chunk: dropped
        # ``piece`` does not fit even in a fresh chunk: break it into smaller pieces.
        if kind == _LINE:
            pending.append((start, end, _WORDS))
            continue
        room = limit - length - len("\n" + FENCE)
        cut = _safe_cut(text[start: start + max(room, 1) + 1], room)
        pending.append((start + cut, end, _WORD))
        pending.append((start, start + cut, _WORD))
    if stop is None or len(chunks) < stop:
        finish_chunk()
    if max_chunks is not None and len(chunks) > max_chunks:
        return [*chunks[: max_chunks - 1], notice]
    return chunks
