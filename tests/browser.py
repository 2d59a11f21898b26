"""A real headless Chromium for tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is not reachable here, so it launches the system binary
(``executable_path``); Debian's package is installed when it is missing. Without Chromium or
Playwright the test is ``unavailable`` (tests/services.py): skipped with the reason, failed
under CI. Recipe: "Headless Chromium" in
/work/shared/RECIPES.md. tests/conftest.py registers the fixtures once for every test module:
a module that imported them itself would get a second session Playwright, which cannot start
while the first one runs ("Sync API inside the asyncio loop").
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services import apt_install, require_module, unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Where Debian's package puts the launcher (a shell script that execs /usr/lib/chromium).
DEBIAN_CHROMIUM = "/usr/bin/chromium"
#: ``--no-sandbox``: the tests run as root, where Chromium's sandbox refuses to start.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--headless=new"]


def find_chromium() -> str | None:
    """The Chromium executable on PATH or at Debian's location, or None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access(DEBIAN_CHROMIUM, os.X_OK):
        found = DEBIAN_CHROMIUM
    return found


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of a Chromium executable; installs Debian's ``chromium`` when there is none."""
    found = find_chromium()
    if found is None:
        failure = apt_install("chromium")
        found = find_chromium()
        if found is None:
            unavailable(
                "Chromium not found and not installed: "
                + (failure or "apt-get install chromium put no chromium on PATH")
            )
    return found


@pytest.fixture(scope="session")
def chromium(chromium_path: str) -> Iterator[Browser]:
    """A Playwright ``Browser`` on the system Chromium for the session, closed in teardown."""
    sync_api = require_module(
        "playwright.sync_api", "Playwright is not installed (pip install playwright)"
    )
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises AssertionError if it is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
