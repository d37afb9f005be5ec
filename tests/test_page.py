"""The page at / on --http-port, in a real headless Chromium (Debian's, driven by Playwright): it loads, lists the
models, streams a greedy generation that equals the native Generate's, shows a model's per-step predictions over
the WebSocket Stream, and leaves a screenshot behind (test-artifacts/page.png)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers import ServerThread

sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium (apt-get install chromium; .ci/run installs it as root)")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def served(base_config):
    with ServerThread(replace(base_config, http_port=0)) as running:
        yield running


def test_the_page_streams_a_generation_and_shows_every_steps_predictions(served):
    with served.client() as native:
        expected = native.generate_text("lstm", "The return ", temperature=0.0, max_tokens=60, top_p=1.0)
        steps = [s for r in native.stream("lstm", ["The ret"], top_k=3) for s in r.steps]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{served.app.http.port}/")
            page.wait_for_selector("#model option[value='lstm'], #model option:text-is('lstm')", state="attached")
            page.select_option("#model", "lstm")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "60")
            page.click("#generate")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=30_000)
            assert page.inner_text("#status") == "done (length)"
            assert page.text_content("#output") == expected
            page.click("#stream")
            page.wait_for_selector("#steps tr", timeout=30_000)
            rows = [[cell.text_content() for cell in row.query_selector_all("td")] for row in page.query_selector_all("#steps tr")]
            assert [row[0] for row in rows] == [f'"{s.text}"' for s in steps]
            assert rows[-1][2:] == [f'"{c.text}" {c.probability:.2f}' for c in steps[-1].next]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
