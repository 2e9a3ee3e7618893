"""Several people open different pages at the same moment on a freshly started server (headless Chromium,
one context each, against ``streamlit run`` on 127.0.0.1 started here): every page draws, none shows an error.

Their scripts run in parallel threads of one process and import torch and transformers for the first time
together; transformers' lazy module failed such imports ("cannot import name 'AutoConfig'") until the app
imported them once under one lock (app/ui_imports.py).
"""

from __future__ import annotations

import asyncio

import pytest

from app_support import CHROMIUM, CHROMIUM_ARGS, prepare_app_environment, streamlit_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

#: URL path of each page, and its title.
PAGES = {"model_and_task": "Model & task", "fisher": "Fisher importance", "": "Rank explorer",
         "compare": "Compare methods", "export": "Export"}
STATE = "document.querySelector(\"[data-testid='stApp']\")?.getAttribute('data-test-script-state')"


async def _open(browser, url: str) -> tuple[str, list[str]]:
    """Open ``url`` in a new context; its title and every traceback or error box it shows once drawn."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1100})
    try:
        page = await context.new_page()
        page.set_default_timeout(300_000)
        await page.goto(url)
        await page.wait_for_selector("h1")
        await page.wait_for_function(f"{STATE} === 'notRunning'")
        await page.wait_for_timeout(1_000)  # a rerun the first run asked for
        await page.wait_for_function(f"{STATE} === 'notRunning'")
        shown = await page.locator("[data-testid='stException']").all_inner_texts()
        shown += await page.locator("[data-testid='stAlertContentError']").all_inner_texts()
        return await page.locator("h1").first.inner_text(), shown
    finally:
        await context.close()


async def _open_all(base: str) -> list[tuple[str, list[str]]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            return await asyncio.gather(*(_open(browser, f"{base}/{path}") for path in PAGES))
        finally:
            await browser.close()


def test_every_page_opened_at_once_on_a_fresh_server_draws_without_error(tmp_path):
    env = prepare_app_environment(tmp_path)
    with streamlit_server(env, tmp_path / "streamlit.log") as url:
        opened = asyncio.run(_open_all(url))
    assert [title for title, _ in opened] == list(PAGES.values())
    assert [shown for _, shown in opened] == [[] for _ in PAGES]
    log = (tmp_path / "streamlit.log").read_text(errors="replace")
    assert "ImportError" not in log and "Traceback" not in log
