"""A real browser (Debian's Chromium driven by Playwright) against the launched app.

Loads the page, runs a quick prune on the default model, sees the weight curve, the importance
heatmap and both sample grids render, triggers a bad input and sees the error, saves a screenshot
(``DIFFPRUNE_SCREENSHOT=path`` keeps it, e.g. for the README).
"""
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def page(live_app):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make browser)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(live_app)
        yield page
        browser.close()


def _plot_rendered(page, selector: str) -> None:
    page.wait_for_selector(f"{selector} .js-plotly-plot .main-svg", state="attached")


def _set_number(page, label: str, value) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")


def _choose(page, label: str, value: str) -> None:
    dropdown = page.get_by_label(label, exact=True)
    dropdown.click()
    dropdown.fill(value)
    page.get_by_role("option", name=value, exact=True).click()


def test_first_screen_has_dense_samples_and_the_weight_curve(page):
    page.wait_for_selector("#dense-grid img")
    _plot_rendered(page, "#schedule-plot")


def test_quick_prune_renders_every_result(page, tmp_path):
    _choose(page, "Criterion", "magnitude")
    _choose(page, "Granularity", "channel")
    _set_number(page, "eval samples (2-256)", 4)
    _set_number(page, "sampling steps", 5)
    page.get_by_role("button", name="Prune & evaluate").click()
    page.wait_for_selector("text=Done")
    page.wait_for_selector("#dense-grid img")
    page.wait_for_selector("#pruned-grid img")
    page.get_by_role("tab", name="Summary").click()
    summary = page.locator("#summary-table").get_by_text("speed-up (dense median / pruned median)")
    summary.first.wait_for(state="attached")
    page.get_by_role("tab", name="Importance").click()
    _plot_rendered(page, "#importance-plot")
    assert page.locator("#importance-plot .heatmaplayer, #importance-plot .hm").count() >= 1
    _plot_rendered(page, "#schedule-plot")
    page.get_by_role("tab", name="Samples").click()
    screenshot = tmp_path / "finished-run.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("DIFFPRUNE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DIFFPRUNE_SCREENSHOT"])


def test_bad_input_shows_an_error_and_keeps_the_results(page):
    _set_number(page, "eval samples (2-256)", 100000)
    page.get_by_role("button", name="Prune & evaluate").click()
    page.wait_for_selector("text=number of samples must be between 2 and 256")
    # The previous run's grids are still on screen.
    assert page.locator("#pruned-grid img").count() == 1
    _set_number(page, "eval samples (2-256)", 4)
