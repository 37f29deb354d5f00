"""Typed YAML with line numbers (apiarium/yamlschema.py): every problem of a document against a
schema reported at once as ``FILE:LINE: message`` (unknown keys, wrong types, Enum values,
number bounds, missing required keys, YAML syntax), and ``${VAR}`` / ``${VAR:-default}``
filled in from the environment before a value is checked (CONTRACT §2)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apiarium.yamlschema import (
    Bool,
    Enum,
    ListOf,
    MapOf,
    Num,
    Problem,
    Section,
    Str,
    parse,
)

SCHEMA = Section({
    "server": Section({
        "host": Str("127.0.0.1"),
        "port": Num(8080, 0, 65535, integer=True),
        "ratio": Num(0.5, 0, 1),
        "debug": Bool(False),
        "mode": Enum(("fast", "safe"), "safe"),
        "names": ListOf(Str()),
    }),
    "providers": MapOf(Section({"kind": Str(), "timeout_s": Num(600, 0.001, 86400)},
                               required=("kind",))),
    "title": Str(""),
})


def load(tmp_path: Path, text: str, env: dict | None = None):
    path = tmp_path / "apiarium.yaml"
    path.write_text(textwrap.dedent(text))
    problems: list[Problem] = []
    data, ctx = parse(path, SCHEMA, env or {}, problems)
    return data, problems, ctx, str(path)


def lines_of(problems: list[Problem]) -> list[int]:
    return [p.line for p in problems]


def test_a_good_document_and_the_defaults(tmp_path):
    data, problems, ctx, _ = load(tmp_path, """\
        server:
          port: 9000
          debug: true
          names: [a, b]
        providers:
          up: {kind: openai}
        """)
    assert problems == []
    assert data["server"] == {"host": "127.0.0.1", "port": 9000, "ratio": 0.5, "debug": True,
                              "mode": "safe", "names": ("a", "b")}
    assert data["providers"] == {"up": {"kind": "openai", "timeout_s": 600}}
    assert data["title"] == ""
    # each checked path remembers its line, for checks that span fields
    assert ctx.lines[("server", "port")] == 2
    assert ctx.lines[("providers", "up", "kind")] == 6


def test_an_empty_file_gives_every_default(tmp_path):
    data, problems, _, _ = load(tmp_path, "")
    assert problems == []
    assert data["server"]["port"] == 8080 and data["providers"] == {}


def test_problem_prints_as_file_line_message():
    assert str(Problem("/etc/apiarium.yaml", 12, "server.port: bad")) == \
        "/etc/apiarium.yaml:12: server.port: bad"


def test_unknown_keys_are_reported_where_they_are_with_the_known_ones(tmp_path):
    _, problems, _, path = load(tmp_path, """\
        server:
          host: 192.0.2.7
          prot: 8080
        provders: {}
        """)
    assert [(p.file, p.line) for p in problems] == [(path, 3), (path, 4)]
    assert "unknown key 'server.prot'" in problems[0].message
    assert "known keys: host, port, ratio, debug, mode, names" in problems[0].message
    assert "unknown key 'provders'" in problems[1].message
    assert str(problems[0]).startswith(f"{path}:3: ")


def test_every_problem_is_reported_at_once(tmp_path):
    _, problems, _, _ = load(tmp_path, """\
        server:
          port: eighty
          ratio: 2
          debug: "yes"
          mode: turbo
          names: a
        providers:
          up: {timeout_s: 0}
        title: [x]
        """)
    messages = {p.line: p.message for p in problems}
    assert sorted(messages) == [2, 3, 4, 5, 6, 8, 9]
    assert messages[2] == "server.port: expected a whole number, got 'eighty'"
    assert messages[3] == "server.ratio: 2 is out of range (0 to 1)"
    assert messages[4] == "server.debug: expected true or false, got 'yes'"
    assert messages[5] == "server.mode: 'turbo' is not one of fast, safe"
    assert messages[6] == "server.names: expected a list, got a value"
    # line 8 has two: the bound, and the missing required key of that provider
    assert [p.message for p in problems if p.line == 8] == [
        "providers.up.timeout_s: 0 is out of range (0.001 to 86400)",
        "providers.up: missing required key 'kind'"]
    assert messages[9] == "title: expected a string, got a list"


def test_wrong_types_keep_the_default(tmp_path):
    data, problems, _, _ = load(tmp_path, """\
        server: {port: 99999, ratio: -1, debug: 1, mode: 3}
        """)
    assert len(problems) == 4
    assert data["server"]["port"] == 8080 and data["server"]["ratio"] == 0.5
    assert data["server"]["debug"] is False and data["server"]["mode"] == "safe"


@pytest.mark.parametrize("value, ok", [
    ("0", True), ("65535", True), ("65536", False), ("-1", False), ("80.5", False),
    ("true", False), ("'8080'", False), ("0x50", True)])
def test_integer_bounds(tmp_path, value, ok):
    _, problems, _, _ = load(tmp_path, f"server:\n  port: {value}\n")
    assert (problems == []) is ok
    if not ok:
        assert problems[0].line == 2 and problems[0].message.startswith("server.port: ")


@pytest.mark.parametrize("value, ok", [("0", True), ("1", True), ("0.25", True), ("1.0001", False),
                                       ("-0.1", False), (".nan", False), ("no", False)])
def test_number_bounds(tmp_path, value, ok):
    _, problems, _, _ = load(tmp_path, f"server:\n  ratio: {value}\n")
    assert (problems == []) is ok


def test_a_section_must_be_a_mapping_and_null_means_defaults(tmp_path):
    data, problems, _, _ = load(tmp_path, "server:\nproviders:\n")
    assert problems == [] and data["server"]["port"] == 8080 and data["providers"] == {}
    _, problems, _, _ = load(tmp_path, "server: [1, 2]\nproviders: 3\n")
    assert [(p.line, p.message) for p in problems] == [
        (1, "server: expected a mapping, got a list"),
        (2, "providers: expected a mapping, got a value")]


def test_a_name_defined_twice_is_reported(tmp_path):
    _, problems, _, _ = load(tmp_path, """\
        providers:
          up: {kind: a}
          up: {kind: b}
        """)
    assert [(p.line, p.message) for p in problems] == [(3, "providers.up: defined twice")]


def test_strings_take_numbers_but_not_booleans_or_mappings(tmp_path):
    data, problems, _, _ = load(tmp_path, "server: {host: 10}\ntitle: 1.5\n")
    assert problems == [] and data["server"]["host"] == "10" and data["title"] == "1.5"
    _, problems, _, _ = load(tmp_path, "server: {host: yes}\ntitle: {a: 1}\n")
    assert [(p.line, p.message) for p in problems] == [
        (1, "server.host: expected a string, got True"),
        (2, "title: expected a string, got a mapping")]


def test_invalid_yaml_is_one_problem_with_its_line(tmp_path):
    data, problems, _, path = load(tmp_path, "server:\n  host: a\n  port: [1, 2\ntitle: x\n")
    assert data is None
    assert len(problems) == 1 and problems[0].file == path
    assert problems[0].line in (3, 4) and problems[0].message.startswith("invalid YAML: ")


def test_an_unreadable_file_is_a_problem_at_line_0(tmp_path):
    problems: list[Problem] = []
    data, _ = parse(tmp_path / "missing.yaml", SCHEMA, {}, problems)
    assert data is None
    assert [(p.file, p.line) for p in problems] == [(str(tmp_path / "missing.yaml"), 0)]
    assert "cannot read the file" in problems[0].message


# ---------------------------------------------------------------------------- ${VAR}

def test_variables_and_defaults_are_filled_in(tmp_path):
    data, problems, _, _ = load(tmp_path, """\
        server:
          host: ${HOST}
          port: ${PORT:-8123}
          ratio: ${RATIO:-0.75}
          debug: ${DEBUG:-false}
          mode: ${MODE:-fast}
          names: ["${A}-${B:-b}", "plain"]
        title: "key=${KEY:-}"
        """, env={"HOST": "192.0.2.7", "A": "a", "DEBUG": "true"})
    assert problems == []
    assert data["server"] == {"host": "192.0.2.7", "port": 8123, "ratio": 0.75, "debug": True,
                              "mode": "fast", "names": ("a-b", "plain")}
    assert data["title"] == "key="


def test_the_environment_wins_over_the_default(tmp_path):
    data, problems, _, _ = load(tmp_path, "server:\n  port: ${PORT:-8123}\n",
                                env={"PORT": "9999"})
    assert problems == [] and data["server"]["port"] == 9999


def test_an_empty_variable_takes_the_default_as_in_the_shell(tmp_path):
    """``${VAR:-default}`` is the shell's notation (and docker compose's): the default is used
    when VAR is unset *or empty*.  ``APIARIUM_PORT=`` in an environment file must give 8080,
    not "expected a whole number, got None"."""
    data, problems, _, _ = load(tmp_path, 'server:\n  port: ${PORT:-8080}\n'
                                          'title: "${EMPTY:-fallback}"\n',
                                env={"EMPTY": "", "PORT": ""})
    assert problems == []
    assert data["server"]["port"] == 8080 and data["title"] == "fallback"


def test_an_empty_variable_without_default_is_empty(tmp_path):
    data, problems, _, _ = load(tmp_path, 'title: "a${EMPTY}b"\n', env={"EMPTY": ""})
    assert problems == [] and data["title"] == "ab"


def test_a_missing_variable_without_default_is_a_problem_naming_it(tmp_path):
    data, problems, _, path = load(tmp_path, "server:\n  host: x\ntitle: ${NOPE}\n")
    assert [(p.file, p.line) for p in problems] == [(path, 3)]
    assert "environment variable NOPE is not set" in problems[0].message
    assert "${NOPE:-}" in problems[0].message
    assert data["title"] == ""


def test_a_filled_in_value_is_checked_like_a_written_one(tmp_path):
    _, problems, _, _ = load(tmp_path, """\
        server:
          port: ${PORT:-99999}
          mode: ${MODE}
          debug: ${DEBUG}
        """, env={"MODE": "turbo", "DEBUG": "maybe"})
    assert [(p.line, p.message) for p in problems] == [
        (2, "server.port: 99999 is out of range (0 to 65535)"),
        (3, "server.mode: 'turbo' is not one of fast, safe"),
        (4, "server.debug: expected true or false, got 'maybe'")]


def test_a_string_field_keeps_a_filled_in_value_as_text(tmp_path):
    data, problems, _, _ = load(tmp_path, "server:\n  host: ${H}\n", env={"H": "0123"})
    assert problems == [] and data["server"]["host"] == "0123"          # not the number 123


def test_a_number_field_left_empty_by_its_variable_is_a_problem(tmp_path):
    _, problems, _, _ = load(tmp_path, "server:\n  port: ${PORT:-}\n")
    assert [(p.line, p.message) for p in problems] == [
        (2, "server.port: expected a whole number, got None")]
