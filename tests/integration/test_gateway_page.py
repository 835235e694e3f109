"""The live page in a real browser: Debian's headless Chromium driven by Python playwright.

Chromium's fake capture device plays ``beckett.wav`` once as the microphone; the page
(served by the gateway at ``/?token=T``) captures it through its AudioWorklet at the
AudioContext's rate, resamples to 16 kHz and streams it; a real worker transcribes it.
The test clicks Start, waits until the file has been sent, clicks Stop, waits for the
``session_end``, and reads the finals the page shows. A screenshot is saved to
``.cache/test-artifacts/gateway_page.png``.

Chromium comes from ``scripts/system-deps.sh`` (``apt-get install chromium``, run by
``make setup``); ``playwright install`` is never used (it downloads a browser build).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from streamscribe.schemas.topics import Topics
from tests.integration.gateway_procs import TOKENS, gateway, proxy_thread
from tests.integration.pipeline import worker
from tests.wer import word_errors

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".cache" / "test-artifacts"
FILE_S = 9.963  # beckett.wav
SENT_ENOUGH_S = 11.0  # the file, and the silence after it that ends the last utterance
WAIT_MS = 180_000


def _chromium_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


def test_the_live_page_transcribes_the_microphone_in_chromium(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run `make setup` (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "beckett.wav"
    shutil.copy(assets / "beckett.wav", wav)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path, gateway_final_wait_s="120") as gw,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=_chromium_args(wav)
        )
        try:
            page = browser.new_page()
            page.goto(f"{gw.http_url}/?token={TOKENS[0]}")
            assert page.inner_text("#status") == "Press Start to transcribe your microphone."
            page.click("#start")
            page.wait_for_function(
                f"Number(document.body.dataset.sentSeconds || 0) >= {SENT_ENOUGH_S}",
                timeout=WAIT_MS,
            )
            rate = page.evaluate("state.ctx.sampleRate")
            page.click("#stop")
            page.wait_for_function("document.body.dataset.state === 'ended'", timeout=WAIT_MS)
            finals = page.eval_on_selector_all(".final", "els => els.map(e => e.dataset.text)")
            shown = page.eval_on_selector_all(".final", "els => els.map(e => e.innerText)")
            greyed = page.eval_on_selector_all(".partial", "els => els.length")
            status = page.inner_text("#status")
            latency = page.inner_text("#latency")
            close_code = page.evaluate("document.body.dataset.closeCode")
            page.screenshot(path=str(ARTIFACTS / "gateway_page.png"), full_page=True)
        finally:
            browser.close()
    text = " ".join(finals)
    print(f"\npage ({rate:g} Hz context): {text!r}; {latency}; {status}")
    # The file through `streamscribe stream` gives 1 error ("Fell better"); captured by
    # the browser (resampled 16 -> 44.1 -> 16 kHz, at a random phase against the VAD's
    # frames) near-tie words flip: 0-3 errors over 8 runs ("No"/"Though", "Fail"/"Fare"/
    # "Fale"), the text of the 12-word reference otherwise intact.
    assert word_errors(references["beckett.wav"], text) <= 3, text
    assert shown[0] == f"[00:00] mic: {finals[0]}"
    assert all(line.startswith("[00:0") and " mic: " in line for line in shown), shown
    assert greyed == 0  # every partial was replaced by its final
    assert status.endswith(f"complete: {len(finals)} finals.")
    assert latency.endswith(f"{len(finals)} finals")
    assert close_code == "1000"


def test_the_page_reconnects_after_a_network_drop_and_the_session_goes_on(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, assets: Path, references: dict[str, str]
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: run `make setup` (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    wav = tmp_path / "beckett.wav"
    shutil.copy(assets / "beckett.wav", wav)
    with (
        worker(kafka_bootstrap, topics, tmp_path, group=f"g-{uuid.uuid4().hex[:6]}"),
        gateway(kafka_bootstrap, topics, tmp_path, gateway_final_wait_s="120") as gw,
        proxy_thread(gw.port) as (proxy, port, loop),
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=_chromium_args(wav)
        )
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?token={TOKENS[0]}")  # through the proxy
            page.click("#start")
            page.wait_for_selector(".final", timeout=WAIT_MS)
            loop.call_soon_threadsafe(proxy.drop_all)  # the network fails after a final
            page.wait_for_function("document.body.dataset.reconnects === '1'", timeout=WAIT_MS)
            page.wait_for_function(
                f"Number(document.body.dataset.sentSeconds || 0) >= {SENT_ENOUGH_S}",
                timeout=WAIT_MS,
            )
            page.click("#stop")
            page.wait_for_function("document.body.dataset.state === 'ended'", timeout=WAIT_MS)
            lines = page.eval_on_selector_all(".final", "els => els.map(e => e.dataset.line)")
            finals = page.eval_on_selector_all(".final", "els => els.map(e => e.dataset.text)")
            page.screenshot(path=str(ARTIFACTS / "gateway_page_reconnect.png"), full_page=True)
        finally:
            browser.close()
    text = " ".join(finals)
    print(f"\npage after a reconnect: {text!r}")
    assert lines == [f"0/{i}" for i in range(len(lines))]  # every final once, none missed
    # The file through `streamscribe stream` gives 1 error ("Fell better"); captured by
    # the browser (resampled 16 -> 44.1 -> 16 kHz, at a random phase against the VAD's
    # frames) near-tie words flip: 0-3 errors over 8 runs ("No"/"Though", "Fail"/"Fare"/
    # "Fale"), the text of the 12-word reference otherwise intact.
    assert word_errors(references["beckett.wav"], text) <= 3, text
