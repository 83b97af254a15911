"""The demo page in a real browser: headless Debian Chromium driven by Playwright.

A waitress server (the one ``cifar-dvc-serve`` runs) serves a tiny model on loopback; the test
uploads a generated photo through the page's file picker and checks that the page draws five
bars whose labels are the API's answer for the same photo, shows the 32x32 images, and asks
nothing of any other host (the chart library is vendored: the page works offline).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from cifar_dvc.serve.app import create_app
from cifar_dvc.serve.predictor import Predictor
from cifar_dvc.serve.urlfetch import UrlFetcher
from tests.test_serve_api import build_tiny_model, decode_data_url, serve_in_thread, upload
from tests.test_serve_fetch import PhotoServer, jpeg_bytes

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Flask]]:
    """The app served by waitress on 127.0.0.1 (URL fetches allowed to loopback for the URL test)."""
    model = build_tiny_model(tmp_path_factory.mktemp("browser") / "tiny.keras")
    app = create_app(Predictor(model), UrlFetcher(allow_private=True, timeout=5.0))
    with serve_in_thread(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} not installed (.ci/run installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, base: str) -> tuple[Page, list[str]]:
    """A fresh page on ``base`` that records (and blocks) every request to another origin."""
    page = browser.new_page()
    foreign: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        if url.startswith((base, "data:", "blob:")):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    page.route("**/*", guard)
    page.goto(base + "/")
    # Selectors, not wait_for_function: the page's Content-Security-Policy forbids eval, and
    # Playwright's string predicates are evaluated with it.
    page.wait_for_selector("body[data-state=ready]", state="attached")
    return page, foreign


def chart_labels(page: Page) -> list[str]:
    """The labels of the chart's bars, top to bottom, once the page has an answer."""
    page.wait_for_selector("body[data-state=done], body[data-state=error]", state="attached")
    return page.eval_on_selector_all("#chart rect.bar", "bars => bars.map(b => b.dataset.label)")


def test_upload_a_photo_and_see_the_apis_top_five(browser: Browser, live_app: tuple[str, Flask],
                                                  tmp_path: Path) -> None:
    base, app = live_app
    photo = jpeg_bytes(320, 240, color=(30, 160, 60))
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    answer = upload(app.test_client(), photo).get_json()
    expected = [p["label"] for p in answer["predictions"]]

    page, foreign = open_page(browser, base)
    expect(page.locator("#model-name")).to_have_text("tiny")
    page.set_input_files("#file-input", str(path))
    assert chart_labels(page) == expected
    assert len(expected) == 5
    texts = page.eval_on_selector_all("#chart .bar-label", "els => els.map(e => e.textContent)")
    assert texts == expected
    widths = page.eval_on_selector_all("#chart rect.bar", "els => els.map(e => e.getBBox().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    sizes = page.eval_on_selector_all(
        "img.pixels", "els => els.map(e => [e.naturalWidth, e.naturalHeight, e.src.slice(0, 15)])")
    assert sizes == [[32, 32, "data:image/png;"], [32, 32, "data:image/png;"]]
    assert page.eval_on_selector("#photo", "e => e.src").startswith("blob:")
    assert page.is_visible("#unblurred") and not page.is_visible("#error")
    assert foreign == []
    page.close()


def test_paste_a_url_and_see_errors(browser: Browser, live_app: tuple[str, Flask]) -> None:
    base, app = live_app
    with PhotoServer(jpeg_bytes(200, 200, color=(40, 40, 200))) as photos:
        page, foreign = open_page(browser, base)
        page.fill("#url-input", photos.url("/photo.jpg"))
        page.click("#url-form button")
        labels = chart_labels(page)
        answer = app.test_client().post("/api/predict", json={"url": photos.url("/photo.jpg")}).get_json()
        assert labels == [p["label"] for p in answer["predictions"]]
        photo_src = page.eval_on_selector("#photo", "e => e.src")
        assert decode_data_url(photo_src).shape[:2] == (200, 200)  # the server's thumbnail

        page.evaluate("document.body.dataset.state = 'ready'")
        page.fill("#url-input", photos.url("/not-an-image"))
        page.click("#url-form button")
        page.wait_for_selector("body[data-state=error]", state="attached")
        assert "not an image" in page.text_content("#error")
        assert foreign == []
        page.close()
