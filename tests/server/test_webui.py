"""The web UI in headless Chromium (Debian's `chromium`, driven by playwright's Python package;
never `playwright install`): type a prompt, see streamed text appear, save a screenshot."""

from __future__ import annotations

import os
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LLMRT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        # CI must install it (.ci/run: apt-get install -y chromium); a skip there would hide that
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def test_chat_streams_into_the_page(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(server.url + "/")
    page.wait_for_selector("#model:not(:empty)")
    assert page.text_content("#model").endswith(".gguf")
    page.fill("#n_predict", "6")
    page.fill("#temperature", "0")
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.user")
    # streamed text appears in the assistant's bubble before the reply is complete
    page.wait_for_function(
        "document.querySelector('.msg.assistant .content')?.textContent.length > 0",
        timeout=120_000,
    )
    first = page.text_content(".msg.assistant .content")
    page.wait_for_selector(".msg.assistant .speed", timeout=120_000)
    final = page.text_content(".msg.assistant .content")
    assert final.startswith(first.strip()[:1])
    assert len(final) >= len(first) > 0
    speed = page.text_content(".msg.assistant .speed")
    assert "tokens/s" in speed, speed
    shot = tmp_path / "webui.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 5000
    if os.environ.get("LLMRT_SCREENSHOT"):
        shutil.copy(shot, os.environ["LLMRT_SCREENSHOT"])
    page.close()
