"""TRAK Explorer: the Streamlit entry point and page router.

Run it with ``trak-explorer serve`` (or ``streamlit run streamlit_app.py``); the artifact
directory comes from the ``TRAK_EXPLORER_WORKDIR`` environment variable (see
``explorer.serve``). Each page is one file under ``pages/``; add a page with one line below.
"""

import streamlit as st

st.set_page_config(page_title="TRAK Explorer", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/explore.py", title="Explore", icon="🔎", url_path="explore", default=True),
]

st.navigation(PAGES).run()
