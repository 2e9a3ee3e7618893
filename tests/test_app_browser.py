"""End to end in a real headless Chromium against ``streamlit run`` on 127.0.0.1 (started here).

One browser session walks the app as a user would: the rank explorer opens by default; a global and a
per-layer rank change move the numbers and the plots; an evaluation runs; every page is visited; a method
dropped from the sidebar's choice leaves every plot on every page; the rank configuration is downloaded,
edited, uploaded and applied; the compressed model is downloaded; the optimizer sets the ranks.
The app runs on a tiny random BERT and a CSV task (see app_support.prepare_app_environment).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from app_support import CHROMIUM, CHROMIUM_ARGS, prepare_app_environment, streamlit_server, wait_for_rerun

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

QUERY = "attention.self.query (32×32)"


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    env = prepare_app_environment(root)
    with streamlit_server(env, root / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(url)
            wait_for_rerun(page)
            page.wait_for_selector(".js-plotly-plot")
            yield page, root
        finally:
            browser.close()


def _no_traceback(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0


def _metric(page, label: str) -> str:
    metric = page.locator("[data-testid='stMetric']").filter(has=page.get_by_text(label, exact=True)).first
    return metric.locator("[data-testid='stMetricValue']").inner_text()


def _slider(page, label: str):
    return page.locator("[data-testid='stSlider']").filter(has_text=label).first.locator("input[type='range']")


def _press(page, locator, key: str) -> None:
    locator.focus()
    locator.press(key)
    wait_for_rerun(page)


def _choose(page, option: str) -> None:
    """Click an option of a segmented control."""
    page.locator("[data-testid='stButtonGroup'] button").filter(has_text=option).click()
    wait_for_rerun(page)


def _plot_y(page, title: str) -> list:
    """The y values of the first trace of the plot whose title contains ``title``, as plotly.js drew them
    (``data`` may still hold the binary-encoded arrays the server sent)."""
    return page.evaluate(
        """title => {
            const plot = [...document.querySelectorAll('.js-plotly-plot')]
                .find(p => (p.layout?.title?.text || '').includes(title));
            return plot ? Array.from(plot._fullData[0].y) : null;  // _fullData: decoded arrays
        }""", title)


def _trace_names(page, title: str) -> set[str]:
    """The names of the traces of the plot whose title contains ``title``."""
    return set(page.evaluate(
        """title => [...document.querySelectorAll('.js-plotly-plot')]
            .find(p => (p.layout?.title?.text || '').includes(title))._fullData.map(trace => trace.name)""", title))


def _go(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a").filter(has_text=title).click()
    wait_for_rerun(page)
    page.wait_for_selector(f"h1:has-text('{title.split(' ')[0]}')")
    _no_traceback(page)


def test_walk_through_every_page(browser_page):
    page, root = browser_page
    shots = root / "screenshots"
    shots.mkdir()

    # Rank explorer is the landing page, with a slider per layer (one block at a time) and live plots.
    assert page.locator("h1").first.inner_text() == "Rank explorer"
    assert page.locator("[data-testid='stSlider']").count() == 7  # the global control + block 0's 6 layers
    kept = _metric(page, "Target weights kept")
    errors = _plot_y(page, "Reconstruction error")
    assert errors and len(errors) == 12

    _press(page, _slider(page, "Rank ratio"), "End")  # global: every layer at full rank, so kept dense
    assert _slider(page, QUERY).get_attribute("aria-valuetext") == "32"
    assert _metric(page, "Target weights kept") != kept
    assert max(_plot_y(page, "Reconstruction error")) < 1e-3
    assert page.get_by_text("12 layer(s) kept dense").count() == 1
    assert page.locator("[data-testid='stAlert']").filter(has_text="break-even").count() == 0  # dense: no factors

    _press(page, _slider(page, QUERY), "Home")  # per layer: one layer down to rank 1
    assert _slider(page, QUERY).get_attribute("aria-valuetext") == "1"
    after = _plot_y(page, "Reconstruction error")
    assert after[0] > 0.5 and max(after[1:]) < 1e-3
    page.screenshot(path=str(shots / "rank_explorer.png"))

    # The other block's sliders, and every layer as a table, are one click away.
    _choose(page, "Block 1")
    assert _slider(page, QUERY).get_attribute("aria-valuetext") == "32"  # block 1's query kept full rank
    _choose(page, "Table of every layer")
    assert page.locator("[data-testid='stSlider']").count() == 1
    page.wait_for_selector("[data-testid='stDataFrame']")  # the editable table (drawn on a canvas, loaded lazily)
    _choose(page, "Sliders, one block at a time")
    _choose(page, "Block 0")
    assert _slider(page, QUERY).get_attribute("aria-valuetext") == "1"

    # Evaluate both methods on a small subset; the results appear and are remembered.
    limit = page.locator("[data-testid='stNumberInput']").filter(has_text="Validation examples").locator("input")
    limit.fill("16")
    limit.press("Enter")
    wait_for_rerun(page)
    page.get_by_role("button", name="Evaluate SVD and FWSVD").click()
    wait_for_rerun(page)
    page.wait_for_selector(".js-plotly-plot >> text=at the current ranks")
    _no_traceback(page)

    # Every other page.
    _go(page, "Fisher")
    page.wait_for_selector(".js-plotly-plot")
    assert page.locator("[data-testid='stAlert']").filter(has_text="loaded from the cache").count() == 1
    page.screenshot(path=str(shots / "fisher.png"))

    _go(page, "Compare")
    page.get_by_role("button", name="Run sweep").click()
    wait_for_rerun(page)
    page.wait_for_selector(".js-plotly-plot >> text=against model size")
    _no_traceback(page)
    page.screenshot(path=str(shots / "compare.png"))

    # Drop SVD from the methods compared: gone from this page's plots, and from the next page's.
    assert _trace_names(page, "Error against size") == {"SVD, uniform", "SVD, allocated", "FWSVD, uniform",
                                                        "FWSVD, allocated"}
    page.locator("[data-testid='stSidebar']").get_by_role("button", name="Remove SVD", exact=True).click()
    wait_for_rerun(page)
    assert _trace_names(page, "Error against size") == {"FWSVD, uniform", "FWSVD, allocated"}

    _go(page, "Model & task")
    assert _metric(page, "Blocks · target layers") == "2 · 12"
    page.screenshot(path=str(shots / "model_and_task.png"))

    # Export: download the ranks, change one, upload them back, apply.
    _go(page, "Export")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download ranks (JSON)").click()
    config = json.loads(Path(download.value.path()).read_text())
    assert config["format"] == "fwsvd-compression-config"
    assert config["rank_pattern"]["bert.encoder.layer.0.attention.self.query"] == 1
    config["rank_pattern"]["bert.encoder.layer.0.attention.self.query"] = 7
    edited = root / "ranks.json"
    edited.write_text(json.dumps(config))
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(edited))
    wait_for_rerun(page)
    page.get_by_role("button", name="Use these ranks").click()
    page.wait_for_selector("text=These ranks are the current ranks.")
    wait_for_rerun(page)
    _no_traceback(page)

    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name="Download the FWSVD model").click()
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        assert "model/config.json" in archive.namelist()
    with page.expect_download() as download:
        page.get_by_role("button", name="Evaluations (CSV)").click()
    assert "fwsvd" in Path(download.value.path()).read_text()
    page.screenshot(path=str(shots / "export.png"))

    # The uploaded ranks are the explorer's ranks now; the evaluations of other ranks are remembered.
    _go(page, "Rank explorer")
    assert _slider(page, QUERY).get_attribute("aria-valuetext") == "7"
    assert _trace_names(page, "Reconstruction error") == {"FWSVD"}

    # The optimizer spreads the global control's weights over the layers.
    page.get_by_role("button", name="Optimize ranks for this budget").click()
    wait_for_rerun(page)
    page.wait_for_selector("text=Layers kept dense")
    _no_traceback(page)


def test_bad_input_shows_a_message_not_a_traceback(browser_page):
    page, _ = browser_page
    _go(page, "Model & task")
    page.locator("[data-testid='stRadio']").filter(has_text="Model").get_by_text("Local directory").click()
    wait_for_rerun(page)
    path = page.locator("[data-testid='stTextInput']").filter(has_text="Model directory").locator("input")
    path.fill("/nowhere/model")
    path.press("Enter")
    wait_for_rerun(page)
    page.get_by_role("button", name="Use this model and task").click()
    wait_for_rerun(page)
    assert page.locator("[data-testid='stAlert']").filter(has_text="not found").count() >= 1
    _no_traceback(page)


FIVE = ("SVD", "FWSVD", "ASVD", "Whitened SVD", "K-FAC SVD")


def test_five_methods_metric_labels_are_whole_at_1280_px(browser_page):
    page, _ = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    _go(page, "Rank explorer")
    sidebar = page.locator("[data-testid='stSidebar']")
    for label in FIVE:
        if sidebar.get_by_role("button", name=f"Remove {label}", exact=True).count():
            continue
        choice = sidebar.locator("[data-testid='stMultiSelect'] input")
        choice.fill(label)  # the list shows only the matching method
        choice.press("Enter")
        page.keyboard.press("Escape")
        wait_for_rerun(page)
    page.wait_for_selector("[data-testid='stMetricLabel'] >> text=K-FAC SVD accuracy")
    _no_traceback(page)
    labels = page.evaluate(
        """() => [...document.querySelectorAll("[data-testid='stMetricLabel']")].map(label => ({
            text: label.innerText.trim(),
            cut: [label, ...label.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1),
        }))""")
    shown = {label["text"]: label["cut"] for label in labels}
    for method in FIVE:
        for name in (f"{method} accuracy", f"{method} weighted error"):
            assert name in shown and not shown[name], (name, labels)  # drawn whole, not cut to "…"
    assert not any(shown.values()), labels
