"""The web layer every service shares: the FastAPI app skeleton (probes, body limits), admission
control, the error envelope and the hardened uvicorn protocol."""
