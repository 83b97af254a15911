"""The demo page in a real browser: headless Debian Chromium driven by Playwright.

A waitress server (the one ``cifar-dvc-serve`` runs) serves a folder of tiny models on loopback
(two that load, one broken file); the tests upload generated photos through the page's file
picker and check that the page draws five bars whose labels are the API's answer for the same
photo, shows the 32x32 images, lists every model in its picker (the broken one with its reason),
shows each model's top three side by side in the compare view, and lays the occlusion map over
the model's input and the photo where the API says covering hurts most; and that it asks nothing
of any other host (the chart library is vendored: the page works offline).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from cifar_dvc.serve.app import create_app
from cifar_dvc.serve.predictor import Predictor
from cifar_dvc.serve.urlfetch import UrlFetcher
from cifar_dvc.serve.variants import Variants
from tests.test_serve_api import build_tiny_model, decode_data_url, serve_in_thread, upload
from tests.test_serve_compare import CROP_LEFT, REGION, build_region_model, region_photo, sidecar
from tests.test_serve_fetch import PhotoServer, jpeg_bytes

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Flask]]:
    """The app served by waitress on 127.0.0.1 (URL fetches allowed to loopback for the URL test).

    Its models: tiny (the default), region (looks only at one region) and broken (not a zip).
    """
    folder = tmp_path_factory.mktemp("browser")
    build_tiny_model(folder / "tiny.keras")
    build_region_model(folder / "region.keras")
    sidecar(folder / "broken.keras").with_suffix(".keras").write_bytes(b"not a zip")
    models = Variants.from_folder(folder, Predictor, default="tiny")
    app = create_app(models, UrlFetcher(allow_private=True, timeout=5.0))
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


def test_the_picker_lists_every_model_and_why_one_is_unavailable(browser: Browser,
                                                                  live_app: tuple[str, Flask]) -> None:
    base, _ = live_app
    page, foreign = open_page(browser, base)
    options = page.eval_on_selector_all(
        "#model-picker option", "els => els.map(e => [e.value, e.disabled, e.selected])")
    assert options == [["broken", True, False], ["region", False, False], ["tiny", False, True]]
    assert page.is_visible("#unavailable")
    page.click("#unavailable-summary")
    reason = page.text_content("#unavailable-list li[data-model=broken]")
    assert reason is not None and "not a Keras model file" in reason
    page.select_option("#model-picker", "region")
    expect(page.locator("#model-name")).to_have_text("region")
    assert foreign == []
    page.close()


def test_compare_all_shows_each_models_top_three(browser: Browser, live_app: tuple[str, Flask],
                                                  tmp_path: Path) -> None:
    base, app = live_app
    photo = jpeg_bytes(300, 240, color=(200, 60, 90))
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo)
    api = app.test_client().post("/api/compare", data={"image": (io.BytesIO(photo), "p.jpg")},
                                 content_type="multipart/form-data").get_json()
    expected = {a["model"]: [p["label"] for p in a.get("predictions", [])] for a in api["models"]}
    assert expected["tiny"] != expected["region"]  # the two models disagree: the view must show both

    page, foreign = open_page(browser, base)
    assert page.is_disabled("#compare-button")  # nothing to compare before a photo
    page.set_input_files("#file-input", str(path))
    chart_labels(page)
    page.click("#compare-button")
    page.wait_for_selector("body[data-compare=done]", state="attached")
    cards = page.eval_on_selector_all(
        ".compare-card", "cards => cards.map(c => [c.dataset.model, "
        "Array.from(c.querySelectorAll('rect.bar')).map(b => b.dataset.label)])")
    assert dict(cards) == expected and [name for name, _ in cards] == ["broken", "region", "tiny"]
    assert all(len(expected[name]) == 3 for name in ("region", "tiny"))
    error = page.text_content(".compare-card[data-model=broken] .compare-error")
    assert error is not None and "not a Keras model file" in error
    assert page.get_attribute(".compare-card.current", "data-model") == "tiny"
    assert foreign == []
    page.close()


def test_the_occlusion_map_lies_over_the_input_and_the_photo(browser: Browser, live_app: tuple[str, Flask],
                                                             tmp_path: Path) -> None:
    base, _ = live_app
    path = tmp_path / "region.png"
    path.write_bytes(region_photo())
    page, foreign = open_page(browser, base)
    page.select_option("#model-picker", "region")
    expect(page.locator("#model-name")).to_have_text("region")
    page.set_input_files("#file-input", str(path))
    assert chart_labels(page)[0] == "airplane"
    assert page.is_visible("#occlusion-canvas") and page.is_visible("#photo-occlusion")
    # The map's opacity, pixel by pixel, as the page painted it on the 32x32 input...
    alpha = np.array(page.eval_on_selector(
        "#occlusion-canvas",
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((v, i) => i % 4 === 3)")).reshape(32, 32)
    assert alpha.max() > 150 and alpha[REGION].min() > 0
    assert np.unravel_index(np.argmax(alpha), alpha.shape)[0] in range(16, 24)
    assert alpha[:12].max() == 0 and alpha[:, 16:].max() == 0  # nowhere the model does not look
    # ...and over the photo: the same map, on the centre square the input was cut from.
    photo_alpha = page.eval_on_selector(
        "#photo-occlusion",
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((v, i) => i % 4 === 3)")
    assert photo_alpha == alpha.ravel().tolist()
    box = page.eval_on_selector("#photo-occlusion", "c => c.getBoundingClientRect().toJSON()")
    photo_box = page.eval_on_selector("#photo", "e => e.getBoundingClientRect().toJSON()")
    scale = photo_box["width"] / 48  # the photo is 48x32, its square starts 8 pixels in
    assert box["left"] - photo_box["left"] == pytest.approx(CROP_LEFT * scale, abs=1)
    assert box["width"] == pytest.approx(32 * scale, abs=1)
    assert box["height"] == pytest.approx(photo_box["height"], abs=1)
    caption = page.text_content("#occlusion-caption")
    assert caption is not None and "P(airplane)" in caption
    assert foreign == []
    page.close()
