"""The dashboard's entry point: ``streamlit run dashboard/app.py`` (or ``presence dashboard``).

Sets up the page, checks access (off unless ``.streamlit/secrets.toml`` asks for
it), then lets ``st.navigation`` run one of the pages in ``pages/``.
"""

from __future__ import annotations

import streamlit as st
from presence_core.dashboard import ui

from presence_core import resources

# (file, title, icon, url path); Live is the default page
PAGE_LIST = (
    ("live.py", "Live", ":material/sensors:", "live"),
    ("last_seen.py", "Last seen", ":material/schedule:", "last-seen"),
    ("activity.py", "Activity", ":material/monitoring:", "activity"),
    ("availability.py", "Availability", ":material/support_agent:", "availability"),
    ("export.py", "Export", ":material/download:", "export"),
    ("health.py", "Health", ":material/monitor_heart:", "health"),
)

st.set_page_config(
    page_title="Presence analytics",
    page_icon=":material/sensors:",
    layout="wide",
    initial_sidebar_state="expanded",
)
ui.require_access()
ui.hidden_toggle()
ui.inject_style()

pages = [
    st.Page(resources.page_file(name), title=title, icon=icon, url_path=path, default=(i == 0))
    for i, (name, title, icon, path) in enumerate(PAGE_LIST)
]
page = st.navigation(pages)
ui.guarded(page.run)
