"""A real browser (Debian's Chromium driven by Playwright) against the launched app.

Loads the page (dense samples, weight curve, cost estimate), clicks presets in an order that
used to reset the granularity, runs a channel, an unstructured and an N:M (OBS-Diff 2:4) prune,
checks every view renders, then sends a bad hub id and sees the error while the grids and the
export stay, and last runs a prune with a small recovery budget and sees the three grids
(dense | one-shot | recovered), the loss curve and the recovered export. Saves a screenshot of the OBS-Diff 2:4 run (``DIFFPRUNE_SCREENSHOT=path`` keeps it,
e.g. for the README).
"""
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 400_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def page(live_app):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make browser)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
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


def _value(page, label: str) -> str:
    return page.get_by_label(label, exact=True).input_value()


def _wait_done(page, label: str) -> str:
    """Wait until the status line reports the run of ``label`` (a spec label) as done."""
    page.wait_for_function(
        "label => { const t = document.querySelector('#status')?.innerText || ''; "
        "return t.includes('Done in') && t.includes(label); }", arg=label)
    return page.locator("#status").inner_text()


def _no_error_in(page, selector: str) -> None:
    assert "Error" not in page.locator(selector).inner_text(), selector


def _open(page, accordion: str) -> None:
    """Open a closed accordion of advanced settings (a no-op when it is open)."""
    header = page.locator(f"#{accordion} > button").first
    if header.get_attribute("aria-expanded") != "true":
        header.click()


def test_the_first_screens_grid_is_the_shipped_file(page):
    import io
    import sys

    import numpy as np
    from PIL import Image

    page.wait_for_selector("#dense-grid img")
    source = page.locator("#dense-grid img").get_attribute("src")
    shown = Image.open(io.BytesIO(page.request.get(source).body())).convert("L")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from diffprune_ui.first_screen import grid_path

    shipped = Image.open(grid_path("ddpm-fashion-mnist", 0, 25)).convert("L")
    assert np.array_equal(np.asarray(shown), np.asarray(shipped))
    page.get_by_role("tab", name="Quality").click()
    page.wait_for_selector("#worth-it >> text=Is pruning worth it?", timeout=60_000)
    page.get_by_role("tab", name="Samples").click()


def test_the_run_button_is_in_the_first_viewport_and_reachable_on_a_phone(page, live_app):
    button = page.locator("#run-button")
    box = button.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 900, box  # 1440x900, no scrolling
    phone = page.context.browser.new_page(viewport={"width": 390, "height": 844})
    try:
        phone.goto(live_app)
        run_top = phone.locator("#run-button").bounding_box()["y"]
        # the run button comes before the advanced settings, not after every control
        for accordion in ("#calibration-settings, #recovery-settings", "#evaluation-settings", "#model-source"):
            assert run_top < phone.locator(accordion).first.bounding_box()["y"], accordion
        assert run_top < 2 * 844, run_top
        phone.locator("#run-button").scroll_into_view_if_needed()
        assert phone.locator("#run-button").is_visible()
    finally:
        phone.close()


def test_first_screen_has_dense_samples_curve_and_cost_estimate(page):
    page.wait_for_selector("#dense-grid img")
    page.get_by_role("tab", name="Timesteps").click()
    _plot_rendered(page, "#schedule-plot")
    page.get_by_role("tab", name="Samples").click()
    page.wait_for_selector("#cost-note >> text=needs no calibration")  # the quick demo's criterion


def test_presets_keep_their_granularity_in_any_order(page):
    for preset, criterion, granularity in (("NiCI-Pruning", "nici", "channel"), ("OBS-Diff", "obs", "unstructured"),
                                           ("Diff-Pruning", "taylor", "channel"), ("Tiny-Diffusion L1", "l1", "unstructured")):
        page.get_by_role("button", name=preset, exact=True).click()
        page.wait_for_timeout(1500)  # let any change event fire
        assert (_value(page, "Criterion"), _value(page, "Granularity")) == (criterion, granularity), preset
    page.wait_for_selector("#cost-note >> text=estimated calibration")  # shown after a preset too


