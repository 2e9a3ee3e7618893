"""fwsvd dashboard: the router. Every page lives in app/pages/; this file only declares them."""

import streamlit as st

st.set_page_config(page_title="fwsvd: Fisher-weighted SVD", page_icon=":material/compress:", layout="wide")
st.navigation([
    st.Page("pages/1_model_and_task.py", title="Model & task", icon=":material/model_training:"),
    st.Page("pages/2_fisher.py", title="Fisher", icon=":material/insights:"),
    st.Page("pages/3_rank_explorer.py", title="Rank explorer", icon=":material/tune:", default=True),
    st.Page("pages/4_compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/5_export.py", title="Export", icon=":material/download:"),
]).run()
