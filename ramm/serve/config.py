"""`ServeConfig`: what `ramm serve` and `create_app` take (every field is a CLI flag). No heavy imports."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

API_KEY_ENV = "RAMM_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """`ramm serve`: an HTTP API and a web page over one loaded generator and its memory."""

    model: str = ""  # generator directory (`ramm train generator --out`)
    memory: str | None = None  # memory directory (default: the one the generator was trained with); documents added over the API are written to it (a Milvus memory: many servers may share it)
    device: str | None = None  # cpu | cuda (default: cuda when available)
    host: str = "127.0.0.1"  # address to bind; anything but loopback needs an API key
    port: int = 8000  # TCP port (0: any free port)
    api_key: str | None = None  # key every request but /healthz must send (X-API-Key or Authorization: Bearer); default: $RAMM_API_KEY
    batching: bool = True  # decode concurrent image requests together (False: one request per decode)
    max_batch_rows: int = 128  # most samples one batched decode holds
    max_wait_ms: float = 5.0  # how long the oldest queued request waits for batch mates
    max_queue: int = 256  # queued requests beyond which the server answers 503 with Retry-After
    timeout_s: float = 60.0  # a request's deadline: past it the server answers 504 and drops its work
    max_upload_bytes: int = 4 * 1024 * 1024  # largest request body (uploads, JSON): beyond it 413
    max_image_pixels: int = 4096 * 4096  # largest uploaded image (width x height): beyond it 400, before decoding
    max_documents: int = 64  # most documents one POST /v1/memory/documents may add

    def __post_init__(self):
        if not self.model:
            raise ValueError("ServeConfig: set model (a generator directory)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_batch_rows", "max_queue", "max_upload_bytes", "max_image_pixels", "max_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(f"max_wait_ms must be >= 0 and timeout_s > 0, got {self.max_wait_ms}, {self.timeout_s}")
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"binding {self.host} (not loopback) needs an API key: --api-key or ${API_KEY_ENV}")
