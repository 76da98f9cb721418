"""Small shared helpers: atomic file writes, device choice, seeding."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def current_umask() -> int:
    """The process umask: from /proc where Linux shows it (thread-safe), else set and set straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fsync_file(path)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temp file of its own in the same directory (two writers never share one); it is
    fsynced, renamed over `path`, and the directory fsynced, so `path` is the old file or the new, whole.

    mkstemp creates files 0600; the file gets the mode a plain open() would give (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        write(tmp)
        fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def output_dir(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` as a folder to write into (created), or ValueError naming it when a file is in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"the {what} directory {path} is a file: give a folder path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_weights(model, path: str | os.PathLike, allowed_missing: set[str] = frozenset()) -> None:
    """Load a safetensors file into `model`; ValueError naming the file when it is unreadable
    (truncated, not safetensors) or does not fit the model (missing / unexpected names, wrong shapes)."""
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own type on truncated / foreign files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # wrong shapes
        raise ValueError(f"{path} does not fit its config ({' '.join(str(e).split())[:300]})") from None
    if set(missing) - set(allowed_missing) or unexpected:
        raise ValueError(f"{path} does not fit its config (missing {sorted(set(missing) - set(allowed_missing))[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")


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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 avx512_bf16 or AMX): there bf16 autocast pays (a small
    generator's training step ran ~1.5x faster on this project's 2-core EPYC); elsewhere it emulates and loses."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
