"""availability (being built)."""

import streamlit as st

st.title("Availability")
