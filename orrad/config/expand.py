"""``${…}`` expansion of configuration strings (CONTRACT §2).

Forms, expanded left to right in one pass:

- ``${VAR}`` — the value of the environment variable ``VAR``; unset is an error.
- ``${VAR:-default}`` — ``default`` when ``VAR`` is unset *or empty*. ``default`` may itself
  contain ``${…}`` references.
- ``${file:PATH}`` — the contents of the file ``PATH`` (UTF-8, one trailing newline
  stripped). ``PATH`` may contain ``${VAR}`` references (``${file:${CREDENTIALS_DIRECTORY}/x}``)
  and, when relative, is resolved against ``base_dir``.
- ``$${`` — a literal ``${``. Any other ``$`` is literal.

Substituted text (variable values, file contents) is never expanded again. References nest
at most :data:`MAX_NESTING` deep (``${A:-${B:-x}}`` is two). Problems raise
:class:`ExpansionError`, whose message names the variable or the file reference as written
but never a value (not even a path that came out of a variable).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

from orrad.config.files import MAX_FILE_BYTES, read_regular_text
from orrad.errors import ConfigError

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "ExpansionError", "expand", "make_expander"]

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

MAX_NESTING = 16
"""How deep ``${…}`` references may nest inside one another."""


class ExpansionError(ValueError):
    """A ``${…}`` reference that cannot be expanded (the message is safe to print)."""


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``${`` whose body starts at ``start``."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$${", i):
            i += 3
        elif text.startswith("${", i):
            depth += 1
            if depth > MAX_NESTING:
                raise ExpansionError(f"'${{' references nested more than {MAX_NESTING} deep")
            i += 2
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
            i += 1
        else:
            i += 1
    raise ExpansionError("unterminated '${' (write '$${' for a literal '${')")


def _shown(written: str) -> str:
    return written if len(written) <= 200 else written[:197] + "..."


def _read_file(path: str, written: str, base_dir: str) -> str:
    """The file ``path`` for the reference ``${file:WRITTEN}`` (named as written: ``path``
    may come from a variable, whose value is not ours to print)."""
    if not path:
        raise ExpansionError(f"empty path in ${{file:{_shown(written)}}}")
    try:
        # Regular files only, and small ones: ${file:/dev/zero} must not hang or eat memory.
        data = read_regular_text(os.path.join(base_dir, path), MAX_FILE_BYTES)
    except ConfigError as e:
        reason = e.message.removeprefix("cannot read file: ")
        raise ExpansionError(f"cannot read ${{file:{_shown(written)}}}: {reason}") from None
    if data.endswith("\r\n"):
        return data[:-2]
    return data.removesuffix("\n")


def _reference(body: str, environ: Mapping[str, str], base_dir: str) -> str:
    if body.startswith("file:"):
        written = body[5:]
        return _read_file(expand(written, environ=environ, base_dir=base_dir), written, base_dir)
    name, sep, default = body.partition(":-")
    if not _NAME_RE.fullmatch(name):
        raise ExpansionError(
            "invalid reference: use ${VAR}, ${VAR:-default} or ${file:PATH}"
            + (f" (bad variable name {name!r})" if name and len(name) <= 64 else "")
        )
    value = environ.get(name)
    if sep:
        return value if value else expand(default, environ=environ, base_dir=base_dir)
    if value is None:
        raise ExpansionError(f"environment variable {name} is not set")
    return value


def expand(text: str, *, environ: Mapping[str, str], base_dir: str) -> str:
    """Return ``text`` with every ``${…}`` reference replaced (see the module docstring).

    Raises:
        ExpansionError: an unset variable without default, an unreadable file, or a
            malformed reference.
    """
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_reference(text[i + 2 : end], environ, base_dir))
            i = end + 1
        else:
            j = text.find("$", i + 1)
            j = len(text) if j < 0 else j
            out.append(text[i:j])
            i = j
    return "".join(out)


def make_expander(environ: Mapping[str, str], base_dir: str) -> Callable[[str], str]:
    """Bind :func:`expand` to one environment and base directory."""

    def expander(text: str) -> str:
        return expand(text, environ=environ, base_dir=base_dir)

    return expander
