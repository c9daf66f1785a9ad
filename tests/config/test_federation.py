"""``federation:`` checks: prefixes claimed twice, peer names, and how ``orrad check``
reports them (``PATH:LINE:COL: message``, exit 78)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orrad.cli import main
from orrad.config.loader import load_daemon_config
from orrad.errors import ConfigErrors


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "orrad.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def errors_of(path: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_daemon_config(path, environ={})
    return [str(e) for e in info.value.errors]


def test_two_peers_claiming_one_prefix_names_both_peers_the_prefix_and_both_lines(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, """\
        instance: alpha
        federation:
          secret: s
          peers:
            - name: beta
              url: http://beta:8471
              namespaces: [team:ops, acme]
            - name: gamma
              url: http://gamma:8471
              namespaces:
                - other
                - acme
        """)
    assert errors_of(path) == [
        f"{path}:12:11: namespace prefix 'acme' of peer 'gamma' is already declared by "
        "peer 'beta' at line 7"
    ]


def test_nested_and_disjoint_prefixes_are_not_a_conflict(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        federation:
          secret: s
          peers:
            - {name: beta, url: 'http://b', namespaces: [team, acme]}
            - {name: gamma, url: 'http://c', namespaces: ['team:ops', acmex]}
            - {name: delta, url: 'http://d', namespaces: []}
        """)
    cfg = load_daemon_config(path, environ={})
    assert cfg.federation is not None
    assert [p.name for p in cfg.federation.peers] == ["beta", "gamma", "delta"]


def test_one_peer_listing_a_prefix_twice(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        federation:
          secret: s
          peers:
            - name: beta
              url: http://b
              namespaces: [acme, x, acme]
        """)
    assert errors_of(path) == [
        f"{path}:6:29: namespace prefix 'acme' is listed twice at line 6"
    ]


def test_duplicate_peer_names_point_at_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        federation:
          secret: s
          peers:
            - name: beta
              url: http://b
            - name: beta
              url: http://c
        """)
    assert errors_of(path) == [f"{path}:6:13: duplicate peer name 'beta': already used at "
                               "line 4"]


def test_a_peer_named_like_this_instance(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        instance: alpha
        federation:
          secret: s
          peers:
            - {name: alpha, url: 'http://a'}
        """)
    assert errors_of(path) == [
        f"{path}:5:14: a peer cannot be this daemon's instance ('alpha'): a daemon is not "
        "its own peer"
    ]


def test_orrad_check_prints_each_problem_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, """\
        instance: alpha
        channels_dir: none
        federation:
          secret: s
          peers:
            - {name: alpha, url: 'http://a'}
            - {name: beta, url: 'http://b', namespaces: [acme]}
            - {name: gamma, url: 'http://c', namespaces: [acme]}
            - {name: gamma, url: 'http://d'}
        """)
    assert main(["check", "-c", path]) == 78
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"{path}:6:14: a peer cannot be this daemon's instance ('alpha'): a daemon is not "
        "its own peer",
        f"{path}:8:51: namespace prefix 'acme' of peer 'gamma' is already declared by peer "
        "'beta' at line 7",
        f"{path}:9:14: duplicate peer name 'gamma': already used at line 8",
    ]
