"""The rank explorer's ranks in a real headless Chromium against ``streamlit run`` on 127.0.0.1 (started here):
what only a browser shows, the value each widget displays after a mode switch, a table edit, a page change.

The reported sequence (a table edit, then the sliders showed rank 1 and the next nudge wrote it into the whole
block), and a short seeded random walk over the controls; after each step every slider, the table and the
headline show the expected ranks (kept here, by the library's rules). The app runs on a tiny random BERT and a
CSV task (see app_support.prepare_app_environment).
"""

from __future__ import annotations

import random

import pytest

from app_support import (CHROMIUM, CHROMIUM_ARGS, app_environment, app_module, edit_table_cell, slider_values,
                         streamlit_server, table_column, wait_for_rerun)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

RANK_COLUMN = 2  # layer, shape, rank, …
SLIDERS = "Sliders, one block at a time"
TABLE = "Table of every layer"


@pytest.fixture(scope="module")
def explorer(tmp_path_factory):
    """A fresh session on the rank explorer, and the analyses its ranks are judged by."""
    from playwright.sync_api import sync_playwright

    from fwsvd.config import FisherConfig
    from fwsvd.view.explorer import Source, load_view, snapshot_key

    root = tmp_path_factory.mktemp("ranks_browser")
    with app_environment(root) as env, streamlit_server(env, root / "streamlit.log") as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})

            def fresh_page():
                page = context.new_page()
                page.set_default_timeout(120_000)
                page.goto(url)
                wait_for_rerun(page)
                page.wait_for_selector(".js-plotly-plot")
                return page

            fresh_page().close()  # the first draw saves the explorer's snapshot, whose analyses judge the ranks
            analyses = load_view(snapshot_key(Source.from_environment(), FisherConfig())).analyses
            yield fresh_page, analyses
        finally:
            browser.close()


class Expected:
    """The ranks and the global rule as they must be."""

    def __init__(self, analyses):
        self.analyses = analyses
        self.rule, self.values = "rank_ratio", {"rank_ratio": 0.33, "param_budget": 0.33}
        self.ranks = self.rule_ranks()
        self.editor = SLIDERS  # the per-layer editor drawn
        self.block = "bert.encoder.layer.0"  # the block whose sliders are drawn

    def rule_ranks(self) -> dict[str, int]:
        from fwsvd.view.rank_plan import uniform_ranks

        return uniform_ranks(self.analyses, self.rule, self.values[self.rule])


def _label(analyses, layer: str) -> str:
    """A per-layer slider's label: its name in the block and its shape."""
    analysis = analyses[layer]
    return f"{layer.split('.', 4)[-1]} ({analysis.out_features}×{analysis.in_features})"


def _metric(page, label: str) -> str:
    metric = page.locator("[data-testid='stMetric']").filter(has=page.get_by_text(label, exact=True)).first
    return metric.locator("[data-testid='stMetricValue']").inner_text()


def _choose(page, option: str) -> None:
    page.locator("[data-testid='stButtonGroup'] button").filter(has_text=option).click()
    wait_for_rerun(page)


def _switch_editor(page, expected: Expected, editor: str) -> None:
    _choose(page, editor)
    expected.editor = editor


def _press(page, label: str, key: str) -> None:
    slider = page.locator("[data-testid='stSlider']").filter(
        has=page.get_by_text(label, exact=True)).first.locator("input[type='range']")
    slider.focus()
    slider.press(key)
    wait_for_rerun(page)


def check(page, expected: Expected, step: str) -> None:
    """Every slider and table cell on the page shows the expected rank; the headline counts those ranks."""
    from fwsvd.view.rank_plan import kept_params

    assert page.locator("[data-testid='stException']").count() == 0, step
    shown = slider_values(page)
    names = list(expected.ranks)
    if expected.editor == TABLE:
        page.wait_for_selector(f"#glide-cell-{RANK_COLUMN}-{len(names) - 1}", state="attached")
        assert table_column(page, RANK_COLUMN, len(names)) == [str(expected.ranks[name]) for name in names], step
    else:
        layers = {_label(expected.analyses, name): name for name in names if name.startswith(expected.block + ".")}
        per_layer = {label: value for label, value in shown.items() if label in layers}
        assert per_layer == {label: str(expected.ranks[name]) for label, name in layers.items()}, step
    label = {"rank_ratio": "Rank ratio", "param_budget": "Parameter budget"}[expected.rule]
    custom = expected.ranks != expected.rule_ranks()
    control = label + (" · custom" if custom else "")
    assert float(shown[control]) == pytest.approx(expected.values[expected.rule]), (step, shown)
    assert page.get_by_role("button", name="Reset every layer").count() == int(custom), step
    kept = app_module("ui_format").count(kept_params(expected.ranks, expected.analyses))
    assert _metric(page, "Target weights kept") == kept, step


