"""TRAK Explorer: the Streamlit entry point and page router.

Run it with ``trak-explorer serve`` (or ``streamlit run explorer/streamlit_app.py``); the
artifact directory comes from the ``TRAK_EXPLORER_WORKDIR`` environment variable (see
``explorer.serve``). Each page is one file under the repository's ``pages/``; add a page with
one line below.

This router lives apart from ``pages/`` on purpose: Streamlit treats a ``pages/`` folder beside
the entry script as old-style pages and would run ``/overview`` alone, without this router,
on the first visit to a fresh server.
"""

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent.parent / "pages"

st.set_page_config(page_title="TRAK Explorer", page_icon="🔎", layout="wide")

PAGES = [
    st.Page(PAGES_DIR / "explore.py", title="Explore", icon="🔎", url_path="explore", default=True),
    st.Page(PAGES_DIR / "overview.py", title="Overview", icon="📊", url_path="overview"),
    st.Page(PAGES_DIR / "mislabeled.py", title="Mislabeled", icon="🚩", url_path="mislabeled"),
    st.Page(PAGES_DIR / "upload.py", title="Upload", icon="📤", url_path="upload"),
]

st.navigation(PAGES).run()
