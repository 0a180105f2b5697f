"""Export: the analysts' datasets, as files, with the same filters as `presence export`."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

import streamlit as st
from presence_core.dashboard import data, ui

from presence_core import analytics, export

MIME = {
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
DESCRIPTIONS = {
    "transitions": "one row per change of a user's status",
    "sessions": "one row per session (present until offline)",
    "daily": "one row per user per day: first online, last offline, sessions, time, availability",
}

st.title("Export")
st.caption(
    "The same datasets, filters and formats as `presence export`. The file is produced "
    "when you click Download, streamed from the database."
)
zone = ui.viewer_zone()
hidden = ui.include_hidden()  # an administrator who asked for users who hide their times
choices = data.load(analytics.filter_choices, include_hidden=hidden)
today = datetime.now(UTC).astimezone(zone).date()

c1, c2 = st.columns([1, 2])
dataset = c1.radio(
    "Dataset",
    export.DATASETS,
    format_func=lambda d: d,
    key="ex_dataset",
    captions=[DESCRIPTIONS[d] for d in export.DATASETS],
)
with c2:
    everything = st.toggle("All history", value=False, key="ex_all")
    start, end = ui.period_picker("ex_days", today, label="Days", disabled=everything)
    f1, f2 = st.columns(2)
    team, user_type = ui.team_type_pickers(choices, "ex", team_in=f2, type_in=f1)
    users = st.multiselect(
        "Users (empty: everyone)", choices["user_id"], key="ex_users", max_selections=100
    )
    fmt = st.selectbox("Format", export.FORMATS, key="ex_format")
    if hidden:
        st.caption("Includes the users who hide their last seen (administrator).")

filters = export.ExportFilters(
    start=None if everything else start,
    end=None if everything else end,
    user_ids=tuple(users) or None,
    user_type=user_type,
    team=team,
    include_hidden=hidden,
    tz=zone.key,
    available_statuses=tuple(data.settings().available_statuses),
)

span = "all" if everything else f"{start}_{end}"
file_name = f"presence-{dataset}-{span}.{fmt}"
engine = data.engine()
st.download_button(
    f"Download {file_name}",
    data=lambda: data.export_file(engine, dataset, fmt, filters),
    file_name=file_name,
    mime=MIME[fmt],
    type="primary",
    icon=":material/download:",
    on_click="ignore",
    key="ex_download",
)

argv = ["presence", "export", "--dataset", dataset]
if not everything:
    argv += ["--from", start.isoformat(), "--to", end.isoformat()]
for user in users:
    argv += ["--user", user]
if filters.user_type:
    argv += ["--type", filters.user_type]
if filters.team:
    argv += ["--team", filters.team]
if hidden:
    argv.append("--include-hidden")
argv += ["--tz", zone.key, "--format", fmt, "--output", file_name]
st.markdown("**The same from the command line**")
st.code(shlex.join(argv), language="bash")
st.caption(
    "Dates are whole days in the time zone shown (the end day included). "
    "Columns and meanings: DESIGN's Metrics section, and docs/dashboard.md."
)
