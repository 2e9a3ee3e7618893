"""Every dashboard page under AppTest: it runs without exception, its key widgets are there, and changing
them changes what it shows. The app runs on a tiny random BERT and a small CSV task (FWSVD_APP_* env)."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

from app_support import app_environment, drawn_rank_sliders, edit_table, keyed, rank_slider

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
TIMEOUT = 180  # seconds per run: the CPU is shared and the first run imports torch and transformers


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """A tiny model, a CSV task and a cache with the default Fisher already in it, named by the env."""
    with app_environment(tmp_path_factory.mktemp("app")) as env:
        yield env


@pytest.fixture
def app(app_env) -> AppTest:
    st.cache_resource.clear()  # models and stores of other tests' environments
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"pages/{page}").run()
    assert not at.exception, at.exception
    assert not at.error, [error.value for error in at.error]
    return at


def _chart(at: AppTest, key_part: str) -> dict:
    """The plotly figure (as JSON) of the chart whose element id contains ``key_part``."""
    for chart in at.get("plotly_chart"):
        if key_part in chart.proto.id:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no plotly chart with key {key_part!r}")


def _table(at: AppTest, column: str):
    """The first read-only table (as a DataFrame) with a column named ``column``."""
    for frame in at.dataframe:
        if frame.editing_mode == "read_only" and column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with a {column!r} column")


def _metric(at: AppTest, label: str) -> str:
    return next(metric.value for metric in at.metric if metric.label == label)


def _view():
    """The rank explorer's data as the app saved it (its snapshot): the analyses every figure is drawn from."""
    from fwsvd.config import FisherConfig
    from fwsvd.view.explorer import Source, load_view, snapshot_key

    return load_view(snapshot_key(Source.from_environment(), FisherConfig()))


def _summed_weighted_error(view, ranks: dict[str, int], method: str) -> float:
    """Σ over the factorized layers of the squared Fisher-weighted error at their rank (layers at or past
    break-even stay dense: 0)."""
    return sum(float(view.analyses[name].curves[method].weighted[rank]) ** 2 for name, rank in ranks.items()
               if not _past_break_even(view.analyses[name], rank))


def _past_break_even(layer, rank: int) -> bool:
    """Its two factors would hold at least the layer's weights: kept dense."""
    return rank * (layer.out_features + layer.in_features) >= layer.out_features * layer.in_features


