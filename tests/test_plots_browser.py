"""The page of `dvc plots show --html-template plots/offline_template.html` draws its charts offline.

A copy of the project (``cifar_dvc.demo.copy_project``: the real ``dvc.yaml`` plots and the
committed template) gets small plot data written by the report's own functions; ``dvc plots show``
renders it, and headless Chromium opens the page with every non-file request aborted. As a
control, DVC's own page (Vega from a CDN) draws nothing under the same conditions; the project's
``.dvc/config`` sets ``plots.html_template``, so a plain ``dvc plots show`` gives the offline page.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cifar_dvc import atomic
from cifar_dvc.demo import copy_project, run_dvc
from cifar_dvc.evaluation import evaluate, figures, offline, report

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLASSES = ["airplane", "automobile", "bird"]
TEMPLATE = "plots/offline_template.html"

# Per canvas/svg: how many pixels or marks were drawn (a blank chart has none).
DRAWN = """() => Array.from(document.querySelectorAll('.vega-embed')).map(el => {
  const canvas = el.querySelector('canvas');
  if (canvas) {
    if (!canvas.width || !canvas.height) return 0;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return painted;
  }
  const svg = el.querySelector('svg');
  return svg ? svg.querySelectorAll('path, rect, text').length : 0;
})"""


def test_the_committed_template_is_generated_from_the_vendored_scripts() -> None:
    committed = Path(__file__).parent.parent / TEMPLATE
    assert committed.read_text(encoding="utf-8") == offline.render_template()
    text = committed.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text and "cdn.jsdelivr" not in text


def _write_plot_data(repo: Path) -> None:
    """What evaluate@cnn, evaluate@mlp and report would write, made by their own functions."""
    rng = np.random.default_rng(0)
    for name in ("cnn", "mlp"):
        y = rng.integers(0, 3, 30)
        pred = np.where(rng.random(30) < 0.7, y, rng.integers(0, 3, 30))
        text = evaluate.confusion_csv(y, pred, CLASSES)
        atomic.write_text(repo / "eval" / name / "confusion" / "test.csv", text)
    steps = np.arange(3.0)
    curves = {name: {split: {"step": steps, "accuracy": 0.3 + 0.1 * steps + shift + better,
                             "loss": 2 - 0.3 * steps - better}
                     for split, shift in (("train", 0.05), ("validation", 0.0))}
              for name, better in (("cnn", 0.1), ("mlp", 0.0))}
    atomic.write_text(repo / "plots" / "report" / "curves.csv", report.curves_csv(curves))
    sets = {f"sweep_{d}": {"n": 10, "accuracy": acc} for d, acc in ((25, 0.4), (75, 0.6), (150, 0.5))}
    atomic.write_text(repo / "plots" / "report" / "blur.csv",
                      report.blur_csv({"cnn": {"sets": sets}, "mlp": {"sets": sets}}))
    figures.note(repo / "plots" / "report" / "figures" / "curves.png", "Training curves", "a figure")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    repo = copy_project(tmp_path_factory.mktemp("plots") / "project")
    _write_plot_data(repo)
    offline_out = run_dvc(repo, "plots", "show", "--html-template", TEMPLATE, "-o", "offline_page")
    assert "offline_page" in offline_out.stdout
    run_dvc(repo, "plots", "show", "-o", "default_page")  # .dvc/config sets plots.html_template
    run_dvc(repo, "config", "--unset", "plots.html_template")
    run_dvc(repo, "plots", "show", "-o", "cdn_page")  # DVC's own template: Vega from a CDN
    return {name: repo / f"{name}_page" / "index.html" for name in ("offline", "default", "cdn")}


def _open_offline(url: str, timeout_ms: int = 10_000) -> tuple[list[int], int, list[str]]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    blocked: list[str] = []

    def route(r) -> None:
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.route("**/*", route)
            page.goto(url)
            try:
                page.wait_for_function("document.querySelectorAll('.vega-embed canvas, .vega-embed svg')"
                                       ".length > 0", timeout=timeout_ms)
                page.wait_for_timeout(500)  # let vega finish painting every chart
            except sync_api.TimeoutError:
                pass
            drawn = page.evaluate(DRAWN)
            images = page.evaluate("() => Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        finally:
            browser.close()
    return drawn, images, blocked


def test_offline_page_draws_every_chart_with_the_network_off(pages: dict[str, Path]) -> None:
    html = pages["offline"].read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "vegaEmbed(" in html
    drawn, images, blocked = _open_offline(pages["offline"].as_uri())
    # Curves (accuracy, loss), blur sweep and the two confusion matrices: five Vega charts. DVC also
    # writes an empty spec for each variant of params.yaml without confusion data (not evaluated here).
    empty = html.count("var spec = {};")
    assert html.count("vegaEmbed('#") - empty == 5
    assert len(drawn) == 5 + empty
    assert sorted(count > 100 for count in drawn) == [False] * empty + [True] * 5, drawn
    assert images == 1  # plots/report/figures/curves.png
    assert blocked == []


def test_plain_dvc_plots_show_uses_the_offline_template(pages: dict[str, Path]) -> None:
    assert pages["default"].read_text(encoding="utf-8") == pages["offline"].read_text(encoding="utf-8")


def test_dvc_default_page_needs_the_internet(pages: dict[str, Path]) -> None:
    drawn, _, blocked = _open_offline(pages["cdn"].as_uri(), timeout_ms=2_000)
    assert drawn == [] or not any(drawn)
    assert any("cdn.jsdelivr.net" in url for url in blocked)
