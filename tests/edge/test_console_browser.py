"""The console in a real browser (Debian's chromium, driven by Playwright, launched as the chat
test does): on a real cluster, find an object in the inspector, migrate it from the page, and see
the inspector, the activity log and the map follow. Screenshots at laptop and phone widths go to
tests/artifacts/console/ (printed; git-ignored)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from tests.edge.test_browser import ARGS, CHROMIUM, _skip_reason

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(240)]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}


def _http(url: str, data: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
async def test_console_finds_and_migrates_an_object(examples_cluster):
    from playwright.async_api import async_playwright, expect

    c = examples_cluster
    name = "console-browser"
    for _ in range(3):
        await asyncio.to_thread(_http, f"{c.edge_url(0)}/counter/{name}/increment", b"")
    before = await asyncio.to_thread(
        _http, f"{c.edge_admin_url(0)}/console/api/object?binding=COUNTER&name={name}")
    owner = before["node"]
    target = next(n.name for n in c.nodes if n.name != owner)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots in {ARTIFACTS}")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport=LAPTOP)).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(c.console_url(0))
            await expect(page.locator("#status")).to_have_text("live", timeout=15_000)
            for n in c.nodes:  # the map shows every node, healthy
                card = page.locator(f'.node[data-node="{n.name}"]')
                await expect(card).to_be_visible(timeout=15_000)
                await expect(card.locator(".badge.up")).to_have_text("healthy")
            await expect(page.locator('#bindings tr[data-binding="COUNTER"]')).to_be_visible()

            # Find the object.
            await page.select_option("#inspect-binding", "COUNTER")
            await page.fill("#inspect-name", name)
            await page.click("#inspect-go")
            await expect(page.locator("#obj-owner")).to_have_text(owner, timeout=15_000)
            await expect(page.locator("#obj-epoch")).to_have_text(str(before["epoch"]))
            await expect(page.locator("#obj-storage")).to_contain_text("1 key ·")
            await expect(page.locator("#obj-history")).to_contain_text("never moved")
            await expect(page.locator("#obj-replicas li")).to_have_count(
                len(before["group"]["replicas"]))
            await page.screenshot(path=str(ARTIFACTS / "laptop-inspector.png"), full_page=True)

            # Without the admin token the page cannot move it.
            await expect(page.locator("#migrate-btn")).to_be_disabled()
            await page.fill("#admin-token", c.console_token)
            await page.click("#admin-save")
            await expect(page.locator("#admin-state")).to_have_text("actions on")

            await page.select_option("#migrate-target", f"node:{target}")
            await page.click("#migrate-btn")
            await expect(page.locator("#migrate-result")).to_contain_text(
                f"moved to {target}", timeout=60_000)
            # The inspector follows it (pushed every 2 s), with the move in its history ...
            await expect(page.locator("#obj-owner")).to_have_text(target, timeout=15_000)
            await expect(page.locator("#obj-epoch")).to_have_text(str(before["epoch"] + 1))
            history = page.locator("#obj-history tbody tr")
            await expect(history).to_have_count(1)
            await expect(history.first).to_contain_text(owner)
            await expect(history.first).to_contain_text(target)
            # ... the activity log shows the migration as it happened ...
            await expect(page.locator('#events li[data-kind="migration"]').first).to_contain_text(
                f"{owner} -> {target}", timeout=15_000)
            # ... and the map: the object is in memory on the target once it is called there.
            await asyncio.to_thread(_http, f"{c.edge_url(0)}/counter/{name}/increment", b"")
            objects = page.locator(f'.node[data-node="{target}"] .objects')
            await expect(objects).not_to_have_text("0", timeout=15_000)
            await page.screenshot(path=str(ARTIFACTS / "laptop-after-migration.png"),
                                  full_page=True)

            # A phone-sized window: the same page, one column, nothing cut off sideways.
            phone = await (await browser.new_context(viewport=PHONE, is_mobile=True,
                                                     has_touch=True)).new_page()
            await phone.goto(c.console_url(0) + f"#binding=COUNTER&name={name}")
            await expect(phone.locator("#status")).to_have_text("live", timeout=15_000)
            await expect(phone.locator("#obj-owner")).to_have_text(target, timeout=15_000)
            await expect(phone.locator(f'.node[data-node="{target}"]')).to_be_visible()
            # opened after the move, it still lists it (the nodes remember their recent moves)
            await expect(phone.locator('#events li[data-kind="migration"]').first).to_contain_text(
                f"{owner} -> {target}")
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
            await phone.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
            assert not errors, errors
        finally:
            await browser.close()
    for shot in ("laptop-inspector.png", "laptop-after-migration.png", "phone.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
