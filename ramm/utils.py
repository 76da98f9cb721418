"""Small shared helpers: atomic file writes, file fingerprints, folder locks, device choice, seeding."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator


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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # mkstemp names the folder, not the file it was to write
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        os.close(fd)
        write(tmp)
        fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a write() that failed (disk full) names no file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Locked(RuntimeError):
    """Another process holds the lock of `path` (pid `pid`, "?" when it could not be read)."""

    def __init__(self, message: str, path: Path, pid: str):
        super().__init__(message)
        self.path, self.pid = path, pid


_held: dict[Path, list] = {}  # lock file -> [fd, depth]: this process's locks (flock is per open file, not per process)
_held_guard = threading.Lock()


def _holder_pid(fd: int) -> str:
    """The pid the holder wrote; a holder that has just taken the lock writes it within moments."""
    for _ in range(50):
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "?"


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, busy: Callable[[str], str], reentrant: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (created) while inside; the OS drops it when the holder dies
    (kill -9 included), so a crashed job never blocks its resume. Another holder raises `Locked(busy(pid))`;
    with `reentrant`, this process taking it again (a recipe, then its Trainer) nests instead.

    The holder's pid is written whole, space-padded, in one pwrite, so a reader never sees half of it."""
    path = Path(lock_file).resolve()
    with _held_guard:
        if path in _held:
            if not reentrant:
                raise Locked(busy(str(os.getpid())), path, str(os.getpid()))
            _held[path][1] += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _holder_pid(fd) if e.errno in (errno.EAGAIN, errno.EACCES) else ""
                os.close(fd)
                if pid:
                    raise Locked(busy(pid), path, pid) from None
                raise
            os.pwrite(fd, str(os.getpid()).ljust(20).encode(), 0)
            _held[path] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            _held[path][1] -= 1
            if _held[path][1] == 0:
                fd = _held.pop(path)[0]
                os.ftruncate(fd, 0)
                os.close(fd)


def lock_held(lock_file: str | os.PathLike) -> bool:
    """Whether some process holds an `exclusive_lock` on `lock_file` (False when it does not exist); takes no
    lock and writes nothing, so it works on a read-only mount."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # drops the shared lock too
    return False


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
    # lazy: utils stays light (ramm.config and `ramm --help` import it)
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
    # lazy: utils stays light (ramm.config and `ramm --help` import it)
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_dtype(device: str):
    """bf16 where the device supports it, else None (full precision)."""
    # lazy: utils stays light (ramm.config and `ramm --help` import it)
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
    # lazy: utils stays light (ramm.config and `ramm --help` import it)
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def end_distributed_process(rc: int) -> None:
    """Under torch.distributed (torchrun), end this process now with `rc`, skipping the interpreter's teardown.

    Gloo's worker threads drop their references to a collective's tensors after the work completes; where
    that is the last reference to a Python-owned tensor (FSDP's gather buffers), the thread takes the GIL, and
    one that does so while the interpreter finalises is killed inside C++: "terminate called without an
    active exception", an abort after a run that succeeded (seen in about 1 of 50 two-rank runs). What a run
    writes is closed by then (checkpoints are atomic, `Trainer.fit` closes metrics.jsonl); the ranks meet at a
    barrier first when the run succeeded, so none leaves while another still talks to it. A no-op without a
    process group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if rc == 0:
        dist.barrier()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
