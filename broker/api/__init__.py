"""HTTP adapter: FastAPI app factory, the composition root (deps.py), thin routes."""
