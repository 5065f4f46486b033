"""A real browser (Debian's chromium, driven by Playwright) runs examples/chat/static/index.html
served by the edge: two users chat over WebSockets, and one leaving shows up for the other."""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

CHROMIUM = os.environ.get("DURO_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _skip_reason() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
async def test_chat_page_in_chromium(examples_cluster):
    from playwright.async_api import async_playwright, expect

    url = examples_cluster.edge_url(0)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            alice_ctx = await browser.new_context()
            bob_ctx = await browser.new_context()  # its own localStorage: its own userId
            alice = await alice_ctx.new_page()
            bob = await bob_ctx.new_page()
            await alice.goto(f"{url}/?room=browser-room&username=alice")
            await expect(alice.locator("#status")).to_have_text("in #browser-room as alice",
                                                               timeout=15_000)
            await bob.goto(f"{url}/?room=browser-room&username=bob")
            await expect(bob.locator("#status")).to_have_text("in #browser-room as bob",
                                                             timeout=15_000)
            await expect(alice.locator("#log")).to_contain_text("bob joined (2 here)")

            await alice.fill("#text", "hello from a real browser")
            await alice.press("#text", "Enter")
            for page in (alice, bob):
                await expect(page.locator("#log .msg").last).to_contain_text(
                    "hello from a real browser")
            await expect(bob.locator("#log .msg .who").last).to_have_text("alice")

            await bob.fill("#text", "hi alice")  # typing indicator, then the message
            await expect(alice.locator("#typing")).to_contain_text("bob typing")
            await bob.press("#text", "Enter")
            await expect(alice.locator("#log .msg").last).to_contain_text("hi alice")

            await bob_ctx.close()  # the tab goes away: alice hears it promptly
            await expect(alice.locator("#log")).to_contain_text("bob left (1 here)",
                                                               timeout=10_000)

            # a page loaded later gets the history on join
            carol = await (await browser.new_context()).new_page()
            await carol.goto(f"{url}/?room=browser-room&username=carol")
            await expect(carol.locator("#log")).to_contain_text("hello from a real browser")
            await expect(carol.locator("#log")).to_contain_text("hi alice")
        finally:
            await browser.close()
