"""`ramm serve --model DIR [--memory DIR] [--host 127.0.0.1] [--port 8000]`: the HTTP API and web page.

Flags and `--config FILE` are the fields of `ramm.serve.ServeConfig`; the API is described in docs/serve.md.
"""
from __future__ import annotations

from ramm.config import ServeConfig


def register(cli) -> None:
    cli.config_command("serve", "serve the generator and its memory over HTTP, with a web page at /", ServeConfig, _run)


def _run(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    import uvicorn

    from ramm.serve import create_app

    print(f"ramm serve: http://{cfg.host}:{cfg.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info")
    return 0
