"""The documentation's table of environment variables lists every variable the shipped
configuration reads (``${VAR}`` in config/apiarium.yaml and config/models.yaml, as the loader
records them), each with a default and what it does."""
from __future__ import annotations

import re
from pathlib import Path

from apiarium.config import CATALOG_SCHEMA, SETTINGS_SCHEMA
from apiarium.yamlschema import parse

ROOT = Path(__file__).resolve().parent.parent
HEADING = re.compile(r"^#+\s+Environment variables\s*$", re.MULTILINE)
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|(.*)\|\s*$")


def read_by_shipped_config() -> set[str]:
    names: set[str] = set()
    for file, schema in (("apiarium.yaml", SETTINGS_SCHEMA), ("models.yaml", CATALOG_SCHEMA)):
        problems: list = []
        _, ctx = parse(ROOT / "config" / file, schema, {}, problems)
        assert not problems, problems
        names.update(name for found in ctx.variables.values() for name in found)
    return names


def documented() -> dict[str, list[str]]:
    """The rows of the "Environment variables" table (README.md, or a page under docs/):
    variable -> its other cells."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    rows: dict[str, list[str]] = {}
    for page in pages:
        if not page.exists():
            continue
        text = page.read_text(encoding="utf-8")
        for heading in HEADING.finditer(text):
            section = re.split(r"^#", text[heading.end():], maxsplit=1, flags=re.MULTILINE)[0]
            for line in section.splitlines():
                m = ROW.match(line)
                if m:
                    rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    assert rows, "no table under an 'Environment variables' heading in README.md or docs/"
    return rows


def test_every_variable_the_shipped_config_reads_is_in_the_table():
    read = read_by_shipped_config()
    # the loader found the ones a newcomer needs first (this test checks something)
    assert {"OPENAI_API_KEY", "OPENAI_BASE_URL", "GEMINI_HUB_URL", "GEMINI_HUB_KEY",
            "APIARIUM_PORT"} <= read
    rows = documented()
    missing = sorted(read - set(rows))
    assert not missing, f"the Environment variables table does not list {missing}"
    for name in read:
        default, what = rows[name][0], rows[name][-1]
        assert len(rows[name]) >= 2 and default and len(what) > 10, (name, rows[name])
