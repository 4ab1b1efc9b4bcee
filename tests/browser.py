"""Real Chromium for page tests: Playwright drives Debian's `chromium` (deploy/test.sh installs it).

Playwright's own browser download is not reachable here, so the browser is the system one, named by
MVMATCH_CHROMIUM (default /usr/bin/chromium).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = os.environ.get("MVMATCH_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="session")
def chromium():
    """One browser for the session; each test opens its own contexts (separate cookies)."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM} (deploy/test.sh installs it with apt)")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def launch(playwright):
    """The system Chromium (--no-sandbox: the suite runs as root in a container, where its sandbox cannot start)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def signed_in(browser, base_url: str, username: str, password: str):
    """A fresh browser context signed in through the login page; returns (context, page)."""
    context = browser.new_context(base_url=base_url, viewport=DESKTOP)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return context, page


def screenshot(page, name: str) -> None:
    """The page as it is now, at desktop and phone width (docs/screenshots/NAME-desktop.png, -phone.png)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        path = SCREENSHOTS / f"{name}-{label}.png"
        with Image.open(io.BytesIO(page.screenshot())) as shot:  # 256 colours: the committed files stay small
            shot.convert("RGB").quantize(colors=256).save(path, optimize=True)
    page.set_viewport_size(DESKTOP)


def drop_file(page, selector: str, path: Path, mime: str) -> None:
    """Drop a file on an element as a user dragging it from their desktop would (a DataTransfer drop event)."""
    page.evaluate("""([selector, name, mime, bytes]) => {
        const file = new File([new Uint8Array(bytes)], name, {type: mime});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        const target = document.querySelector(selector);
        for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", [selector, path.name, mime, list(path.read_bytes())])
