"""The homepage tests' browser: Debian's Chromium (``/usr/bin/chromium``, which scripts/test
installs) driven by playwright, one per test module.  A module that imports this is skipped,
saying why, where either is missing.

    from tests.browser import OUT      # the module's tests take conftest's ``browser``
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.sync_api import Browser, sync_playwright
except ImportError:                                     # pragma: no cover
    pytest.skip("playwright is not installed (pip install playwright): the homepage tests "
                "drive a real browser", allow_module_level=True)
if not CHROMIUM.exists():                               # pragma: no cover
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium): the homepage tests drive "
                f"a real browser", allow_module_level=True)

OUT = Path(__file__).resolve().parent.parent / "test-output"      # screenshots
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def launch() -> Iterator[Browser]:
    """Chromium, up until the generator is closed (conftest's ``browser`` fixture)."""
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
