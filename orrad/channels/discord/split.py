"""Splitting a long answer into Discord messages of at most 2000 code points.

Discord counts message length in Unicode code points (Python's ``len``), and rejects
longer content with 400/50035. :func:`split_message` cuts a text into chunks that each fit,
preferring line boundaries, then word boundaries, and only as a last resort cutting a single
over-long word (never in the middle of a grapheme built with a combining mark, a variation
selector or a zero-width joiner, and never inside a run of backticks).

Code fences stay balanced: when a cut falls inside a ```` ``` ```` block, the chunk is
closed with ```` ``` ```` and the next chunk reopens the block with the same language tag,
so every chunk renders as the author meant it. Whitespace-only chunks are never produced
(Discord answers an empty message with 400/50006).
"""

from __future__ import annotations

import re
import unicodedata
from collections import deque

__all__ = ["DISCORD_LIMIT", "split_message"]

DISCORD_LIMIT = 2000
FENCE = "```"
# A language tag longer than this is not reopened verbatim: it would eat into the budget of
# every following chunk, and no real highlighter name is that long.
MAX_LANG = 16
_LANG_RE = re.compile(r"[A-Za-z0-9_+#.\-]*")
_WORD_RE = re.compile(r"\S+\s*|\s+")
_ZWJ = "\u200d"


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


def _closing(text: str, fence: str | None) -> str:
    """What ends a chunk ``text`` whose fence ``fence`` is still open."""
    if fence is None:
        return ""
    return FENCE if text.endswith("\n") or not text else "\n" + FENCE


def _reopen(fence: str | None) -> str:
    return "" if fence is None else f"{FENCE}{fence}\n"


def _safe_cut(word: str, room: int) -> int:
    """Where to hard-cut ``word`` so the first part has at most ``room`` code points."""
    cut = max(1, min(room, len(word) - 1))
    start = cut

    def bad(i: int) -> bool:
        nxt, prev = word[i], word[i - 1]
        joins = (
            unicodedata.combining(nxt) != 0
            or nxt == _ZWJ
            or prev == _ZWJ
            or 0xFE00 <= ord(nxt) <= 0xFE0F  # variation selectors
            or 0x1F3FB <= ord(nxt) <= 0x1F3FF  # skin-tone modifiers
        )
        return joins or (nxt == "`" and prev == "`")

    while cut > 1 and bad(cut):
        cut -= 1
    # A word made only of joiners or backticks has no good cut; any cut beats no progress.
    return cut if cut > 1 or not bad(1) else start


def _break(piece: str, room: int) -> list[str]:
    """Split an over-long ``piece`` into words, or hard-cut it when it is one word."""
    words = _WORD_RE.findall(piece)
    if len(words) > 1:
        return words
    cut = _safe_cut(piece, room)
    return [piece[:cut], piece[cut:]]


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` code points, fences balanced.

    Returns ``[]`` for an empty or whitespace-only text. Concatenating the chunks, minus the
    fence lines added at the cuts, gives back ``text`` (whitespace-only stretches at a cut
    may be dropped).
    """
    if limit < 2 * (len(FENCE) + MAX_LANG + 2):
        raise ValueError(f"limit {limit} is too small to keep code fences balanced")
    chunks: list[str] = []
    cur = ""
    prefix = 0  # length of the reopened fence at the start of ``cur``
    fence: str | None = None
    pending = deque(text.splitlines(keepends=True))

    def flush() -> None:
        # A block still open here is closed, so every chunk is balanced on its own (this
        # also closes a block the text itself never closed).
        if cur[prefix:].strip():
            chunks.append(cur + _closing(cur, fence))

    while pending:
        piece = pending.popleft()
        after = _fence_after(fence, piece)
        if len(cur) + len(piece) + len(_closing(cur + piece, after)) <= limit:
            cur += piece
            fence = after
            continue
        has_content = bool(cur[prefix:].strip())
        if has_content:
            if fence is not None and after is None and piece.strip() == FENCE:
                # The block's own closing line does not fit; the closing added at the cut
                # stands in for it, instead of opening an empty block in the next chunk.
                flush()
                cur, prefix, fence = "", 0, None
                continue
            flush()
            cur = _reopen(fence)
            prefix = len(cur)
            pending.appendleft(piece)
            continue
        # ``piece`` does not fit even in a fresh chunk: break it into smaller pieces.
        room = limit - len(cur) - len("\n" + FENCE)
        pending.extendleft(reversed(_break(piece, room)))
    flush()
    return chunks