def test_a_table_edit_then_the_sliders_show_the_stored_ranks_and_a_nudge_moves_one_layer(explorer):
    fresh_page, analyses = explorer
    page = fresh_page()
    expected = Expected(analyses)
    names = list(expected.ranks)
    check(page, expected, "open")

    _switch_editor(page, expected, TABLE)
    edit_table_cell(page, 1, RANK_COLUMN, 25)  # block 0's key
    expected.ranks[names[1]] = 25
    check(page, expected, "table edit")
    _switch_editor(page, expected, SLIDERS)  # every slider of the block showed 1 here
    check(page, expected, "back to the sliders")
    _press(page, _label(analyses, names[0]), "ArrowRight")  # the nudge that wrote rank 1 into the whole block
    expected.ranks[names[0]] += 1
    check(page, expected, "nudge")

    _switch_editor(page, expected, TABLE)  # a second edit, and a third of the same cell, each take
    edit_table_cell(page, 2, RANK_COLUMN, 30)
    expected.ranks[names[2]] = 30
    check(page, expected, "second edit")
    edit_table_cell(page, 2, RANK_COLUMN, 20)
    expected.ranks[names[2]] = 20
    check(page, expected, "same cell again")
    edit_table_cell(page, 8, RANK_COLUMN, 5)
    expected.ranks[names[8]] = 5
    check(page, expected, "a layer of block 1")
    _switch_editor(page, expected, SLIDERS)
    _choose(page, "Block 1")
    expected.block = "bert.encoder.layer.1"
    check(page, expected, "block 1's sliders")
    page.close()


def test_a_random_walk_over_the_controls_keeps_every_widget_on_the_stored_ranks(explorer):
    from fwsvd.view.rank_plan import optimize

    fresh_page, analyses = explorer
    page = fresh_page()
    expected = Expected(analyses)
    names = list(expected.ranks)
    generator = random.Random(3)
    done = []
    for _ in range(16):
        table = expected.editor == TABLE
        action = generator.choice(["global", "rule", "layer", "table", "optimize", "block", "editor", "reset",
                                   "page"])
        if action == "global":
            key = generator.choice(["ArrowRight", "ArrowLeft"])
            label = {"rank_ratio": "Rank ratio", "param_budget": "Parameter budget"}[expected.rule]
            control = label + (" · custom" if expected.ranks != expected.rule_ranks() else "")
            _press(page, control, key)
            value = expected.values[expected.rule] + (0.01 if key == "ArrowRight" else -0.01)
            expected.values[expected.rule] = round(value, 2)
            expected.ranks = expected.rule_ranks()
        elif action == "rule":
            expected.rule = "param_budget" if expected.rule == "rank_ratio" else "rank_ratio"
            page.locator("[data-testid='stRadio']").filter(has_text="Set every layer by").get_by_text(
                {"rank_ratio": "Rank ratio", "param_budget": "Parameter budget"}[expected.rule]).click()
            wait_for_rerun(page)
            expected.ranks = expected.rule_ranks()
        elif action == "layer" and not table:
            layer = generator.choice([name for name in names if name.startswith(expected.block + ".")])
            key = generator.choice(["ArrowRight", "ArrowLeft", "Home", "End"])
            _press(page, _label(analyses, layer), key)
            full = analyses[layer].full_rank
            expected.ranks[layer] = {"ArrowRight": min(full, expected.ranks[layer] + 1),
                                     "ArrowLeft": max(1, expected.ranks[layer] - 1), "Home": 1, "End": full}[key]
        elif action == "table" and table:
            row, rank = generator.randrange(len(names)), generator.randint(1, 32)
            edit_table_cell(page, row, RANK_COLUMN, rank)
            expected.ranks[names[row]] = rank
        elif action == "optimize":
            page.get_by_role("button", name="Optimize ranks for this budget").click()
            wait_for_rerun(page)
            expected.ranks = optimize(analyses, expected.rule_ranks(), "fwsvd").ranks
        elif action == "block" and not table:
            block = generator.choice(["0", "1"])
            _choose(page, f"Block {block}")
            expected.block = f"bert.encoder.layer.{block}"
        elif action == "reset" and page.get_by_role("button", name="Reset every layer").count():
            page.get_by_role("button", name="Reset every layer").click()
            wait_for_rerun(page)
            expected.ranks = expected.rule_ranks()
        elif action == "page":
            other = generator.choice(["Export", "Model & task"])
            page.locator("[data-testid='stSidebarNav'] a").filter(has_text=other).click()
            wait_for_rerun(page)
            page.locator("[data-testid='stSidebarNav'] a").filter(has_text="Rank explorer").click()
            wait_for_rerun(page)
            page.wait_for_selector(".js-plotly-plot")
        else:
            action = "editor"
            _switch_editor(page, expected, SLIDERS if table else TABLE)
        done.append(action)
        check(page, expected, " → ".join(done[-4:]))
    assert {"global", "rule", "optimize", "editor", "page"} <= set(done), done
    page.close()