def _decoded(values) -> list[float]:
    """A plotly array from a figure's JSON: a list, or numpy's bytes as plotly encodes them ({dtype, bdata})."""
    if isinstance(values, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def _trace_names(at: AppTest, key_part: str) -> set[str]:
    return {trace["name"] for trace in _chart(at, key_part)["data"]}


QUERY = "bert.encoder.layer.0.attention.self.query"


def test_rank_explorer_is_the_default_page_and_reacts_to_ranks(app):
    at = app
    assert at.title[0].value == "Rank explorer"
    assert not at.error
    rank_sliders = [slider for slider in at.slider if slider.key and slider.key.startswith("rank::")]
    assert len(rank_sliders) == 6  # one block's layers at a time
    assert at.button_group(key="slider_block").options == ["Block 0", "Block 1"]
    assert at.button_group(key="rank_editor").value == "sliders"
    assert not at.data_editor  # the table is drawn only when chosen
    assert rank_slider(at, QUERY).value == 11  # 0.33 of 32
    kept = _metric(at, "Target weights kept")
    errors = _chart(at, "error_chart")["data"][0]["y"]

    rank_slider(at, QUERY).set_value(24).run()  # past break-even (16)
    assert not at.exception
    assert _metric(at, "Target weights kept") != kept
    assert _chart(at, "error_chart")["data"][0]["y"] != errors
    assert _removed_delta(at) == "1 layer(s) kept dense"  # past break-even the layer stays dense
    at.button_group(key="rank_editor").set_value("table").run()
    table = at.data_editor[0].value.set_index("layer")
    assert table.loc["bert.encoder.layer.0.attention.self.query", "rank"] == 24
    assert not [slider for slider in at.slider if slider.key and slider.key.startswith("rank::")]

    keyed(at.slider, "global_rank_ratio").set_value(0.4).run()
    assert at.data_editor[0].value.set_index("layer").loc["bert.encoder.layer.1.intermediate.dense", "rank"] == 13
    at.button_group(key="rank_editor").set_value("sliders").run()
    assert rank_slider(at, QUERY).value == 13
    at.button_group(key="slider_block").set_value("bert.encoder.layer.1").run()
    assert rank_slider(at, "bert.encoder.layer.1.intermediate.dense").value == 13
    assert QUERY not in drawn_rank_sliders(at)
    assert _removed_delta(at) is None  # rank 13 < 16 everywhere: every layer factorized
    at.button_group(key="slider_block").set_value("bert.encoder.layer.0").run()

    keyed(at.radio, "global_mode").set_value("param_budget").run()
    keyed(at.slider, "global_param_budget").set_value(0.5).run()
    assert rank_slider(at, QUERY).value == 8  # half of break-even


def _removed_delta(at: AppTest):
    card = next(metric for metric in at.metric if metric.label == "Target weights removed")
    return card.proto.delta or None


@pytest.mark.parametrize("method, objective", [("fwsvd", "fisher"), ("svd", "plain")])
def test_rank_explorer_optimizes_ranks_for_the_budget(app, method, objective):
    from fwsvd.view.allocation import allocate_ranks, floor_rank

    at = app
    keyed(at.slider, "global_rank_ratio").set_value(0.3).run()  # rank 10 of 32 everywhere
    at.selectbox(key="optimize_method").set_value(method).run()
    at.button(key="optimize_ranks").click().run()
    assert not at.exception and not at.error
    view = _view()
    uniform = {name: 10 for name in view.analyses}
    budget = sum(10 * (a.out_features + a.in_features) for a in view.analyses.values())
    expected = allocate_ranks(view.analyses, budget, method=method, objective=objective,
                              min_rank=floor_rank(uniform))  # 5: half the uniform rank, unless dense
    assert expected.dense  # the case of interest: some layers stay dense
    ranks = expected.rank_or_full(view.analyses)
    block0 = drawn_rank_sliders(at)
    assert block0 == {name: rank for name, rank in ranks.items() if name.startswith("bert.encoder.layer.0.")}
    measure = "Fisher-weighted"
    uniform_error = _summed_weighted_error(view, uniform, method)
    optimized_error = _summed_weighted_error(view, ranks, method)
    whole = sum(float(a.curves[method].weighted_norm) ** 2 for a in view.analyses.values())
    # relative to the whole, sqrt(Σ‖(W − Ŵ)·D‖² / Σ‖W·D‖²): a share a reader can follow
    assert _metric(at, f"{measure} error, uniform ranks") == f"{(uniform_error / whole) ** 0.5:.1%}"
    assert _metric(at, f"{measure} error, optimized ranks") == f"{(optimized_error / whole) ** 0.5:.1%}"
    assert _metric(at, "Layers kept dense") == str(len(expected.dense))
    if method == "fwsvd":
        assert optimized_error <= uniform_error

    at.button_group(key="rank_editor").set_value("table").run()
    table = at.data_editor[0].value.set_index("layer")
    assert dict(table["rank"]) == ranks
    assert set(table.index[table["dense"]]) == set(expected.dense)
    assert (table.loc[list(expected.dense), "removed_params"] == 0).all()

    # The Export config leaves the dense layers out, so that `fwsvd compress --config` builds this model.
    at = _open(at, "5_export.py")
    at.radio(key="export_method").set_value(method).run()
    config = json.loads(at.code[0].value)
    assert config["method"] == method
    assert config["rank_pattern"] == expected.ranks
    assert config["target_modules"] == list(expected.ranks)
    from fwsvd.config import CompressionConfig
    from fwsvd.io.models import load_model
    from fwsvd.surgery.compress import compressed_copy
    from fwsvd.data.tasks import local_task

    task = local_task(os.environ["FWSVD_APP_TASK"], text_column="review", label_column="sentiment")
    model, _ = load_model(os.environ["FWSVD_APP_MODEL"], task)
    fisher = None if method == "svd" else {name: torch.ones(a.in_features) for name, a in view.analyses.items()}
    compressed, _ = compressed_copy(model, CompressionConfig.from_dict(config), fisher=fisher)
    modules = dict(compressed.named_modules())
    assert all(type(modules[name]) is torch.nn.Linear for name in expected.dense)
    assert all(modules[name].rank == rank for name, rank in expected.ranks.items())

    # Moving the global control again replaces the optimized ranks, and the gain is no longer claimed.
    at = _open(at, "3_rank_explorer.py")
    keyed(at.slider, "global_rank_ratio").set_value(0.5).run()
    assert not [metric for metric in at.metric if metric.label == "Layers kept dense"]


def test_every_figure_follows_the_chosen_methods(app):
    at = app
    assert at.multiselect(key="methods").value == ["svd", "fwsvd"]  # the paper's comparison by default
    assert _trace_names(at, "error_chart") == _trace_names(at, "spectrum_chart") == {"SVD", "FWSVD"}
    # SVD's and FWSVD's own objectives are the plain and weighted panels: no third one.
    assert {trace["yaxis"] for trace in _chart(at, "error_chart")["data"]} == {"y", "y2"}
    at.multiselect(key="methods").set_value(["fwsvd"]).run()
    assert not at.exception and not at.error
    assert _trace_names(at, "error_chart") == _trace_names(at, "spectrum_chart") == {"FWSVD"}
    labels = {metric.label for metric in at.metric}
    assert {"FWSVD weighted error", "FWSVD accuracy"} <= labels and not {"SVD weighted error", "SVD accuracy"} & labels
    assert at.selectbox(key="optimize_method").options == ["FWSVD"]
    at.button_group(key="rank_editor").set_value("table").run()
    assert [c for c in at.data_editor[0].value.columns if c.endswith("weighted_error")] == ["fwsvd_weighted_error"]

    at.number_input(key="eval_limit").set_value(16).run()
    at.button(key="evaluate").click().run()
    assert list(_table(at, "vs SVD (95% paired interval)")["model"]) == ["dense model", "FWSVD"]
    at.multiselect(key="methods").set_value(["svd", "fwsvd"]).run()
    assert at.button(key="evaluate").proto.label == "Evaluate SVD"
    at.button(key="evaluate").click().run()  # only the method not evaluated yet
    assert list(_table(at, "vs SVD (95% paired interval)")["model"]) == ["dense model", "SVD", "FWSVD"]
    assert at.button(key="evaluate").disabled

    at = _open(at, "5_export.py")
    assert at.radio(key="export_method").options == ["SVD", "FWSVD"]
    assert json.loads(at.code[0].value)["method"] == "fwsvd"
    at.multiselect(key="methods").set_value([]).run()
    assert not at.exception
    assert any("Choose at least one method" in info.value for info in at.info)


def test_a_statistics_method_is_analysed_evaluated_and_exported_end_to_end(app):
    from fwsvd.config import FisherConfig
    from fwsvd.data.tasks import local_task
    from fwsvd.fisher.task import cached_task_fisher
    from fwsvd.io.models import load_model
    from fwsvd.surgery.analyze import analyze_layers

    at = app
    at.multiselect(key="methods").set_value(["fwsvd", "asvd"]).run()  # the cache holds no token statistics yet
    assert not at.exception and not at.error, [error.value for error in at.error]
    assert _trace_names(at, "error_chart") == _trace_names(at, "spectrum_chart") == {"FWSVD", "ASVD"}
    task = local_task(os.environ["FWSVD_APP_TASK"], text_column="review", label_column="sentiment")
    model, _ = load_model(os.environ["FWSVD_APP_MODEL"], task)
    fisher = cached_task_fisher(model, task, FisherConfig(), statistics=True)
    assert fisher is not None and fisher.statistics  # gathered by the page, and cached on disk
    expected = analyze_layers(model, fisher, methods=("asvd",))
    plain = next(trace for trace in _chart(at, "error_chart")["data"] if trace["name"] == "ASVD")
    block0 = [name for name in expected if name.startswith("bert.encoder.layer.")]
    assert _decoded(plain["y"]) == pytest.approx(
        [float(expected[name].curves["asvd"].relative_plain()[11]) for name in block0])
    assert "asvd" in _view().analyses[block0[0]].curves  # in the snapshot: the next start has it at once
    # A third panel: each method in its own objective (ASVD's scaled error; FWSVD's is its weighted error).
    own = {trace["name"]: trace for trace in _chart(at, "error_chart")["data"] if trace["yaxis"] == "y3"}
    assert set(own) == {"FWSVD", "ASVD"}
    assert _decoded(own["ASVD"]["y"]) == pytest.approx(
        [float(expected[name].relative_objective("asvd")[11]) for name in block0])

    at.number_input(key="eval_limit").set_value(16).run()
    at.button(key="evaluate").click().run()
    assert not at.exception and not at.error, [error.value for error in at.error]
    assert list(_table(at, "vs SVD (95% paired interval)")["model"]) == ["dense model", "FWSVD", "ASVD"]
    at.button(key="optimize_ranks").click().run()  # for FWSVD, the first weighted method
    at.selectbox(key="optimize_method").set_value("asvd").run()
    at.button(key="optimize_ranks").click().run()
    assert not at.exception and not at.error
    at = _open(at, "5_export.py")
    at.radio(key="export_method").set_value("asvd").run()
    config = json.loads(at.code[0].value)
    assert config["method"] == "asvd"
    from fwsvd.config import CompressionConfig
    from fwsvd.io.archive import compressed_archive

    archive = compressed_archive(model, CompressionConfig.from_dict(config), fisher=fisher.importances,
                                 statistics=fisher.statistics)  # what the page's model download builds
    assert archive[:2] == b"PK"


def test_rank_explorer_table_edits_set_ranks(app):
    at = app
    at.button_group(key="rank_editor").set_value("table").run()
    edit_table(at, {1: 5})
    assert not at.exception
    assert at.data_editor[0].value.set_index("layer").loc["bert.encoder.layer.0.attention.self.key", "rank"] == 5
    at.button_group(key="rank_editor").set_value("sliders").run()
    assert rank_slider(at, "bert.encoder.layer.0.attention.self.key").value == 5


def test_rank_explorer_spectra_follow_block_and_rank(app):
    at = app
    spectrum = _chart(at, "spectrum_chart")
    assert "Singular-value spectra" in spectrum["layout"]["title"]["text"]
    assert {trace["name"] for trace in spectrum["data"]} == {"SVD", "FWSVD"}
    rank_slider(at, QUERY).set_value(3).run()
    lines = [shape["x0"] for shape in _chart(at, "spectrum_chart")["layout"]["shapes"]]
    assert 3 in lines
    at.selectbox(key="spectrum_block").set_value("bert.encoder.layer.1").run()
    assert "bert.encoder.layer.1" in at.selectbox(key="spectrum_block").value


def test_rank_explorer_evaluates_and_remembers(app):
    at = app
    assert any("Not evaluated" in info.value for info in at.info)
    at.number_input(key="eval_limit").set_value(16).run()
    at.button(key="evaluate").click().run()
    assert not at.exception and not at.error
    table = _table(at, "vs SVD (95% paired interval)")
    assert list(table["model"]) == ["dense model", "SVD", "FWSVD"]  # methods by their names
    intervals = list(table["accuracy (95% interval)"])
    assert all(re.fullmatch(r"\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\)", text) for text in intervals), intervals
    versus = list(table["vs SVD (95% paired interval)"])
    assert versus[1] == "—" and re.match(r"[+-]\d\.\d{3} \([+-]\d\.\d{3} to [+-]\d\.\d{3}\)", versus[2])
    assert table["speed-up over dense"][0] == "—" and "×" in table["speed-up over dense"][1]
    # The headline's cards read the same evaluation: the metric card names its method and metric.
    assert _metric(at, "FWSVD accuracy") == intervals[2].split()[0]
    assert _metric(at, "Dense model accuracy") == intervals[0].split()[0]
    rank_slider(at, QUERY).set_value(20).run()
    assert any("Not evaluated" in info.value for info in at.info)
    assert _metric(at, "FWSVD accuracy") == "—"
    rank_slider(at, QUERY).set_value(11).run()  # back to the evaluated setting: remembered
    assert list(_table(at, "vs SVD (95% paired interval)")["model"]) == ["dense model", "SVD", "FWSVD"]


def test_rank_explorer_draws_from_its_snapshot_without_loading_the_model(app_env, monkeypatch):
    import shutil

    snapshots = Path(app_env["FWSVD_CACHE_DIR"]) / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()  # drawn from the loaded model, which saves the snapshot
    assert len(list(snapshots.glob("*.npz"))) == 1
    drawn = (_metric(at, "Target weights kept"), _chart(at, "error_chart")["data"], _chart(at, "spectrum_chart")["data"])

    import ui_session  # the module the pages share, as the app imported it

    st.cache_resource.clear()  # as in a new server process: nothing loaded, only the snapshot on disk

    def no_model(current):
        raise AssertionError("the model was loaded although a snapshot matches its files")

    monkeypatch.setattr(ui_session, "_load", no_model)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and not at.error
    assert (_metric(at, "Target weights kept"), _chart(at, "error_chart")["data"], _chart(at, "spectrum_chart")["data"]) \
        == drawn
    rank_slider(at, QUERY).set_value(20).run()  # rank changes need no model either
    assert _metric(at, "Target weights kept") != drawn[0]

    monkeypatch.undo()  # evaluating does need the model: the button loads it
    at.number_input(key="eval_limit").set_value(16).run()
    at.button(key="evaluate").click().run()
    assert not at.exception and not at.error
    assert list(_table(at, "vs SVD (95% paired interval)")["model"]) == ["dense model", "SVD", "FWSVD"]


def test_rank_explorer_recovers_from_a_corrupt_snapshot(app_env, caplog):
    snapshots = Path(app_env["FWSVD_CACHE_DIR"]) / "snapshots"
    st.cache_resource.clear()
    AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # makes sure the snapshot exists
    for path in snapshots.glob("*.npz"):
        path.write_bytes(b"not a zip file")
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Rank explorer" and _chart(at, "error_chart")["data"]
    assert "unreadable" in caplog.text  # said in the server log, redrawn from the model, and rewritten:
    assert all(path.stat().st_size > 1000 for path in snapshots.glob("*.npz"))

    # A readable snapshot for this key that lacks what the page needs (from another version of the page).
    from fwsvd.config import FisherConfig
    from fwsvd.view.explorer import Source, snapshot_key
    from fwsvd.view.snapshot import load_snapshot, save_snapshot

    key = snapshot_key(Source.from_environment(), FisherConfig())
    complete = load_snapshot(key)
    save_snapshot(key, complete.analyses, complete.blocks, {})
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and not at.error and _chart(at, "error_chart")["data"]
    assert "lacks" in caplog.text
    assert load_snapshot(key).info == complete.info


def test_rank_explorer_first_draw_imports_no_torch(app_env):
    """The cold-start path: with a snapshot on disk, a new process draws the explorer without torch."""
    st.cache_resource.clear()
    AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()  # computes the analyses, saves the snapshot
    code = ("import json, sys\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(APP)!r}, default_timeout={TIMEOUT})\n"
            "at.run()\n"
            "print(json.dumps({'exception': [str(e.value) for e in at.exception], 'title': at.title[0].value,\n"
            "                  'sliders': len(at.slider), 'charts': len(at.get('plotly_chart')),\n"
            "                  'loaded': sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, **app_env}, cwd=APP.parents[1])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exception"] == [] and report["title"] == "Rank explorer"
    assert report["sliders"] >= 7 and report["charts"] == 3  # global + one block's sliders; errors, params, spectra
    assert report["loaded"] == []


def test_model_page_shows_the_architecture_and_reports_bad_input(app):
    at = _open(app, "1_model_and_task.py")
    assert at.title[0].value == "Model & task"
    assert _metric(at, "Blocks · target layers") == "2 · 12"
    table = _table(at, "out_features")
    assert len(table) == 12 and set(table["out_features"]) == {32, 48}
    assert at.radio(key="start_from").value == "own" and at.radio(key="data_kind").value == "file"
    assert at.selectbox(key="label_column").value == "sentiment"
    assert at.button(key="apply_source").disabled  # nothing changed yet

    at.text_input(key="data_file").set_value("/nowhere/data.csv").run()
    assert not at.exception
    assert any("not found" in error.value for error in at.error)

    at.text_input(key="data_file").set_value(os.environ["FWSVD_APP_TASK"]).run()
    at.selectbox(key="label_column").set_value("review").run()
    at.button(key="apply_source").click().run()
    assert not at.exception
    assert at.error  # a text column is no label space for a 2-label model
    assert any("Still using" in info.value for info in at.info)  # and the page says what stays in use
    at.selectbox(key="label_column").set_value("sentiment").run()
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="model_path").set_value("/nowhere/model").run()
    at.button(key="apply_source").click().run()
    assert not at.exception
    assert any("not found" in error.value for error in at.error)
    assert _metric(at, "Blocks · target layers") == "2 · 12"  # the working model stays in use


