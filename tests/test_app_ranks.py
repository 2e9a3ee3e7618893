"""The rank explorer's ranks under AppTest: the stored ranks are the only state, and every widget that shows a
rank (the global control, each per-layer slider, the table) equals them after any sequence of edits.

The expected ranks are kept here independently (what each action must do, by the library's own rules), and
after every step the store, every drawn widget, the headline and the Export page's config are checked against
them. The app runs on a tiny random BERT and a small CSV task (FWSVD_APP_* env)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from app_support import app_environment, drawn_rank_sliders, edit_table, keyed, rank_slider

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 180
EXPLORER = "pages/3_rank_explorer.py"
OTHER_PAGES = ["pages/1_model_and_task.py", "pages/2_fisher.py", "pages/4_compare.py", "pages/5_export.py"]
STEPS = 50
NOTHING_TO_COMPRESS = ("every layer is kept dense at the current ranks (each at or past its break-even rank, where "
                       "its two factors would hold as many weights as the layer): there is nothing to compress; "
                       "lower a rank on the Rank explorer")
EVERY_CONTROL = {"global", "rule", "slider", "table", "optimize", "block", "editor", "reset", "page", "upload"}


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    with app_environment(tmp_path_factory.mktemp("ranks")) as env:
        yield env


@pytest.fixture
def app(app_env) -> AppTest:
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _analyses():
    """The analyses every rank is judged by: the explorer's snapshot, as the app saved it."""
    from fwsvd.config import FisherConfig
    from fwsvd.view.explorer import Source, load_view, snapshot_key

    return load_view(snapshot_key(Source.from_environment(), FisherConfig())).analyses


class Expected:
    """What the ranks and the global rule must be, kept apart from the app."""

    def __init__(self, analyses):
        from fwsvd.view.rank_plan import uniform_ranks

        self.analyses = analyses
        self.rule = "rank_ratio"
        self.values = {"rank_ratio": 0.33, "param_budget": 0.33}
        self.ranks = uniform_ranks(analyses, "rank_ratio", 0.33)

    def rule_ranks(self) -> dict[str, int]:
        from fwsvd.view.rank_plan import uniform_ranks

        return uniform_ranks(self.analyses, self.rule, self.values[self.rule])

    def apply_rule(self, rule: str, value: float | None = None) -> None:
        self.rule = rule
        if value is not None:
            self.values[rule] = value
        self.ranks = self.rule_ranks()


def _page(at: AppTest) -> str:
    return at.title[0].value


def check(at: AppTest, expected: Expected, step: str) -> None:
    """Every widget the run drew equals the stored ranks, and those are the expected ones."""
    from fwsvd.view.rank_plan import compressed_ranks, kept_params

    import ui_format

    assert not at.exception, (step, at.exception)
    nothing_to_compress = _page(at) == "Export" and not compressed_ranks(expected.ranks, expected.analyses)
    if nothing_to_compress:  # every layer at or past break-even: the page says so instead of a config
        assert [error.value for error in at.error] == [NOTHING_TO_COMPRESS], step
    else:
        assert not at.error, (step, [error.value for error in at.error])
    state = at.session_state["rank_state"]
    assert state.ranks == expected.ranks, step
    assert (state.rule, state.values[state.rule]) == (expected.rule, pytest.approx(expected.values[expected.rule]))
    if nothing_to_compress:
        return
    if _page(at) == "Export":
        config = json.loads(at.code[0].value)
        assert config["rank_pattern"] == compressed_ranks(expected.ranks, expected.analyses), step
        return
    if _page(at) != "Rank explorer":
        return
    for layer, value in drawn_rank_sliders(at).items():
        assert value == expected.ranks[layer], (step, layer)
    if at.data_editor:
        table = keyed(at.data_editor, "rank_table").value
        assert dict(zip(table["layer"], table["rank"])) == expected.ranks, step
    else:
        assert len(drawn_rank_sliders(at)) == 6, step  # one block's sliders
    assert keyed(at.radio, "global_mode").value == expected.rule, step
    control = keyed(at.slider, f"global_{expected.rule}")
    assert control.value == pytest.approx(expected.values[expected.rule]), step
    custom = expected.ranks != expected.rule_ranks()
    assert control.label.endswith("· custom") is custom, step
    assert bool([button for button in at.button if button.key == "reset_ranks"]) is custom, step
    kept = next(metric.value for metric in at.metric if metric.label == "Target weights kept")
    assert kept == ui_format.count(kept_params(expected.ranks, expected.analyses)), step


def test_per_layer_edits_make_the_global_control_custom_with_a_reset(app):
    at = app
    expected = Expected(_analyses())
    check(at, expected, "open")
    layer = "bert.encoder.layer.0.attention.self.key"
    rank_slider(at, layer).set_value(25).run()
    expected.ranks[layer] = 25
    check(at, expected, "one layer")
    assert any("1 of 12 layer(s) differ" in caption.value for caption in at.caption)
    at.button(key="reset_ranks").click().run()
    expected.ranks = expected.rule_ranks()
    check(at, expected, "reset")


def test_switching_to_the_parameter_budget_sets_the_ranks_at_once(app):
    at = app
    expected = Expected(_analyses())
    kept = next(metric.value for metric in at.metric if metric.label == "Target weights kept")
    keyed(at.radio, "global_mode").set_value("param_budget").run()
    expected.apply_rule("param_budget")
    check(at, expected, "param budget")
    assert next(metric.value for metric in at.metric if metric.label == "Target weights kept") != kept
    keyed(at.slider, "global_param_budget").set_value(0.5).run()
    expected.apply_rule("param_budget", 0.5)
    check(at, expected, "param budget 0.5")
    keyed(at.radio, "global_mode").set_value("rank_ratio").run()  # each rule keeps its own value
    expected.apply_rule("rank_ratio")
    check(at, expected, "back to the rank ratio")