def test_channel_unstructured_and_nm_runs_render_every_view(page, tmp_path):
    _open(page, "recovery-settings")
    _open(page, "evaluation-settings")
    _set_number(page, "recovery steps (0 = off)", 0)  # one-shot runs here; the recovery run is the last test
    for criterion, granularity in (("magnitude", "channel"), ("magnitude", "unstructured")):
        _choose(page, "Criterion", criterion)
        _choose(page, "Granularity", granularity)
        _set_number(page, "eval samples (2-256)", 4)
        _set_number(page, "sampling steps", 5)
        page.get_by_role("button", name="Prune & evaluate").click()
        _wait_done(page, f"magnitude / {granularity} @")
        page.wait_for_selector("#pruned-grid img")
        page.get_by_role("tab", name="Importance").click()
        _plot_rendered(page, "#importance-plot")
        assert page.locator("#importance-plot .heatmaplayer, #importance-plot .hm").count() >= 1
        page.get_by_role("tab", name="Samples").click()
    # OBS-Diff at 2:4: a one-shot result whose samples a person recognises (the README's screenshot).
    page.get_by_role("button", name="OBS-Diff", exact=True).click()
    page.wait_for_timeout(1500)
    _choose(page, "Granularity", "2:4")
    _set_number(page, "eval samples (2-256)", 16)
    _set_number(page, "sampling steps", 25)
    page.get_by_role("button", name="Prune & evaluate").click()
    _wait_done(page, "obs / log-decrease / 2:4 @")
    verdict = page.locator("#verdict").inner_text()  # zeroed weights: never "kept 100 %", never faster
    assert "of the prunable weights zeroed" in verdict and "run at dense speed without sparse kernels" in verdict
    page.wait_for_selector("#pruned-grid img")
    page.wait_for_timeout(1000)
    screenshot = tmp_path / "finished-run.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("DIFFPRUNE_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["DIFFPRUNE_SCREENSHOT"])
    page.get_by_role("tab", name="Summary").click()
    page.locator("#summary-table").get_by_text("speed-up (paired: dense / pruned)").first.wait_for(state="attached")
    _export_listed(page)
    page.get_by_role("tab", name="Quality").click()
    _plot_rendered(page, "#pareto-plot")
    page.wait_for_selector("#worth-it >> text=for your run")
    page.get_by_role("tab", name="Samples").click()


def _export_listed(page) -> None:
    """The export's file name (gradio splits stem and extension into two elements) carries the sparsity."""
    page.wait_for_function("() => /pct\\s*\\.zip/.test(document.querySelector('#export-file')?.innerText || '')",
                           timeout=30_000)


def test_an_error_after_a_success_keeps_grids_and_export(page):
    before = page.locator("#pruned-grid img").get_attribute("src")
    _open(page, "model-source")
    source = page.get_by_label("Model source", exact=True)
    source.fill("no-such-user/no-such-model")
    page.get_by_role("button", name="Prune & evaluate").click()
    page.wait_for_selector("text=could not load it from the Hugging Face hub")
    page.wait_for_timeout(1000)
    assert page.locator("#pruned-grid img").get_attribute("src") == before
    assert page.locator("#dense-grid img").count() == 1
    for selector in ("#pruned-grid", "#dense-grid", "#status"):
        _no_error_in(page, selector)
    page.get_by_role("tab", name="Summary").click()
    _export_listed(page)
    _no_error_in(page, "#summary-table")
    page.get_by_role("tab", name="Samples").click()
    source.fill("")


