"""Shared by the browser tests: headless Chromium (Debian's, driven by Playwright), one person's browser
context, and where screenshots go (``tests/artifacts/screenshots``, gitignored; ``BROKER_TEST_ARTIFACTS``
moves it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import IN_CI

CHROMIUM = os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("BROKER_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))
SCREENSHOTS = ARTIFACTS / "screenshots"
# The sizes the pages must work at: a laptop and a phone.
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def chromium():
    if not Path(CHROMIUM).exists():
        message = f"chromium is required for the browser tests and is missing at {CHROMIUM}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Approver:
    """One person's browser context; records every page's HTML for the no-secrets check."""

    def __init__(self, browser, base_url: str, key: str, **context) -> None:
        self.context = browser.new_context(base_url=base_url, **context)
        self.page = self.context.new_page()
        self.key = key
        self.seen_html: list[str] = []

    def goto(self, path: str) -> None:
        self.page.goto(path)
        self.record()

    def record(self) -> None:
        self.seen_html.append(self.page.content())

    def sign_in(self, next_path: str = "/ui/requests") -> None:
        self.goto(next_path)
        assert "/ui/sign-in" in self.page.url  # not signed in yet: sent to the sign-in page
        self.page.fill("#key", self.key)
        with self.page.expect_navigation():
            self.page.click("main button[type=submit]")
        self.record()
        assert self.page.url.endswith(next_path), self.page.inner_text("main")

    def decide(self, request_id: str, decision: str, reason: str) -> None:
        self.goto(f"/ui/requests/{request_id}")
        self.page.fill("#decision-reason", reason)
        with self.page.expect_navigation():
            self.page.click(f"#{decision}")
        self.record()

    def sign_out(self) -> None:
        with self.page.expect_navigation():
            self.page.click("header form.signout button")
        self.record()
        assert "/ui/sign-in" in self.page.url

    def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def overflow(self) -> int:
        """How many CSS pixels the page is wider than the window (0: no horizontal scrolling)."""
        return self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    def close(self) -> None:
        self.context.close()