def test_model_page_hub_box_is_not_a_path_and_the_task_follows_the_model(app, tmp_path):
    import shutil

    at = _open(app, "1_model_and_task.py")
    assert at.text_input(key="model_path").value == os.environ["FWSVD_APP_MODEL"]
    at.radio(key="model_kind").set_value("hub").run()
    assert at.text_input(key="hub_id").value == ""  # not the local path of the model in use
    # A model that records its task (config.json's finetuning_task): the task follows it.
    model = tmp_path / "sst2-model"
    shutil.copytree(os.environ["FWSVD_APP_MODEL"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "finetuning_task": "sst-2"}))
    at.radio(key="model_kind").set_value("local").run()
    at.text_input(key="model_path").set_value(str(model)).run()
    assert not at.exception
    assert at.radio(key="data_kind").value == "task" and at.selectbox(key="task_name").value == "sst2"
    # Both pages count the target weights one way (m·n): the Model page's figure is the explorer's.
    target = _metric(at, "Target weights")
    _open(at, "3_rank_explorer.py")
    kept = next(metric for metric in at.metric if metric.label == "Target weights kept")
    assert kept.delta.endswith(f"of {target}")


def test_fisher_page_shows_importance_and_compares_modes(app):
    at = _open(app, "2_fisher.py")
    assert "Exact" in at.success[0].value and "cache" in at.success[0].value
    assert "Fisher importance per layer" in _chart(at, "fisher_layers")["layout"]["title"]["text"]
    heatmap = _chart(at, "fisher_heatmap")
    assert len(heatmap["data"][0]["y"]) == 10  # the 10 layers with 32 input features
    at.selectbox(key="heatmap_width").set_value(48).run()
    assert len(_chart(at, "fisher_heatmap")["data"][0]["y"]) == 2  # the two FFN output layers
    assert len(_table(at, "gini")) == 12

    snapshots = Path(os.environ["FWSVD_CACHE_DIR"]) / "snapshots"
    before = set(snapshots.glob("*.npz"))
    at.button(key="compute_other_fisher").click().run()
    assert not at.exception and not at.error
    assert set(snapshots.glob("*.npz")) == before  # a comparison's Fisher is not the explorer's: no analysis
    title = _chart(at, "fisher_exact_vs_batch")["layout"]["title"]["text"]
    assert "Exact per-example Fisher vs the batch shortcut" in title
    assert -1 <= float(_metric(at, "Median Spearman correlation")) <= 1

    at.radio(key="fisher_mode").set_value("batch").run()
    assert "Batch" in at.success[0].value  # just computed for the comparison
    at.select_slider(key="fisher_examples").set_value(64).run()
    assert any("No batch shortcut Fisher over 64" in info.value for info in at.info)
    before = set(snapshots.glob("*.npz"))
    at.button(key="compute_fisher").click().run()
    assert not at.exception
    assert "64 training examples, computed" in at.success[0].value
    assert len(set(snapshots.glob("*.npz")) - before) == 1  # the rank explorer will open from it at once


