"""Hostile configuration files (issue 10): each is one rejected file with ``PATH:LINE:COL``,
never a crash, a hang, a memory blow-up or an echoed secret.

Classes covered: deep nesting (flow, block, mixed, through aliases and merge chains, and
``${…}`` chains); files that never end or take long (FIFO, device, symlink to a device,
oversized, alias and merge bombs, a time budget); errors about expanded values.
Anything that used to hang runs under :func:`within`, so the old behaviour fails the test
instead of wedging the suite.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from orrad.config import DaemonConfig, load_channel_file, load_channels, load_daemon_config
from orrad.config.expand import MAX_NESTING, ExpansionError, expand
from orrad.config.files import MAX_FILE_BYTES, read_regular_file
from orrad.config.loader import BUILTIN_CHANNEL_KINDS
from orrad.config.yamlpos import Document, Limits, load_yaml, load_yaml_file
from orrad.errors import ConfigError, ConfigErrors

T = TypeVar("T")

DEPTH = Limits().max_depth


def within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()`` in a thread that must finish within ``seconds`` (else the test fails)."""
    out: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # handed to the test thread
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s (hangs or takes forever)"
    if failure:
        raise failure[0]
    return out[0]


@pytest.fixture
def daemon(tmp_path: Path) -> DaemonConfig:
    return msgspec.structs.replace(msgspec.convert({}, DaemonConfig),
                                   base_dir=str(tmp_path), channels_dir=str(tmp_path / "ch"))


def channel_errors(path: Path, daemon: DaemonConfig, env: dict[str, str] | None = None
                   ) -> list[str]:
    def load() -> list[str]:
        try:
            load_channel_file(str(path), daemon, BUILTIN_CHANNEL_KINDS, environ=env or {})
        except ConfigErrors as e:
            return [str(x) for x in e.errors]
        raise AssertionError("the file was accepted")

    return within(10, load)


# -- 1. deep nesting -----------------------------------------------------------------------


def _alias_tower(levels: int) -> str:
    """Each anchor nests the previous one ten levels deeper: shallow text, deep data."""
    lines = ["kind: webhook", "a0: &a0 1"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} " + "[" * 10 + f"*a{i - 1}" + "]" * 10)
    return "\n".join(lines) + "\n"


