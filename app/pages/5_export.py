"""Export: the compression config (JSON, and back), the compressed model and the results (CSV)."""

import dataclasses
import json
from pathlib import Path

import streamlit as st
import ui_fisher
import ui_ranks
import ui_session
import ui_views
from ui_format import error_box
from ui_methods import chosen_methods, method_label
from ui_session import Loaded

from fwsvd.config import CompressionConfig, read_rank_document
from fwsvd.storage.locations import is_demo_model
from fwsvd.view import analysis, rank_config
from fwsvd.view import rank_plan as allocation
from fwsvd.view.analysis import METHODS

st.title("Export")
#: The file name the download offers, and the command that rebuilds the model from it.
CONFIG_FILE = "fwsvd_config.json"
COMMAND = f"fwsvd compress --config {CONFIG_FILE} --output fwsvd_model"


def recorded(config: CompressionConfig, loaded: Loaded) -> CompressionConfig:
    """``config`` with the model, data and label map it is made from, so that its document rebuilds the model
    on its own (``fwsvd compress --config FILE --output DIR``)."""
    from fwsvd.data.sources import data_of_task

    model = loaded.source.model
    path = Path(model).expanduser()
    local = not is_demo_model(model) and path.is_dir()  # a demo's alias names it wherever it is built
    return dataclasses.replace(config, model=str(path.resolve()) if local else model,
                               data=data_of_task(loaded.task), label_map=dict(loaded.source.label_map))


def compression_config(config: CompressionConfig | None, analyses: dict) -> None:
    """The config to download and a rank document to load; with nothing to compress (``config`` None), only
    the upload, so that a document can still bring ranks that compress."""
    st.subheader("Compression config")
    left, right = st.columns(2, gap="large")
    if config is None:
        left.error(ui_ranks.NOTHING_TO_COMPRESS, icon=":material/error:")
    else:
        current_config(left, config, analyses)
    load_document(right, config, analyses)


def current_config(left, config: CompressionConfig, analyses: dict) -> None:
    left.download_button("Download ranks (JSON)", config.to_json(), file_name=CONFIG_FILE,
                         mime="application/json", key="download_ranks", icon=":material/download:")
    dense = len(analyses) - len(config.rank_pattern)
    left.caption(f"{method_label(config.method)} at these ranks on {len(config.rank_pattern)} layers (digest "
                 f"`{rank_config.ranks_digest(config.rank_pattern)}`), with the Fisher settings"
                 + (f"; the {dense} layer(s) kept dense are left out of rank_pattern and target_modules" if dense
                    else "") + ", the model, the data and the label map; the command below builds the same model "
                 "from it.")
    left.expander("The config").code(config.to_json(), language="json")
    left.code(COMMAND, language="bash")


def load_document(right, config: CompressionConfig | None, analyses: dict) -> None:
    upload = right.file_uploader("Load a rank document", type=["json"], key="upload_ranks",
                                 help="This page's download, 'fwsvd compress --json' output, a saved model's "
                                      "fwsvd_compressed.json, an older rank file or {layer: rank}.")
    if upload is None:
        return
    shapes = analysis.shapes_of(analyses)
    uploaded = read_rank_document(upload.getvalue(), shapes)
    ranks = uploaded.resolve_ranks(shapes, analyses)
    if config is not None and ranks == config.rank_pattern and uploaded.method == config.method:
        right.success("These ranks are the current ranks.", icon=":material/check_circle:")
    else:
        dense = len(shapes) - len(ranks)
        right.info(f"{method_label(uploaded.method)} on {len(ranks)} layers (digest "
                   f"`{rank_config.ranks_digest(ranks)}`)" + (f", {dense} kept dense" if dense else "") + ".",
                   icon=":material/info:")
        right.button("Use these ranks", type="primary", key="apply_uploaded_ranks", on_click=use_ranks,
                     args=(allocation.with_dense(ranks, analyses), uploaded.method))
    if config is not None and uploaded.fisher.key() != config.fisher.key():
        right.caption(f"Its Fisher settings ({uploaded.fisher.key()}) differ from the explorer's: choose them on the "
                      "Fisher page to match.")