def test_compare_page_plots_allocated_against_uniform_and_sweeps_the_chosen_methods(app):
    at = _open(app, "4_compare.py")
    at.multiselect(key="sweep_ratios").set_value([0.25, 0.5]).run()
    figure = _chart(at, "allocation_chart")
    names = {trace["name"] for trace in figure["data"]}
    assert names == {"SVD, uniform", "SVD, allocated", "FWSVD, uniform", "FWSVD, allocated"}
    view = _view()
    target = sum(a.out_features * a.in_features for a in view.analyses.values())
    for trace in figure["data"]:
        method = "svd" if trace["name"].startswith("SVD") else "fwsvd"
        whole = sum(float(a.curves[method].weighted_norm) ** 2 for a in view.analyses.values())
        for ratio, params, error in zip(trace["customdata"], trace["x"], trace["y"]):
            if trace["name"].endswith("uniform"):  # every layer at round(ratio · 32), dense past break-even
                ranks = {name: round(ratio * 32) for name in view.analyses}
                kept = sum(a.out_features * a.in_features if _past_break_even(a, rank)
                           else rank * (a.out_features + a.in_features)
                           for (name, rank), a in zip(ranks.items(), view.analyses.values()))
                assert params * 1e6 == pytest.approx(view.model_params - target + kept)  # the whole model's
                # relative: sqrt(Σ‖(W − Ŵ)·D‖² / Σ‖W·D‖²), not a sum in the hundred thousands
                assert error == pytest.approx((_summed_weighted_error(view, ranks, method) / whole) ** 0.5, rel=1e-9)
    allocated = {trace["name"]: trace["y"] for trace in figure["data"]}
    # FWSVD's allocation minimises this very error within the uniform ranks' parameters: never worse.
    assert all(a <= u + 1e-12 for a, u in zip(allocated["FWSVD, allocated"], allocated["FWSVD, uniform"]))

    assert any("No sweep yet" in info.value for info in at.info)
    at.multiselect(key="methods").set_value(["fwsvd"]).run()
    at.number_input(key="sweep_limit").set_value(16).run()
    at.button(key="run_sweep").click().run()
    assert not at.exception and not at.error
    table = _table(at, "vs SVD (95% paired interval)")
    # Few columns, methods by name, the metric with its interval: readable without scrolling sideways.
    assert list(table.columns) == ["model", "rule", "rank ratio", "of dense", "accuracy (95% interval)",
                                   "vs SVD (95% paired interval)", "speed-up over dense"]
    assert list(zip(table["model"], table["rule"])) == [("dense model", "dense"), ("FWSVD", "uniform"),
                                                        ("FWSVD", "allocated"), ("FWSVD", "uniform"),
                                                        ("FWSVD", "allocated")]
    assert all("(" in text for text in table["accuracy (95% interval)"])
    runs = table[table["model"] == "FWSVD"].set_index(["rule", "rank ratio"])["of dense"]
    assert runs["allocated", 0.25] <= runs["uniform", 0.25] and runs["allocated", 0.5] <= runs["uniform", 0.5]
    figure = _chart(at, "compare_chart")
    assert {trace["name"] for trace in figure["data"]} == {"FWSVD, uniform", "FWSVD, allocated"}
    errors = _chart(at, "allocation_chart")
    for axis in ("title", "range"):  # both charts on one x axis: the whole model's parameters
        assert figure["layout"]["xaxis"][axis] == errors["layout"]["xaxis"][axis]
    assert figure["layout"]["xaxis"]["title"]["text"] == "whole model's parameters (millions)"
    assert any(shape.get("line", {}).get("dash") == "dash" for shape in figure["layout"]["shapes"])  # dense
    assert {trace["name"] for trace in _chart(at, "allocation_chart")["data"]} == {"FWSVD, uniform",
                                                                                   "FWSVD, allocated"}


