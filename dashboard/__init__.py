"""The Streamlit dashboard: entry point (``app.py``) and helpers shared by ``pages/``."""
