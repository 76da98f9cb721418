"""Helpers the serve tests import: an app over a facade, and a live uvicorn server on a free loopback port."""
import threading
import time


def make_app(facade, **overrides):
    from ramm.serve import ServeConfig, create_app
    cfg = ServeConfig(model="tiny-test-bundle", memory=str(facade.memory.root), **overrides)
    return create_app(cfg, ramm=facade)


class LiveServer:
    """uvicorn in a thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, app):
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not (self.server.started and self.server.servers):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