def test_export_page_offers_ranks_model_and_results(app):
    at = app
    rank_slider(at, QUERY).set_value(7).run()
    at = _open(at, "5_export.py")
    buttons = {button.proto.label for button in at.get("download_button")}
    assert "Download ranks (JSON)" in buttons
    assert any("model at the current ranks" in label for label in buttons)
    assert "Per-layer errors at the current ranks (CSV)" in buttons
    assert at.get("file_uploader")
    assert any("No evaluations yet" in caption.value for caption in at.caption)
    at.radio(key="export_method").set_value("svd").run()
    assert any("SVD model" in button.proto.label for button in at.get("download_button"))
    # Ranks survive the page switch: back on the explorer the slider is where it was left.
    at = _open(at, "3_rank_explorer.py")
    assert rank_slider(at, QUERY).value == 7


def test_the_methods_box_is_on_every_page_and_keeps_the_choice(app):
    at = app
    at.multiselect(key="methods").set_value(["fwsvd"]).run()
    for page in ("1_model_and_task.py", "2_fisher.py", "4_compare.py", "5_export.py", "3_rank_explorer.py"):
        at = _open(at, page)
        assert at.sidebar.multiselect(key="methods").value == ["fwsvd"], page


def _share_card(at: AppTest):
    return next(metric for metric in at.metric if metric.label == "Whole model size")


