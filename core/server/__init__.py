"""`llmrt serve`: llama-server's HTTP API, OpenAI's, and a web UI, on FastAPI and uvicorn.

Needs the `server` extra (`pip install llmrt[server]`).
"""

from llmrt.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
