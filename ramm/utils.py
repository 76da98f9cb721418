"""Small shared helpers: atomic file writes, device choice, seeding."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAMM_CACHE", Path.home() / ".cache" / "ramm"))


def pick_device(device: str | None = None) -> str:
    """'cuda' when available unless told otherwise."""
    if device:
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_dtype(device: str):
    """bf16 where the device supports it, else None (full precision)."""
    import torch
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