def test_headline_gives_the_whole_model_share_and_follows_the_budget_at_once(app):
    from fwsvd.data.tasks import task_of
    from fwsvd.io.models import load_model
    from fwsvd.surgery.compress import compressed_copy
    from fwsvd.surgery.modules import count_parameters
    from fwsvd.view.explorer import Source
    from fwsvd.view.rank_plan import compressed_ranks

    at = app
    view = _view()
    source = Source.from_environment()
    model, _ = load_model(source.model, task_of(source))
    ranks = dict(at.session_state["rank_state"].ranks)
    copy, _ = compressed_copy(model, compressed_ranks(ranks, view.analyses), method="svd")
    dense, compressed = count_parameters(model), count_parameters(copy)  # counted on the models themselves
    card = _share_card(at)
    assert card.value == f"{compressed / dense:.0%}"
    assert f"{compressed:,} of {dense:,} ({compressed / dense:.2%})" in card.proto.help
    labels = [metric.label for metric in at.metric]
    assert labels[:5] == ["Whole model size", "Speed-up over dense", "Dense model accuracy", "SVD accuracy",
                          "FWSVD accuracy"]

    keyed(at.radio, "global_mode").set_value("param_budget").run()
    keyed(at.slider, "global_param_budget").set_value(0.3).run()
    ranks = dict(at.session_state["rank_state"].ranks)
    copy, _ = compressed_copy(model, compressed_ranks(ranks, view.analyses), method="svd")
    assert f"{count_parameters(copy):,} of {dense:,}" in _share_card(at).proto.help  # the same run


