"""The dashboard pages, one file each; `dashboard/app.py` lists them with `st.Page`."""
