"""FastAPI server: translates HTTP <-> schemas and store calls; no scheduling logic here."""