def test_a_fisher_setting_not_computed_keeps_the_explorer_on_the_fisher_in_use(app):
    at = _open(app, "2_fisher.py")
    at.number_input(key="fisher_seed").set_value(7).run()
    kept = "exact (per example) Fisher over 1024 training examples, seed 0 (the default settings)"
    assert any("seed 7" in info.value and f"keep using the {kept}" in info.value for info in at.info)
    _open(at, "3_rank_explorer.py")
    assert not [button for button in at.button if button.key == "explorer_compute_fisher"]
    assert [slider for slider in at.slider if slider.key and slider.key.startswith("rank::")]
    assert any(kept in caption.value for caption in at.caption)
    _open(at, "4_compare.py")
    assert any(f"Weighted by the {kept}" in caption.value for caption in at.caption)
    assert at.get("plotly_chart")
    at = _open(at, "2_fisher.py")
    assert at.number_input(key="fisher_seed").value == 7  # the choice is remembered, still not in use


def test_a_difference_inside_the_noise_says_so():
    import pandas as pd

    sys.path.insert(0, str(APP.parent))
    try:
        import ui_evaluation
    finally:
        sys.path.remove(str(APP.parent))
    frame = pd.DataFrame({
        "method": ["dense", "svd", "fwsvd", "asvd"], "params": [100, 60, 60, 60], "num_examples": [64] * 4,
        "accuracy": [0.9, 0.7, 0.8, 0.71], "accuracy_low": [0.8, 0.6, 0.7, 0.6], "accuracy_high": [0.95] * 4,
        "accuracy_vs_svd": [0.2, float("nan"), 0.1, 0.01], "accuracy_vs_svd_low": [0.1, float("nan"), 0.05, -0.02],
        "accuracy_vs_svd_high": [0.3, float("nan"), 0.15, 0.04],
        "accuracy_vs_svd_verdict": ["higher", None, "higher", "inside the noise"],
        "speedup": [float("nan"), 1.5, 1.6, 1.4], "speedup_low": [float("nan"), 1.4, 1.5, 1.3],
        "speedup_high": [float("nan"), 1.6, 1.7, 1.5]})
    table = ui_evaluation.results_table(frame, "accuracy")
    assert list(table["model"]) == ["dense model", "SVD", "FWSVD", "ASVD"]
    assert list(table["vs SVD (95% paired interval)"]) == [
        "+0.200 (+0.100 to +0.300)", "—", "+0.100 (+0.050 to +0.150)", "+0.010 (-0.020 to +0.040), inside the noise"]
    assert list(table["accuracy (95% interval)"])[1] == "0.700 (0.600–0.950)"
    assert list(table["speed-up over dense"]) == ["—", "1.50× (1.40–1.60)", "1.60× (1.50–1.70)", "1.40× (1.30–1.50)"]


def test_the_fisher_defaults_follow_the_model_and_its_recorded_length(tmp_path):
    import json

    sys.path.insert(0, str(APP.parent))
    try:
        import ui_fisher
    finally:
        sys.path.remove(str(APP.parent))
    from fwsvd.config import FisherConfig
    from fwsvd.view.explorer import Source

    from app_support import save_tiny_classifier

    directory = save_tiny_classifier(tmp_path / "model")
    assert ui_fisher.default_config(Source(model=str(directory), task="demo")) == FisherConfig()  # nothing recorded
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "fwsvd_max_length": 48}))
    assert ui_fisher.default_config(Source(model=str(directory), task="demo")) == FisherConfig(max_length=48)
    assert ui_fisher.default_config(Source(model="demo", task="demo")) == FisherConfig()  # the prebuilt demo's
    # each demo's own prebuilt settings, also when FWSVD_APP_MODEL names it rather than the picker opening it
    from fwsvd.io.demo_lm import LM_DEMO_FISHER

    assert ui_fisher.default_config(Source(model="demo-lm", task="demo-lm")) == LM_DEMO_FISHER != FisherConfig()