def _merge_chain(levels: int) -> str:
    lines = ["kind: webhook", "m0: &m0 {k: 1}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


DEEP = {
    "flow sequences": ("kind: webhook\nx: " + "[" * 5000 + "]" * 5000 + "\n", ":2:68:"),
    "flow mappings": ("kind: webhook\nx: " + "{a: " * 5000 + "}" * 5000 + "\n", ":2:"),
    "block mappings": ("kind: webhook\n" + "".join(" " * i + "k:\n" for i in range(500)),
                       f":{DEPTH + 2}:"),
    "block sequences": ("kind: webhook\nx:\n" + "".join(" " * (2 * i) + "-\n"
                                                        for i in range(300)), ":"),
    "one-line block sequences": ("kind: webhook\nx:\n  " + "- " * 3000 + "1\n", ":3:"),
    "mixed": ("kind: webhook\nx:\n" + "".join(" " * i + "k: [\n" for i in range(200)), ":"),
    "aliases": (_alias_tower(20), ":"),
    "merge chains": (_merge_chain(3000), ":"),
}


@pytest.mark.parametrize("kind", list(DEEP))
def test_deep_nesting_is_one_error_with_a_position(
        tmp_path: Path, daemon: DaemonConfig, kind: str) -> None:
    text, where = DEEP[kind]
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    [error] = channel_errors(path, daemon)
    assert error.startswith(f"{path}{where}"), error
    _, line, col, message = error.split(":", 3)
    assert int(line) >= 1 and int(col) >= 1
    assert message == f" nested deeper than {DEPTH} levels", error


def test_nesting_up_to_the_limit_is_fine() -> None:
    _, errors = load_yaml("x: " + "[" * (DEPTH - 1) + "1" + "]" * (DEPTH - 1) + "\n", "f")
    assert errors == []
    _, errors = load_yaml("x: " + "[" * DEPTH + "1" + "]" * DEPTH + "\n", "f")
    # the root mapping is the first level: the DEPTH-th bracket is one too many
    assert [str(e) for e in errors] == [f"f:1:{3 + DEPTH}: nested deeper than {DEPTH} levels"]


def test_deep_expansion_chain_is_an_error_at_its_value(
        tmp_path: Path, daemon: DaemonConfig) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text("kind: webhook\nname: \"" + "${A:-" * 3000 + "x" + "}" * 3000 + "\"\n")
    assert channel_errors(path, daemon) == [
        f"{path}:2:7: '${{' references nested more than {MAX_NESTING} deep"]
    assert expand("${A:-" * MAX_NESTING + "x" + "}" * MAX_NESTING, environ={},
                  base_dir="/") == "x"
    with pytest.raises(ExpansionError, match="nested more than"):
        expand("${file:" + "${A:-" * MAX_NESTING + "x" + "}" * (MAX_NESTING + 1),
               environ={}, base_dir="/")


def test_daemon_file_nesting_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "orrad.yaml"
    path.write_text("agents:\n  a: " + "{b: " * 3000 + "}" * 3000 + "\n")
    with pytest.raises(ConfigErrors) as info:
        load_daemon_config(str(path), environ={})
    assert [str(e) for e in info.value.errors] == [
        f"{path}:2:{6 + 4 * (DEPTH - 2)}: nested deeper than {DEPTH} levels"]


def test_load_channels_judges_each_deep_file_alone(tmp_path: Path, daemon: DaemonConfig) -> None:
    channels = tmp_path / "ch"
    channels.mkdir()
    for name, (text, _) in DEEP.items():
        (channels / f"{name.replace(' ', '-')}.yaml").write_text(text)
    (channels / "good.yaml").write_text("kind: webhook\nlisten: 127.0.0.1:0\n")
    result = within(30, lambda: load_channels(daemon, BUILTIN_CHANNEL_KINDS, environ={}))
    assert list(result.ok) == [str(channels / "good.yaml")]
    assert len(result.errors) == len(DEEP)


# -- 2. files that never end or take forever ------------------------------------------------


def test_fifo_is_rejected_without_blocking(tmp_path: Path, daemon: DaemonConfig) -> None:
    path = tmp_path / "f.yaml"
    os.mkfifo(path)
    assert channel_errors(path, daemon) == [f"{path}: not a regular file (a FIFO)"]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_symlink_to_a_device_is_rejected_unread(
        tmp_path: Path, daemon: DaemonConfig, device: str) -> None:
    path = tmp_path / "z.yaml"
    path.symlink_to(device)
    assert channel_errors(path, daemon) == [
        f"{path}: not a regular file (a symbolic link to a character device)"]


def test_device_and_directory_given_directly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^/dev/zero: not a regular file \(a character dev"):
        read_regular_file("/dev/zero")
    with pytest.raises(ConfigError, match=r": not a regular file \(a directory\)$"):
        read_regular_file(str(tmp_path))


def test_oversized_files_are_refused_before_parsing(tmp_path: Path, daemon: DaemonConfig) -> None:
    flows = tmp_path / "flows.yaml"  # the 50 MB flow list of the issue
    flows.write_bytes(b"kind: webhook\nx: [" + b"1," * (25 * 1024 * 1024) + b"]\n")
    assert channel_errors(flows, daemon) == [f"{flows}: file is larger than 1 MiB"]
    sparse = tmp_path / "sparse.yaml"
    with open(sparse, "wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB that take no disk: never read
    assert channel_errors(sparse, daemon) == [f"{sparse}: file is larger than 1 MiB"]
    edge = tmp_path / "edge.yaml"
    edge.write_bytes(b"kind: webhook\n#" + b"x" * (MAX_FILE_BYTES - 16) + b"\n")
    assert os.path.getsize(edge) == MAX_FILE_BYTES
    load_channel_file(str(edge), daemon, BUILTIN_CHANNEL_KINDS, environ={})  # exactly the cap


def test_a_size_that_lies_is_still_bounded() -> None:
    # /proc files report st_size 0: the bound is on what is read, not on what stat says.
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(ConfigError, match="larger than 16 bytes"):
        read_regular_file("/proc/self/maps", max_bytes=16)


MERGE_BOMB = "a0: &a0 {k: 1}\n" + "".join(
    f"a{i}: &a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * 10) + "]}\n" for i in range(1, 11))
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n"
    for i in range(8))


@pytest.mark.parametrize(("name", "text"), [("merges", MERGE_BOMB), ("aliases", ALIAS_BOMB)])
def test_alias_and_merge_bombs_hit_the_node_cap(
        tmp_path: Path, daemon: DaemonConfig, name: str, text: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("kind: webhook\n" + text)
    assert len(text) < 800
    [error] = channel_errors(path, daemon)
    assert error.startswith(f"{path}:")
    assert "document has more than 100000 nodes" in error


def test_merge_keys_count_each_use(tmp_path: Path) -> None:
    limits = Limits(max_nodes=80)
    ten = "b: &b {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n"
    doc, errors = load_yaml(ten + "c: {<<: [*b, *b]}\n", "f", limits=limits)
    assert errors == [] and len(doc.data["c"]) == 10
    doc, errors = load_yaml(ten + "c: {<<: [*b, *b, *b, *b, *b]}\n", "f", limits=limits)
    [error] = errors
    assert error.message == ("document has more than 80 nodes (aliases and merge keys count "
                             "each time they are used)")


def test_time_budget(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text("x: [" + "1, " * 1000 + "]\n")
    doc, errors = load_yaml_file(str(path), limits=Limits(time_s=0))
    assert doc.data is None
    assert [str(e) for e in errors] == [f"{path}:1:1: file takes longer than 0s to load"]
    started = time.monotonic()
    doc, errors = load_yaml_file(str(path), limits=Limits(time_s=60))
    assert errors == [] and len(doc.data["x"]) == 1000
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "link"])
def test_file_references_only_read_regular_files(tmp_path: Path, target: str) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("/dev/zero")

    def run() -> str:
        return expand(f"${{file:{target}}}", environ={}, base_dir=str(tmp_path))

    with pytest.raises(ExpansionError, match=r"^cannot read \$\{file:" + target.replace(
            "/", "/") + r"\}: not a regular file"):
        within(10, run)


def test_expansion_output_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("x" * 1000)
    text = "a: &a '${file:k}'\nb: [" + ", ".join(["*a"] * 200) + "]\n"
    doc, errors = load_yaml(text, "f", limits=Limits(max_expanded_bytes=100_000),
                            expand=lambda s: expand(s, environ={}, base_dir=str(tmp_path)))
    assert doc.data is None
    assert [str(e) for e in errors] == [
        "f:1:4: ${…} expansion produces more than 100000 characters"]


@pytest.mark.parametrize("source", [
    "x: " + "1" * 5000,  # past Python's int conversion limit
    "x: !!int abc", "x: !!float abc", "x: !!bool maybe",
])
def test_odd_scalars_are_errors_not_crashes(source: str) -> None:
    doc, errors = load_yaml(source + "\n", "f")
    assert doc.data is None
    assert [str(e)[:19] for e in errors] == ["f:1:4: invalid valu"]


def test_daemon_file_gets_the_same_protections(tmp_path: Path) -> None:
    fifo = tmp_path / "orrad.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigErrors, match=r"not a regular file \(a FIFO\)"):
        within(10, lambda: load_daemon_config(str(fifo), environ={}))
    big = tmp_path / "big.yaml"
    big.write_bytes(b"agents: [" + b"1," * MAX_FILE_BYTES + b"]\n")
    with pytest.raises(ConfigErrors, match="file is larger than 1 MiB"):
        load_daemon_config(str(big), environ={})
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(MERGE_BOMB)
    with pytest.raises(ConfigErrors, match="more than 100000 nodes"):
        within(10, lambda: load_daemon_config(str(bomb), environ={}))
    with pytest.raises(ConfigErrors, match="takes longer than 0s"):
        load_daemon_config(str(bomb), environ={}, limits=Limits(time_s=0))


# -- 3. errors about expanded values never print them ---------------------------------------

SECRET = "hunter2-Very-Secret-Value!"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("kind: webhook\nname: '${S}'\n", "'name'"),
        ("kind: webhook\nname: 'ok-${S}'\n", "'name'"),
        ("kind: webhook\nagent: ${S}\n", "'agent'"),
        ("kind: webhook\nlisten: ${S}\n", None),  # the reason never held the value
        ("kind: webhook\nnamespace_prefix: 'p:${S}'\n", "'namespace_prefix'"),
        ("kind: webhook\npath: '${S}'\n", None),
        ("kind: webhook\ncallback_allow: ['${S}']\n", "'callback_allow'[0]"),
        ("kind: ${S}\n", "'kind'"),
        ("kind: webhook\nrestart: {policy: '${S}'}\n", None),
        ("kind: webhook\nrestart: {max_restarts: '${S}'}\n", None),
        ("kind: webhook\nauth: {signing_secret: '${S}'}\n", None),
        ("kind: discord\ntoken: x\nagents: ['${S}']\n", "'agents'[0]"),
    ],
)
def test_channel_errors_never_show_expanded_values(
        tmp_path: Path, daemon: DaemonConfig, text: str, key: str | None) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    errors = channel_errors(path, daemon, env={"S": SECRET})
    assert errors
    for error in errors:
        for piece in ("hunter2", "Very-Secret", "Secret-Value"):
            assert piece not in error, error
    if key is not None:
        assert any(f"the value of {key} comes from " in e and "${S}" in e for e in errors), errors


