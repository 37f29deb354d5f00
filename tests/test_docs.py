"""The documentation (docs/, and the README that points into it) holds to the code: every
setting of both YAML schemas is in its table on docs/configuration.md, and every link of the
README reaches a page and a heading that exist; the backup docs/operations.md prints copies a
running gateway's database.  (``mkdocs build --strict``, run by
scripts/test, checks the links between the pages of docs/ and that each page is in the nav;
tests/test_readme.py runs the examples; tests/test_env_table.py holds the environment
variables' table; tests/test_chat_fields.py the chat fields' table.)"""
from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

from apiarium.config import CATALOG_SCHEMA, READ_AT_START, SETTINGS_SCHEMA
from apiarium.config_pricing import ALLOW, CREDITS
from apiarium.services.keys import KeyService
from apiarium.storage import secret_beside
from apiarium.yamlschema import Field, MapOf, Section
from tests.conftest import openai_models

REPO = Path(__file__).resolve().parents[1]
CONFIGURATION = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
OPERATIONS = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of the same or a higher level."""
    m = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert m, f"no heading {heading!r}"
    rest = text[m.end():]
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def table_names(text: str) -> set[str]:
    """The names in backticks in the first column of the tables of ``text``."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([^`]+)`", line.split(" | ")[0]))
    return names


def leaves(schema: Field, prefix: str = "") -> list[str]:
    """Dotted paths of a schema's settings: a Section's keys, recursively; anything else (a
    scalar, a list, a map of free names) is one setting."""
    if not isinstance(schema, Section):
        return [prefix]
    return [path for key, field in schema.fields.items()
            for path in leaves(field, f"{prefix}.{key}" if prefix else key)]


def test_every_setting_of_apiarium_yaml_is_in_the_settings_table():
    paths = leaves(SETTINGS_SCHEMA)
    assert {"server.host", "rate_limit.endpoints", "database", "metrics.token"} <= set(paths)
    missing = sorted(set(paths) - table_names(section(CONFIGURATION, "Settings")))
    assert not missing, f"docs/configuration.md, Settings: no row for {missing}"


def test_every_provider_setting_is_in_the_providers_table():
    providers = CATALOG_SCHEMA.fields["providers"]
    assert isinstance(providers, MapOf) and isinstance(providers.item, Section)
    keys = set(providers.item.fields)
    assert {"kind", "base_url", "api_key", "frame_delay_ms"} <= keys
    missing = sorted(keys - table_names(section(CONFIGURATION, "Providers")))
    assert not missing, f"docs/configuration.md, Providers: no row for {missing}"


def test_every_model_setting_is_in_the_models_section():
    models = CATALOG_SCHEMA.fields["models"]
    assert isinstance(models, MapOf) and isinstance(models.item, Section)
    text = section(CONFIGURATION, "Models")
    named = set(re.findall(r"`([a-z_0-9]+)[`:]", text)) | set(re.findall(r"\b(\w+): ", text))
    missing = sorted(set(models.item.fields) - named)
    assert not missing, f"docs/configuration.md, Models: {missing} not described"
    # what `credits` and `allow` hold, each word in the text
    words = set(re.findall(r"\w+", text))
    missing = sorted((set(CREDITS.fields) | set(ALLOW.fields)) - words)
    assert not missing, f"docs/configuration.md, Models: credits/allow keys {missing} missing"


def test_the_settings_read_only_at_start_are_named_where_signals_are():
    """A reload does not apply them: docs/operations.md lists each (``server.host``, then the
    same section's ``.port`` …)."""
    text = section(OPERATIONS, "Signals")
    missing = [name for name in READ_AT_START.values()
               if f"`{name}`" not in text and f"`.{name.rpartition('.')[2]}`" not in text]
    assert not missing, f"docs/operations.md, Signals: {missing} not named"


def slug(heading: str) -> str:
    """A heading's anchor, as MkDocs (Python-Markdown's toc) and GitHub make it for the plain
    headings these pages use."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+?)\s*$", text, re.M)}


def test_the_readmes_links_reach_pages_and_headings_that_exist():
    readme = REPO / "README.md"
    links = [link for link in LINK.findall(readme.read_text(encoding="utf-8"))
             if not link.startswith(("http://", "https://"))]
    assert any(link.startswith("docs/") for link in links), links      # it points into docs/
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPO / path) if path else readme
        if not target.is_file():
            broken.append(f"{link}: no file {path}")
        elif anchor and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, "README.md:\n  " + "\n  ".join(broken)


def test_every_page_of_docs_is_in_the_nav():
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert sorted(nav) == pages


def test_the_documented_backup_copies_a_running_gateways_keys(make_gateway, fake_openai,
                                                              tmp_path):
    """The SQLite backup of docs/operations.md, run while the gateway serves: the copy and the
    secret file give every key back, the same for the same address."""
    gw = make_gateway(openai_models(fake_openai))
    ips = ("127.0.23.1", "127.0.23.2")
    keys = {ip: gw.key_for(ip) for ip in ips}
    database = tmp_path / "gw0" / "data" / "apiarium.sqlite3"
    assert database.is_file()
    backup = tmp_path / "backups" / "apiarium.sqlite3"
    backup.parent.mkdir()
    [block] = [b for b in re.findall(r"```bash\n(.*?)```", section(OPERATIONS, "Backups"), re.S)
               if ".backup(" in b]
    command = block.replace("data/apiarium.sqlite3", str(database)).replace(
        "/backups/apiarium.sqlite3", str(backup))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    async def restored() -> tuple[set[str], dict[str, str]]:
        keys_of = await KeyService(backup, secret_beside(database)).open()
        try:           # the copy holds the keys (a key would also be derived anew: look first)
            held = {rec.ip for rec in await keys_of.all_records("active")}
            return held, {ip: (await keys_of.key_for_ip(ip))[0] for ip in ips}
        finally:
            await keys_of.close()
    assert asyncio.run(restored()) == (set(ips), keys)