def test_a_demos_fisher_defaults_are_found_without_torch():
    """The rank explorer's first draw keys its snapshot by the Fisher settings; for a demo named by
    FWSVD_APP_MODEL they must come without importing torch (the demo registry does), or the first page waits."""
    from fwsvd.io.demos import DEMOS

    code = ("import json, sys\n"
            f"sys.path.insert(0, {str(APP.parent)!r})\n"
            "import ui_fisher\n"
            "from fwsvd.view.explorer import Source\n"
            f"models = {[demo.model for demo in DEMOS.values()]!r}\n"
            "print(json.dumps({'configs': {m: ui_fisher.default_config(Source(model=m, task=m)).to_dict() "
            "for m in models},\n"
            "                  'loaded': sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=APP.parents[1])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["configs"] == {demo.model: demo.fisher.to_dict() for demo in DEMOS.values()}
    assert report["configs"]["demo-lm"]["max_length"] == 256  # not the defaults


def test_long_work_says_how_long_is_left_from_its_first_step():
    sys.path.insert(0, str(APP.parent))
    try:
        from ui_format import time_left
    finally:
        sys.path.remove(str(APP.parent))
    assert time_left(0.0, 0, 32) == ""  # nothing timed yet
    assert time_left(10.0, 1, 32) == ", about 5 min left"  # 31 steps of 10 s
    assert time_left(2.0, 4, 16) == ", about 10 s left"  # 12 steps of 0.5 s: 6 s, said as about 10
    assert time_left(20.0, 32, 32) == ""  # done


def test_an_evaluations_expected_duration_counts_the_batches_it_will_run(monkeypatch):
    from types import SimpleNamespace

    sys.path.insert(0, str(APP.parent))
    try:
        import ui_session
    finally:
        sys.path.remove(str(APP.parent))

    def timed(batch_size: int) -> dict:
        dense = {"latency_s_per_batch": 2.0, "evaluation": SimpleNamespace(batch_size=batch_size)}
        return {("model", "fisher", "ranks", 64): {"results": {"dense": dense}}, ("other", "f", "r", 64): {"results": {}}}

    monkeypatch.setattr(ui_session, "evaluations", lambda: timed(32))
    assert ui_session.expected_duration(3, 64, "model") == ", about 80 s"  # 3 × (2 batches + 12 timed) × 2 s
    # a language model's batches are capped by its logits' memory: 4 blocks a batch is 16 batches, not 2
    monkeypatch.setattr(ui_session, "evaluations", lambda: timed(4))
    assert ui_session.expected_duration(3, 64, "model") == ", about 3 min"  # 3 × (16 + 12) × 2 s = 168 s
    assert ui_session.expected_duration(3, 64, "other") == ""  # nothing timed for this model yet


def test_an_ner_evaluation_names_entity_level_f1_with_precision_and_recall():
    import pandas as pd

    sys.path.insert(0, str(APP.parent))
    try:
        import ui_evaluation
    finally:
        sys.path.remove(str(APP.parent))
    nan = float("nan")
    frame = pd.DataFrame({
        "method": ["dense", "svd", "fwsvd"], "params": [100, 60, 60], "num_examples": [239] * 3,
        "f1": [0.463, 0.0, 0.373], "f1_low": [0.39, 0.0, 0.29], "f1_high": [0.54, 0.0, 0.45],
        "precision": [0.438, 0.0, 0.40], "recall": [0.492, 0.0, 0.35],
        "f1_vs_svd": [0.463, nan, 0.373], "f1_vs_svd_low": [0.39, nan, 0.29], "f1_vs_svd_high": [0.54, nan, 0.45],
        "f1_vs_svd_verdict": ["higher", None, "higher"],
        "speedup": [nan, 1.3, 1.3], "speedup_low": [nan, 1.2, 1.2], "speedup_high": [nan, 1.4, 1.4]})
    table = ui_evaluation.results_table(frame, "f1")
    assert "entity-level F1 (seqeval) (95% interval)" in table.columns
    assert list(table["precision"]) == ["0.438", "0.000", "0.400"] and list(table["recall"])[0] == "0.492"
    assert list(table["note"]) == ["", "no entities found", ""]  # F1 0 with precision 0: nothing found
    classification = ui_evaluation.results_table(frame.drop(columns=["precision", "recall"]), "f1")
    assert "f1 (95% interval)" in classification.columns and "precision" not in classification.columns