def test_the_table_clamps_and_ignores_cleared_cells(app):
    at = app
    expected = Expected(_analyses())
    at.button_group(key="rank_editor").set_value("table").run()
    edit_table(at, {0: 99, 1: None, 2: 3})  # past the full rank: dense; cleared: unchanged
    names = list(expected.ranks)
    expected.ranks[names[0]] = 32
    expected.ranks[names[2]] = 3
    check(at, expected, "table")
    edit_table(at, {2: 3})  # no change: the table is drawn afresh all the same
    check(at, expected, "same rank again")


class Walk:
    """One random user: each step drives one control, as a person would, and updates the expected ranks."""

    def __init__(self, at: AppTest, expected: Expected, generator: random.Random):
        self.at, self.expected, self.random = at, expected, generator

    def step(self) -> str:
        on_explorer = _page(self.at) == "Rank explorer"
        actions = ([self.global_value, self.switch_rule, self.layer_slider, self.table_edit, self.optimize,
                    self.switch_block, self.switch_editor, self.reset, self.leave] if on_explorer
                   else [self.upload, self.come_back] if _page(self.at) == "Export" else [self.come_back])
        return self.random.choice(actions)()

    def global_value(self) -> str:
        value = round(self.random.uniform(0.02, 1.0), 2)
        keyed(self.at.slider, f"global_{self.expected.rule}").set_value(value).run()
        self.expected.apply_rule(self.expected.rule, value)
        return f"global {self.expected.rule} {value}"

    def switch_rule(self) -> str:
        rule = "param_budget" if self.expected.rule == "rank_ratio" else "rank_ratio"
        keyed(self.at.radio, "global_mode").set_value(rule).run()
        self.expected.apply_rule(rule)
        return f"rule {rule}"

    def layer_slider(self) -> str:
        if self.at.data_editor:
            return self.switch_editor()
        layer = self.random.choice(sorted(drawn_rank_sliders(self.at)))
        rank = self.random.randint(1, self.expected.analyses[layer].full_rank)
        rank_slider(self.at, layer).set_value(rank).run()
        self.expected.ranks[layer] = rank
        return f"slider {layer} {rank}"

    def table_edit(self) -> str:
        if not self.at.data_editor:
            return self.switch_editor()
        names = list(self.expected.ranks)
        rows = self.random.sample(range(len(names)), self.random.randint(1, 3))
        edits = {}
        for row in rows:
            full = self.expected.analyses[names[row]].full_rank
            edits[row] = self.random.choice([None, self.random.randint(1, full + 4)])
            if edits[row] is not None:
                self.expected.ranks[names[row]] = min(full, edits[row])
        edit_table(self.at, edits)
        return f"table {edits}"

    def optimize(self) -> str:
        from fwsvd.view.rank_plan import optimize

        method = self.random.choice(self.at.selectbox(key="optimize_method").options)
        method = {"SVD": "svd", "FWSVD": "fwsvd"}[method]
        self.at.selectbox(key="optimize_method").set_value(method).run()
        self.at.button(key="optimize_ranks").click().run()
        self.expected.ranks = optimize(self.expected.analyses, self.expected.rule_ranks(), method).ranks
        return f"optimize {method}"

    def switch_block(self) -> str:
        if self.at.data_editor:
            return self.switch_editor()
        block = self.random.choice(["bert.encoder.layer.0", "bert.encoder.layer.1"])
        self.at.button_group(key="slider_block").set_value(block).run()
        return f"block {block}"

    def switch_editor(self) -> str:
        editor = "sliders" if self.at.data_editor else "table"
        self.at.button_group(key="rank_editor").set_value(editor).run()
        return f"editor {editor}"

    def reset(self) -> str:
        if not [button for button in self.at.button if button.key == "reset_ranks"]:
            return self.global_value()
        self.at.button(key="reset_ranks").click().run()
        self.expected.ranks = self.expected.rule_ranks()
        return "reset"

    def leave(self) -> str:
        page = self.random.choice(OTHER_PAGES)
        self.at.switch_page(page).run()
        return f"page {page}"

    def come_back(self) -> str:
        self.at.switch_page(EXPLORER).run()
        return "page explorer"

    def upload(self) -> str:
        """A rank document naming some layers (the others, and those at or past break-even: dense), loaded and
        applied on the Export page."""
        from fwsvd.view.rank_config import is_past_break_even
        from fwsvd.view.rank_plan import with_dense

        names = self.random.sample(list(self.expected.ranks), self.random.randint(1, len(self.expected.ranks)))
        ranks = {name: self.random.randint(1, self.expected.analyses[name].full_rank - 1) for name in names}
        self.at.file_uploader(key="upload_ranks").set_value(("ranks.json", json.dumps(ranks).encode(),
                                                             "application/json")).run()
        applied = [button for button in self.at.button if button.key == "apply_uploaded_ranks"]
        if applied:
            applied[0].click().run()
            analyses = self.expected.analyses
            factorized = {name: rank for name, rank in ranks.items()
                          if not is_past_break_even(rank, analyses[name].out_features, analyses[name].in_features)}
            self.expected.ranks = with_dense(factorized, analyses)
        return f"upload {ranks}"


@pytest.mark.parametrize("seed", [0, 1])
def test_random_edits_through_every_control_keep_every_widget_on_the_stored_ranks(app, seed):
    at = app
    expected = Expected(_analyses())
    check(at, expected, "open")
    walk = Walk(at, expected, random.Random(seed))
    done = []
    for _ in range(STEPS):
        done.append(walk.step())
        check(at, expected, " → ".join(done[-4:]))
    assert {step.split()[0] for step in done} >= EVERY_CONTROL, done  # the walk went everywhere
