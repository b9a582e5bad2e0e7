"""Headless Chromium for the tests that look at the MLflow UI as a user does.

Playwright drives Debian's ``chromium`` (installed by ``.ci/ensure-chromium``,
which ``make test`` runs); no browser is downloaded. A missing browser fails
the test with what to run, never skips it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

#: Where Debian's package puts the browser, when PATH does not say.
DEBIAN_CHROMIUM = "/usr/bin/chromium"


class BrowserUnavailable(RuntimeError):
    """No Chromium to drive."""


def chromium_path() -> str:
    """The Chromium executable: ``chromium`` on PATH or Debian's."""
    found = shutil.which("chromium") or (DEBIAN_CHROMIUM if shutil.which(DEBIAN_CHROMIUM) else None)
    if found is None:
        raise BrowserUnavailable(
            "chromium not found: `bash .ci/ensure-chromium` installs Debian's chromium package (make test runs it)"
        )
    return found


@contextmanager
def chromium_page(*, width: int = 1400, height: int = 900) -> Iterator:
    """A Playwright page in headless Chromium, ``width`` x ``height`` CSS pixels."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        # --no-sandbox: the tests run as root on CI machines, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)  # the UI's first load is slow on a busy two-core machine
            yield page
        finally:
            browser.close()
