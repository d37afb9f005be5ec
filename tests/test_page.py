"""The page at / on --http-port, in a real headless Chromium (Debian's, driven by Playwright): it lists the models,
streams a greedy generation that equals the native Generate's, shows a model's per-step predictions over the
WebSocket Stream, an encoder–decoder's attention equal to Generate's, and an audio model's speech probability for a
WAV file equal to the native Stream's (and from a microphone, Chromium's fake one playing that file); under
--auth-tokens it works once the token is typed. Screenshots are left in test-artifacts/."""

from __future__ import annotations

import shutil
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rnnserve.client import RnnServeClient
from rnnserve.server.security import new_token, token_line
from tests.helpers import ServerThread, describe_vad
from tests.test_values import CHUNK, RATE, silero_file, speech, streamed  # noqa: F401 (a fixture)

sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium (apt-get install chromium; .ci/run installs it as root)")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def served(base_config, repository, tmp_path_factory, silero_file):  # noqa: F811 (the fixture)
    """The test repository's models (a language model, an encoder–decoder…) and Silero VAD beside them."""
    root = tmp_path_factory.mktemp("page-models")
    shutil.copytree(repository, root, dirs_exist_ok=True)
    describe_vad(silero_file, root)
    with ServerThread(replace(base_config, repository=str(root), http_port=0)) as running:
        yield running


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A WAV of real speech between silences (16 kHz, 16 bits), and its samples as the browser decodes them."""
    folder = tmp_path_factory.mktemp("voice")
    audio = np.concatenate([np.zeros(RATE // 2, np.float32), speech("The quick brown fox jumps over the lazy dog.", folder), np.zeros(RATE, np.float32)])
    audio = np.pad(audio, (0, -len(audio) % CHUNK))
    path = folder / "voice.wav"
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(RATE)
        file.writeframes(np.round(audio * 32768).astype("<i2").tobytes())
    return path, audio


@pytest.fixture
def browser(voice):
    """Chromium, its fake microphone playing the speech WAV."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={voice[0]}", "--autoplay-policy=no-user-gesture-required",
        ])
        try:
            yield launched
        finally:
            launched.close()


def opened(browser, running, model: str):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{running.app.http.port}/")
    page.wait_for_selector(f"#model option:text-is('{model}')", state="attached")
    page.select_option("#model", model)
    return page


def keep(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def generate(page, temperature: str = "0", max_tokens: str = "60") -> None:
    page.fill("#temperature", temperature)
    page.fill("#max_tokens", max_tokens)
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=30_000)


def step_rows(page) -> list[list[str]]:
    page.wait_for_selector("#steps tr", timeout=30_000)
    return [[cell.text_content() for cell in row.query_selector_all("td")] for row in page.query_selector_all("#steps tr")]


def test_the_page_streams_a_generation_and_shows_every_steps_predictions(served, browser):
    with served.client() as native:
        expected = native.generate_text("lstm", "The return ", temperature=0.0, max_tokens=60, top_p=1.0)
        steps = [s for r in native.stream("lstm", ["The ret"], top_k=3) for s in r.steps]
    page = opened(browser, served, "lstm")
    assert page.is_hidden("#audio_section") and page.is_visible("#stream_section")
    generate(page)
    assert page.inner_text("#status") == "done (length)"
    assert page.text_content("#output") == expected
    page.click("#stream")
    rows = step_rows(page)
    assert [row[0] for row in rows] == [f'"{s.text}"' for s in steps]
    assert rows[-1][2:] == [f'"{c.text}" {c.probability:.2f}' for c in steps[-1].next]
    keep(page, "page.png")


def test_the_page_shows_an_encoder_decoders_attention(served, browser):
    with served.client() as native:
        pieces = list(native.generate("dates", source="3 May 2001", temperature=0.0, max_tokens=20))
    page = opened(browser, served, "dates")
    assert page.is_visible("#source_field") and page.is_hidden("#prompt") and page.is_hidden("#stream_section")
    page.fill("#source", "3 May 2001")
    generate(page, max_tokens="20")
    assert page.text_content("#output") == "".join(p.text for p in pieces)
    shown = np.array(page.evaluate("window.attention"))
    np.testing.assert_allclose(shown, [row.weights for p in pieces for row in p.attention], atol=1e-5)
    cells = page.query_selector_all("#attention tr")
    assert len(cells) == len(shown) + 1 and [h.text_content() for h in cells[0].query_selector_all("th")][1:] == [
        f'"{t}"' for t in pieces[0].source_tokens
    ]
    keep(page, "page-attention.png")


def test_the_page_shows_a_wav_files_speech_probability(served, browser, voice):
    path, audio = voice
    page = opened(browser, served, "vad")
    assert page.is_visible("#audio_section") and page.is_hidden("#generate_section")
    page.set_input_files("#wav", str(path))
    page.wait_for_function(f"window.speechProbabilities.length === {len(audio) // CHUNK}", timeout=60_000)
    decoded = np.array(page.evaluate("Array.from(window.decodedSamples)"), np.float32)
    np.testing.assert_allclose(decoded, audio, atol=1e-4)  # the file's samples, as the browser scales 16 bits to floats
    with served.client() as native:
        expected = streamed(native, decoded, 8)
    np.testing.assert_allclose(page.evaluate("window.speechProbabilities"), expected, atol=1e-5)
    assert (expected > 0.5).any() and (expected < 0.5).any()  # speech and silence, both drawn
    keep(page, "page-speech.png")


def test_the_page_listens_to_a_microphone(served, browser):
    """Chromium's fake microphone plays the speech WAV in a loop: the page resamples it to the model's rate in the
    browser, so the figures are not the file's exactly; speech is found in it, and silence."""
    page = opened(browser, served, "vad")
    page.click("#microphone")
    page.wait_for_function("window.speechProbabilities.length >= 150", timeout=60_000)  # ~5 s: the file, whole
    page.click("#microphone")
    heard = np.array(page.evaluate("window.speechProbabilities"))
    assert ((heard >= 0) & (heard <= 1)).all() and (heard > 0.5).any() and (heard < 0.1).any()


def test_under_tokens_the_page_works_once_the_token_is_typed(base_config, tmp_path, browser):
    token = new_token()
    (tokens := tmp_path / "tokens.txt").write_text(token_line(token, "*", "browser") + "\n")
    with ServerThread(replace(base_config, auth_tokens=str(tokens), http_port=0)) as running:
        with RnnServeClient(running.target, timeout_s=30, token=token) as native:
            expected = native.generate_text("lstm", "The return ", temperature=0.0, max_tokens=30)
            steps = [s for r in native.stream("lstm", ["The ret"], top_k=3) for s in r.steps]
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{running.app.http.port}/")
        page.wait_for_function("document.getElementById('model_status').textContent.length > 0", timeout=30_000)
        assert "needs a token" in page.inner_text("#model_status")
        page.fill("#token", token)
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#model option:text-is('lstm')", state="attached")
        page.select_option("#model", "lstm")
        generate(page, max_tokens="30")
        assert page.text_content("#output") == expected
        page.click("#stream")  # the WebSocket's token rides as a subprotocol
        assert [row[0] for row in step_rows(page)] == [f'"{s.text}"' for s in steps]
