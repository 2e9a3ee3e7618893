"""Export: the rank configuration (JSON, and back), the compressed model and the results (CSV)."""

import json

import streamlit as st
import ui_state as ui

from fwsvd.view import analysis, rank_config
from fwsvd.io.archive import compressed_archive
from fwsvd.evaluate.methods import evaluations_frame

st.title("Export")


def rank_configuration(loaded: ui.Loaded, analyses: dict, ranks: dict[str, int]) -> None:
    st.subheader("Rank configuration")
    left, right = st.columns(2, gap="large")
    text = rank_config.rank_config_to_json(ranks, model=loaded.source.model, task=loaded.source.task_label)
    left.download_button("Download ranks (JSON)", text, file_name="fwsvd_ranks.json", mime="application/json",
                         key="download_ranks", icon=":material/download:")
    left.caption(f"{len(ranks)} layers, digest `{rank_config.ranks_digest(ranks)}`")
    upload = right.file_uploader("Load a rank configuration", type=["json"], key="upload_ranks")
    if upload is not None:
        loaded_ranks = rank_config.rank_config_from_json(upload.getvalue(), analysis.shapes_of(analyses))
        if loaded_ranks == ranks:
            right.success("These ranks are the current ranks.", icon=":material/check_circle:")
        elif right.button("Use these ranks", type="primary", key="apply_uploaded_ranks"):
            ui.set_ranks(loaded_ranks)
            st.rerun()
        else:
            right.info(f"Valid configuration for {len(loaded_ranks)} layers (digest "
                       f"`{rank_config.ranks_digest(loaded_ranks)}`).", icon=":material/info:")


def model_archive(loaded: ui.Loaded, fisher, ranks: dict[str, int]) -> None:
    st.subheader("Compressed model")
    method = st.radio("Method", ["fwsvd", "svd"], format_func={"fwsvd": "FWSVD", "svd": "SVD"}.get,
                      horizontal=True, key="export_method", persist_state="session")

    def archive() -> bytes:
        # Built only when the button is clicked: a compressed copy plus a zip of its folder.
        return compressed_archive(loaded.model, ranks, method=method, fisher=fisher.importances,
                                          tokenizer=loaded.tokenizer, fisher_provenance=fisher.provenance,
                                          store=ui.decomposition_store(),
                                          extra={"ranks_digest": rank_config.ranks_digest(ranks)})

    st.download_button(f"Download the {method.upper()} model at the current ranks (zip)", archive,
                       file_name=f"fwsvd_{method}_{rank_config.ranks_digest(ranks)}.zip", mime="application/zip",
                       key="download_model", icon=":material/download:")
    st.caption("Safetensors + JSON, no pickles; reload with `fwsvd.io.persistence.load_compressed('model')`.")


def results(loaded: ui.Loaded, analyses: dict, ranks: dict[str, int]) -> None:
    st.subheader("Results")
    cols = st.columns(3)
    layers = analysis.layer_frame(analyses, ranks, loaded.blocks)
    cols[0].download_button("Per-layer errors at the current ranks (CSV)", layers.to_csv(index=False),
                            file_name="fwsvd_layers.csv", mime="text/csv", key="download_layers")
    entries = [({"ranks_digest": digest, "subset": size, "ranks": json.dumps(entry["ranks"])}, entry["results"])
               for (src, _, digest, size), entry in ui.evaluations().items() if src == loaded.source.key]
    if entries:
        cols[1].download_button("Evaluations (CSV)", evaluations_frame(entries).to_csv(index=False),
                                file_name="fwsvd_evaluations.csv", mime="text/csv", key="download_evaluations")
    else:
        cols[1].caption("No evaluations yet (Rank explorer → Evaluate).")
    sweeps = [result for key, result in ui.sweeps().items() if key[0] == loaded.source.key]
    if sweeps:
        cols[2].download_button("Last sweep (CSV)", sweeps[-1].to_dataframe().to_csv(index=False),
                                file_name="fwsvd_sweep.csv", mime="text/csv", key="download_sweep")
    else:
        cols[2].caption("No sweep yet (Compare → Run sweep).")


with ui.error_box():
    loaded = ui.require_model()
    fisher = ui.require_fisher(loaded, "Exports need the Fisher importances: compute them on the Fisher page.")
    analyses = ui.analyses_for(loaded, fisher)
    ranks = ui.ranks(loaded.source.key, analyses)
    with ui.error_box():
        rank_configuration(loaded, analyses, ranks)
    model_archive(loaded, fisher, ranks)
    results(loaded, analyses, ranks)
