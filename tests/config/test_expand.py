"""``${…}`` expansion (CONTRACT §2), on strings alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from orrad.config.expand import ExpansionError, expand, make_expander

ENV = {"A": "alpha", "EMPTY": "", "N": "120", "DIR": "creds", "NESTED": "${A}"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ("${A}", "alpha"),
        ("x-${A}-y", "x-alpha-y"),
        ("${A}${A}", "alphaalpha"),
        ("${MISSING:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),  # empty counts as unset for :-
        ("${A:-dflt}", "alpha"),
        ("${MISSING:-}", ""),
        ("${EMPTY}", ""),  # set but empty, no default: fine
        ("${MISSING:-${A}}", "alpha"),  # nested default
        ("${MISSING:-a:-b}", "a:-b"),
        ("$${A}", "${A}"),  # literal
        ("$$${A}", "$${A}"),
        ("cost: $5", "cost: $5"),
        ("$", "$"),
        ("a$b$$c", "a$b$$c"),
        ("${NESTED}", "${A}"),  # values are never expanded again
        ("}", "}"),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, environ=ENV, base_dir="/") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${MISSING}", "environment variable MISSING is not set"),
        ("x ${A", "unterminated '${'"),
        ("${}", "invalid reference"),
        ("${A-b}", "invalid reference"),
        ("${A:=b}", "invalid reference"),
        ("${1X}", "invalid reference"),
        ("${file:}", "empty path"),
        ("${file:/nonexistent/orrad-test}", "cannot read ${file:/nonexistent/orrad-test}"),
    ],
)
def test_expand_errors(text: str, message: str) -> None:
    with pytest.raises(ExpansionError, match=r"^" + message.replace("$", r"\$")
                       .replace("{", r"\{").replace("(", r"\(")):
        expand(text, environ=ENV, base_dir="/")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),  # only one newline is stripped
        ("s3cret\r\n", "s3cret"),
        ("${A}\n", "${A}"),  # file contents are literal
        ("", ""),
    ],
)
def test_file_reference(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_bytes(content.encode())
    expander = make_expander(ENV, str(tmp_path))
    assert expander("${file:creds/token}") == expected  # relative to base_dir
    assert expander(f"${{file:{tmp_path}/creds/token}}") == expected  # absolute
    assert expander("${file:${DIR}/token}") == expected  # nested ${VAR} in PATH
    assert expander("pre-${file:${DIR:-x}/token}-post") == f"pre-{expected}-post"


def test_file_reference_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(ExpansionError, match="not UTF-8"):
        expand("${file:bin}", environ={}, base_dir=str(tmp_path))


def test_file_reference_missing_variable_in_path(tmp_path: Path) -> None:
    with pytest.raises(ExpansionError, match="environment variable CREDENTIALS_DIRECTORY"):
        expand("${file:${CREDENTIALS_DIRECTORY}/x}", environ={}, base_dir=str(tmp_path))


def test_error_never_contains_values() -> None:
    with pytest.raises(ExpansionError) as info:
        expand("supersecret ${A", environ=ENV, base_dir="/")
    assert "supersecret" not in str(info.value)