def use_ranks(ranks: dict[str, int], method: str) -> None:
    """Button callback: the uploaded ranks (layers it leaves out at full rank: dense) and method become the
    session's (the method is offered below even when it is not among the compared ones)."""
    ui_ranks.set_ranks(ranks)
    st.session_state["export_method"] = method


def model_archive(loaded: Loaded, fisher, config: CompressionConfig) -> None:
    st.subheader("Compressed model")
    digest = rank_config.ranks_digest(config.rank_pattern)

    def archive() -> bytes:
        from fwsvd.io.archive import compressed_archive

        # Built only when the button is clicked: a compressed copy plus a zip of its folder.
        return compressed_archive(loaded.model, config, tokenizer=loaded.tokenizer, fisher_provenance=fisher.provenance,
                                  store=ui_session.decomposition_store(), extra={"ranks_digest": digest},
                                  fisher=fisher)

    st.download_button(f"Download the {method_label(config.method)} model at the current ranks (zip)", archive,
                       file_name=f"fwsvd_{config.method}_{digest}.zip", mime="application/zip",
                       key="download_model", icon=":material/download:")
    st.caption("Safetensors + JSON, no pickles; reload with `fwsvd.load_compressed('model')`.")


def results(loaded: Loaded, analyses: dict, ranks: dict[str, int]) -> None:
    from fwsvd.evaluate.methods import evaluations_frame

    st.subheader("Results")
    cols = st.columns(3)
    layers = allocation.mark_dense(analysis.layer_frame(analyses, ranks, loaded.blocks))
    cols[0].download_button("Per-layer errors at the current ranks (CSV)", layers.to_csv(index=False),
                            file_name="fwsvd_layers.csv", mime="text/csv", key="download_layers")
    entries = [({"ranks_digest": digest, "subset": size, "ranks": json.dumps(entry["ranks"])}, entry["results"])
               for (src, _, digest, size), entry in ui_session.evaluations().items() if src == loaded.source.key]
    if entries:
        cols[1].download_button("Evaluations (CSV)", evaluations_frame(entries).to_csv(index=False),
                                file_name="fwsvd_evaluations.csv", mime="text/csv", key="download_evaluations")
    else:
        cols[1].caption("No evaluations yet (Rank explorer → Evaluate).")
    sweeps = [frame for key, frame in ui_session.sweeps().items() if key[0] == loaded.source.key]
    if sweeps:
        cols[2].download_button("Last sweep (CSV)", sweeps[-1].to_csv(index=False),
                                file_name="fwsvd_sweep.csv", mime="text/csv", key="download_sweep")
    else:
        cols[2].caption("No sweep yet (Compare → Run sweep).")


with error_box():
    loaded = ui_session.require_model()
    fisher = ui_fisher.require_fisher(loaded, "Exports need the Fisher importances: compute them on the Fisher page.")
    analyses = ui_views.analyses_for(loaded, fisher)
    ranks = ui_ranks.ranks(loaded.source.key, analyses)
    chosen = chosen_methods()
    methods = [name for name in METHODS if name in chosen or name == st.session_state.get("export_method")]
    if st.session_state.get("export_method") not in methods:  # the first visit
        weighted = [name for name in methods if name != "svd"]
        st.session_state["export_method"] = weighted[0] if weighted else methods[0]
    method = st.radio("Method", methods, format_func=method_label, horizontal=True, key="export_method",
                      persist_state="session", help="Of both the config and the model below, and recorded in both: "
                                                    "one of the methods chosen in the sidebar, or an uploaded one.")
    config = (recorded(ui_ranks.compression_config(method, analyses, ui_fisher.fisher_config()), loaded)
              if allocation.compressed_ranks(ranks, analyses) else None)
    with error_box():
        compression_config(config, analyses)
    if config is not None:
        model_archive(loaded, ui_views.fisher_for_methods(loaded, (method,), "Exports need the Fisher importances."),
                      config)
    results(loaded, analyses, ranks)
