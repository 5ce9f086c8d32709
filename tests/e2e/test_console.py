"""The console at `/` in headless Chromium (Debian's, driven by Playwright; no browser download): paste
the key, submit from the form, watch the job finish in the gallery, play its video, keep a screenshot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.catalog import CATALOG
from services.cli.config import api_key, auth_headers
from tests.e2e.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (infra/setup.sh installs it)"),
]
ARTIFACTS = ROOT / "out" / "test-artifacts"


@pytest.fixture
def page(services: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()


def test_submit_from_the_page_watch_it_finish_and_play_the_video(services: str, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{services}/")
    page.locator("#key").fill(api_key(ROOT))
    page.locator("#key").press("Tab")  # `change`: the key is kept and the gallery loads
    expect(page.locator("#who")).to_have_text("key accepted")
    expect(page.locator("#model option[value=tiny-mochi]")).to_have_count(1)

    prompt = f"a lighthouse in a storm, from the console {uuid.uuid4().hex[:8]}"
    page.select_option("#model", "tiny-mochi")
    page.locator("#prompt").fill(prompt)
    page.locator("#width").fill("128")
    page.locator("#height").fill("96")
    page.select_option("#num_frames", "13")
    page.select_option("#quality", "low")
    page.locator("details summary").click()
    page.locator("#seed").fill("9")
    page.locator("#metadata").fill("via=console")
    # Every state the cards show is noted as it appears, to check the job was followed live.
    page.evaluate(
        """() => { window.seen = new Set();
        new MutationObserver(() => document.querySelectorAll('article.job .status')
          .forEach(s => window.seen.add(s.textContent)))
          .observe($('gallery'), {subtree: true, childList: true, characterData: true}); }"""
    )
    page.locator("#submit").click()

    card = page.locator("article.job", has_text=prompt)
    expect(card).to_have_count(1)
    # The card shows the job live, then its end, without a reload.
    expect(card.locator(".status")).to_have_text("succeeded", timeout=180_000)
    expect(card.locator("progress")).to_have_js_property("value", 1)
    expect(card.locator("button.cancel")).to_be_hidden()
    expect(card.locator("button.download")).to_be_visible()
    assert {"queued", "succeeded"} <= set(page.evaluate("() => [...window.seen]"))
    job_id = card.get_attribute("data-id")
    announced = httpx.get(f"{services}/v1/jobs/{job_id}/events", headers=auth_headers(ROOT), timeout=30)
    if "event: job.preview" in announced.text:
        # Each preview the worker announced while the page followed the job was shown as an image.
        assert int(card.get_attribute("data-previews") or 0) >= 1

    video = card.locator("video")
    expect(video).to_have_count(1)
    page.wait_for_function(
        "v => v.readyState >= 2 && v.duration > 0", arg=video.element_handle(), timeout=30_000
    )
    assert video.evaluate("v => v.videoWidth") == 128
    video.evaluate("v => v.play()")
    page.wait_for_function("v => v.currentTime > 0", arg=video.element_handle(), timeout=15_000)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
    assert (ARTIFACTS / "console.png").stat().st_size > 10_000

    with page.expect_download() as download:
        card.locator("button.download").click()
    assert download.value.suggested_filename.endswith(".mp4")
    assert errors == []


def test_a_refused_request_names_the_field_in_the_page(services: str, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{services}/")
    page.locator("#key").fill(api_key(ROOT))
    page.locator("#key").press("Tab")
    expect(page.locator("#model option[value=tiny-mochi]")).to_have_count(1)
    page.select_option("#model", "tiny-mochi")
    page.locator("#width").fill("100")
    page.locator("#submit").click()
    expect(page.locator("#form-error")).to_contain_text("422")
    expect(page.locator("#form-error")).to_contain_text("width: 100 is not allowed")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")


def test_a_wrong_key_is_said_plainly(services: str, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{services}/")
    page.locator("#key").fill("rs_not_a_key")
    page.locator("#key").press("Tab")
    expect(page.locator("#who")).to_have_text("key refused")
    expect(page.locator("#gallery .empty")).to_contain_text("401")


def test_cancel_then_delete_from_the_page(services: str, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{services}/")
    page.locator("#key").fill(api_key(ROOT))
    page.locator("#key").press("Tab")
    expect(page.locator("#model option[value=tiny-mochi]")).to_have_count(1)
    prompt = f"a long night train, to be cancelled {uuid.uuid4().hex[:8]}"
    page.select_option("#model", "tiny-mochi")
    page.locator("#prompt").fill(prompt)
    page.locator("#width").fill("256")
    page.locator("#height").fill("256")
    page.select_option("#num_frames", "49")
    page.select_option("#quality", "high")
    page.locator("#submit").click()

    card = page.locator("article.job", has_text=prompt)
    expect(card).to_have_count(1)
    job_id = card.get_attribute("data-id")
    card.locator("button.cancel").click()
    expect(card.locator(".status")).to_have_text("cancelled", timeout=120_000)
    expect(card.locator("button.cancel")).to_be_hidden()
    expect(card.locator("button.download")).to_be_hidden()

    delete = card.locator("button.delete")
    delete.click()
    expect(delete).to_have_text("Really delete?")  # two clicks, no dialog
    delete.click()
    expect(card).to_have_count(0, timeout=30_000)
    gone = httpx.get(f"{services}/v1/jobs/{job_id}", headers=auth_headers(ROOT), timeout=30)
    assert gone.status_code == 404


def test_the_form_offers_what_the_chosen_model_allows(services: str, page: Any) -> None:
    from playwright.sync_api import expect  # noqa: PLC0415

    page.goto(f"{services}/")
    expect(page.locator("#model option[value=tiny-mochi]")).to_have_count(1)
    for name in ("tiny-mochi", "tiny-wan-i2v"):
        spec = CATALOG[name]
        page.select_option("#model", name)
        expect(page.locator("#width")).to_have_attribute("max", str(spec.max_side))
        expect(page.locator("#width")).to_have_value(str(spec.default_width))
        frames = page.locator("#num_frames option").evaluate_all("os => os.map(o => Number(o.value))")
        assert frames == list(range(spec.min_frames, spec.max_frames + 1, spec.frame_step))
        qualities = page.locator("#quality option").all_text_contents()
        assert qualities == [f"{q} ({steps} steps)" for q, steps in spec.steps.items()]
        speeds = page.locator("#speed option").evaluate_all("os => os.map(o => o.value)")
        assert speeds == list(spec.speeds)
        if spec.image_to_video:
            expect(page.locator("#image_url")).to_be_visible()
        else:
            expect(page.locator("#image_url")).to_be_hidden()