def test_a_run_with_recovery_shows_dense_one_shot_and_recovered(page):
    _choose(page, "Criterion", "magnitude")
    _choose(page, "Granularity", "channel")
    _set_number(page, "eval samples (2-256)", 4)
    _set_number(page, "sampling steps", 5)
    _set_number(page, "recovery steps (0 = off)", 5)
    page.wait_for_selector("#recovery-cost >> text=5 steps x")  # the measured cost of the budget
    page.get_by_role("button", name="Prune & evaluate").click()
    status = _wait_done(page, "magnitude / channel @")
    assert "Recovered with 5 steps" in status, status
    for selector in ("#dense-grid img", "#pruned-grid img", "#recovered-grid img"):
        page.wait_for_selector(selector)
    assert page.locator("#pair-kind").get_by_text("one-shot | recovered").count() == 1
    page.get_by_role("tab", name="Recovery").click()
    _plot_rendered(page, "#recovery-loss")
    _plot_rendered(page, "#recovery-chart")
    page.get_by_role("tab", name="Summary").click()
    page.locator("#summary-table").get_by_text("recovery wall time").first.wait_for(state="attached")
    page.wait_for_function("() => /recovered5\\s*\\.zip/.test(document.querySelector('#export-file')?.innerText || '')",
                           timeout=30_000)
    page.get_by_role("tab", name="Samples").click()


def _open_tab(browser, url: str, opened: list):
    """A new 1440x900 tab on the app, its first screen shown; kept in ``opened`` to be closed."""
    tab = browser.new_page(viewport={"width": 1440, "height": 900})
    opened.append(tab)
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.wait_for_selector("#dense-grid img")
    return tab


def test_the_few_step_preset_sets_its_sampler_and_shows_its_measured_numbers(live_app, page):
    """In a tab of its own (the other tests share one page's state): the preset that beat fewer
    sampling steps sets DPM-Solver++ and shows the shipped benchmark's numbers."""
    from playwright.sync_api import expect

    opened = []
    try:
        tab = _open_tab(page.context.browser, live_app, opened)
        tab.get_by_role("button", name="Beats fewer steps", exact=True).click()
        tab.wait_for_selector("#criterion-note >> text=4 DPM-Solver++ steps")
        assert "win" in tab.locator("#criterion-note").inner_text()
        _open(tab, "evaluation-settings")  # the sampler lives in a closed accordion
        expect(tab.get_by_label("Sampler", exact=True)).to_have_value("DPM-Solver++")
        assert (_value(tab, "Criterion"), _value(tab, "Granularity"), _value(tab, "sampling steps")) == (
            "nici", "channel", "4")
    finally:
        for tab in opened:
            tab.close()


def test_a_closed_tab_cancels_its_running_job(live_app, page):
    """A long run (Diff-Pruning: 200 recovery steps, minutes here) is started and its tab closed:
    the server cancels it, so the next tab's Quick demo starts at once instead of waiting in line."""
    import time

    browser = page.context.browser  # the module's browser: one Playwright per thread
    opened = []
    try:
        first = _open_tab(browser, live_app, opened)
        first.get_by_role("button", name="Diff-Pruning", exact=True).click()
        first.get_by_role("button", name="Prune & evaluate", exact=True).click()
        first.wait_for_function("() => (document.querySelector('#queue-note')?.innerText || '')"
                                ".includes('Starting your run now')")
        first.wait_for_timeout(3000)  # the job is computing
        first.close()
        second = _open_tab(browser, live_app, opened)
        second.get_by_role("button", name="Quick demo", exact=True).click()
        started = time.monotonic()
        second.get_by_role("button", name="Prune & evaluate", exact=True).click()
        second.wait_for_function("() => (document.querySelector('#queue-note')?.innerText || '').length > 0 "
                                 "|| (document.querySelector('#status')?.innerText || '').includes('Done in')")
        note = second.locator("#queue-note").inner_text()
        assert "waiting" not in note, note  # nothing ahead: the closed tab's job was cancelled
        second.wait_for_function("() => (document.querySelector('#status')?.innerText || '').includes('Done in')",
                                 timeout=240_000)
        assert time.monotonic() - started < 240
    finally:
        for tab in opened:
            if not tab.is_closed():
                tab.close()
