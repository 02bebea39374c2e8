"""The OpenAI-compatible HTTP server (`huozi-local serve`); needs the `server` extra (starlette,
uvicorn), so nothing outside `commands/serve.py` and the tests imports it."""
