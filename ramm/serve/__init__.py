"""`ramm serve`: an HTTP API and a web page over the `RAMM` facade, showing the retrieved evidence.

`create_app(ServeConfig(...))` builds the FastAPI app (`app.py`); concurrent image requests are decoded
together by the `DynamicBatcher` (`batcher.py`); `static/index.html` is the page, no build step.
"""
from ramm.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(cfg: ServeConfig, ramm=None):
    # lazy: `ramm serve` reads ServeConfig without fastapi and torch
    from ramm.serve.app import create_app as create
    return create(cfg, ramm)