def test_file_contents_in_an_error_are_never_shown(tmp_path: Path, daemon: DaemonConfig) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("kind: webhook\nname: '${file:/proc/self/environ}'\n")
    [error] = channel_errors(path, daemon)
    with open("/proc/self/environ", "rb") as f:
        entries = [e.decode(errors="replace") for e in f.read().split(b"\0") if len(e) >= 6]
    assert entries  # the environment this process started with
    for entry in entries:
        assert entry not in error
    assert "\x00" not in error
    assert error.startswith(f"{path}:2:7: invalid channel name: ")
    assert error.endswith("(the value of 'name' comes from ${file:/proc/self/environ}; "
                          "not shown)")


def test_daemon_file_errors_never_show_expanded_values(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")
    path = tmp_path / "orrad.yaml"
    path.write_text("instance: '${file:secret}'\ndefault_agent: ${S}\n"
                    "agents:\n  a: {provider: '${file:secret}'}\n"
                    "providers:\n  p: {kind: openai, base_url: '${S}'}\n")
    with pytest.raises(ConfigErrors) as info:
        load_daemon_config(str(path), environ={"S": SECRET})
    text = str(info.value)
    assert len(info.value.errors) == 4, text
    assert "hunter2" not in text and "Very-Secret" not in text
    assert "${file:secret}" in text and "${S}" in text


def test_a_path_from_a_variable_is_not_shown(tmp_path: Path) -> None:
    with pytest.raises(ExpansionError) as info:
        expand("${file:${S}/token}", environ={"S": "/x/" + SECRET}, base_dir=str(tmp_path))
    assert str(info.value) == ("cannot read ${file:${S}/token}: No such file or directory")


def test_duplicate_names_from_variables_are_not_shown(
        tmp_path: Path, daemon: DaemonConfig) -> None:
    channels = tmp_path / "ch"
    channels.mkdir()
    (channels / "a.yaml").write_text("kind: webhook\nname: ${N}\nlisten: 127.0.0.1:1\n")
    (channels / "b.yaml").write_text("kind: webhook\nname: ${N}\nlisten: 127.0.0.1:2\n")
    result = load_channels(daemon, BUILTIN_CHANNEL_KINDS, environ={"N": "hunter2x"})
    assert list(result.ok) == [str(channels / "a.yaml")]
    assert [str(e) for e in result.all_errors()] == [
        f"{channels / 'b.yaml'}:2:7: duplicate channel name ${{N}}: also used by "
        f"{channels / 'a.yaml'}:2:7"]


def test_redaction_hides_quoted_and_unquoted_pieces_only_of_expanded_values() -> None:
    doc = Document("f", expanded={("a",): ("${S}", "one:two-three-four:five")})
    assert doc.redact(("a",), "bad segment 'two-three-four' in one:two-three-four:five") == (
        "bad segment … in … (the value of 'a' comes from ${S}; not shown)")
    assert doc.redact(("a",), "expected an int") == "expected an int"
    # elsewhere only the whole value is hidden; ordinary words stay
    assert doc.redact(("b",), "peer 'one:two-three-four:five' vs 'two'") == "peer … vs 'two'"
