"""A model-agnostic training loop (minGPT's `trainer.py` idea): it knows a model, a dataset and a loss.

AdamW with warmup + cosine, gradient accumulation and clipping, bf16 autocast where supported, tqdm,
JSONL metrics (+ TensorBoard when installed), atomic checkpoints with everything needed to resume
bit-for-bit (weights, optimizer, step = data position, RNG states of every rank), and DDP or FSDP2
(`strategy`) when run under `torchrun` (gloo on CPU, nccl on GPU). Checkpoints hold the full (unsharded)
state on rank 0 either way, so a run resumes under either strategy and any number of ranks.

The data order is a pure function of (seed, step): sample n of the run is `perm_{n // N}[n % N]`, where
perm_e is a seeded permutation for epoch e, so resuming only needs the step. Every optimizer step
takes `batch_size` samples; rank r's micro-batch a takes the (a * world + r)-th slice of them, so one
rank with accumulation and several ranks see the same global batch.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ramm.config import TrainerConfig
from ramm.training.recipe import run_lock
from ramm.utils import atomic_write_bytes, atomic_write_json, autocast_dtype, cpu_has_bf16, output_dir, pick_device

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainerConfig) -> float:
    """Linear warmup to cfg.lr, then cosine to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def default_step_fn(model, batch: dict) -> tuple[torch.Tensor, int]:
    """`model(**batch) -> (out, loss)`; tokens = non-ignored targets (or the first tensor's size)."""
    _, loss = model(**batch)
    tgt = batch.get("targets")
    n = int(tgt.ne(-100).sum()) if tgt is not None else next(iter(batch.values())).numel()
    return loss, n


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state (keyed by parameter name) -> tensors for safetensors + JSON-able rest."""
    tensors, scalars = {}, {}
    for pname, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pname}::{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pname}::{k}"] = v
    return tensors, {"param_groups": osd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *meta["scalars"].items()]:
        pname, k = key.rsplit("::", 1)
        state.setdefault(pname, {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _dedupe(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage (tied weights): keep the first name, record the aliases."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            out[k] = v.detach().cpu().contiguous()
    return out, aliases


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's global grad norm) as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def fully_shard_blocks(model: torch.nn.Module, device: str, world: int) -> torch.nn.Module:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block, then on the root, in place.

    The blocks are the classes a module lists in `_no_split_modules` (transformers' convention, which
    ramm's Transformer follows too): each is all-gathered only around its own forward and backward, so a
    rank holds one block's full weights at a time plus its 1/world share of the rest."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not blocks:
        log.warning("%s names no blocks (_no_split_modules): FSDP shards it as one unit", type(model).__name__)
    mesh = init_device_mesh(device.split(":")[0], (world,))
    for m in blocks:
        fully_shard(m, mesh=mesh)
    return fully_shard(model, mesh=mesh)


CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "trainer_state.json")


def _complete_step(ckpt: Path) -> int | None:
    """The step of a complete checkpoint folder, None when it has no trainer_state.json (a save a kill
    interrupted: each file is written atomically, trainer_state.json after the rest). A trainer_state.json
    that is there but unreadable, or whose files are missing, is damage no kill makes: ValueError naming it,
    rather than a resume from step 0 that would overwrite the run."""
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return None
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step, world = int(state["step"]), int(state["world"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot resume: {state_file} is unreadable ({type(e).__name__}: {e}). Restore it, or "
                         f"delete {ckpt} (or pass --no-trainer.resume) to train from step 0 over this run") from None
    missing = [f for f in (*CHECKPOINT_FILES, *(f"rng-{r}.json" for r in range(world))) if not (ckpt / f).is_file()]
    if missing:
        raise ValueError(f"cannot resume: {ckpt} lacks {', '.join(missing)} though its trainer_state.json marks it "
                         f"complete. Restore them, or delete {ckpt} to train from step 0 over this run")
    return step


def _read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a line that is not a JSON object with a step (a kill mid-write, damage)
    is dropped with a warning."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
            if row is not None:
                int(row["step"])
                rows.append(row)
        except (ValueError, KeyError, TypeError):
            log.warning("%s:%d is not a metrics row: dropped", path, n)
    return rows


def _discard(path: Path) -> None:
    """Remove a folder by first renaming it away, so a kill mid-delete never leaves a part under its name."""
    if not path.exists():
        return
    trash = path.with_name(path.name + ".trash")
    shutil.rmtree(trash, ignore_errors=True)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


class Trainer:
    """Trains `model` on `dataset` (map-style) with `collate_fn` batches and `step_fn(model, batch) -> (loss, tokens)`.

    A dataset with `set_epoch(e)` is told the epoch of each sample it serves (for per-epoch randomness).
    A dataset with `batch_items([(epoch, index), ...])` builds each micro-batch itself (e.g. to share a
    choice across the batch); otherwise items come from `dataset[index]`.
    `eval_fn(model) -> dict[str, float]` runs on every rank every `eval_every` steps and at the end.
    """

    def __init__(self, model: torch.nn.Module, dataset, cfg: TrainerConfig, collate_fn: Callable | None = None,
                 step_fn: Callable = default_step_fn, eval_fn: Callable | None = None):
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.cfg, self.dataset, self.step_fn, self.eval_fn = cfg, dataset, step_fn, eval_fn
        self.collate_fn = collate_fn or torch.utils.data.default_collate
        if not cfg.out_dir:
            raise ValueError("TrainerConfig.out_dir is empty: set the directory for checkpoints and metrics.jsonl")
        self.out = output_dir(cfg.out_dir)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ValueError(f"batch_size={cfg.batch_size} must divide by ranks x grad_accum = {self.world * cfg.grad_accum}")
        self.micro = cfg.batch_size // (self.world * cfg.grad_accum)
        device = pick_device(cfg.device)
        if device == "cuda" and self.distributed:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        self.device = device
        self.amp_dtype = autocast_dtype(device) if cfg.amp else None
        if self.amp_dtype is None and cfg.amp and cfg.amp_cpu and device == "cpu" and cpu_has_bf16():
            self.amp_dtype = torch.bfloat16
        # on a CPU, autocast speeds the training steps only: evaluations stay in fp32, comparable across runs
        self.eval_amp = not device.startswith("cpu")
        torch.manual_seed(cfg.seed)
        self.raw_model = model.to(device)
        self.model = self._wrap(self.raw_model)
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.startswith("cuda"))
        self.step = 0
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    def _wrap(self, model):
        if not self.distributed:
            return model
        if self.cfg.strategy == "fsdp":
            return fully_shard_blocks(model, self.device, self.world)
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.startswith("cuda") else None)

    def _grad_sync(self, sync: bool):
        """DDP skips the all-reduce under no_sync(); FSDP2 is told to skip its reduce-scatter."""
        if not self.distributed:
            return contextlib.nullcontext()
        if self.cfg.strategy == "fsdp":
            self.model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if sync else self.model.no_sync()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's unsharded weights on CPU: on rank 0 (every rank must call it), {} elsewhere."""
        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        self._barrier()  # the gathers' buffers stay held here until every rank is done (see `_collective`)
        return sd if self.rank == 0 else {}

    # ------------------------------------------------------------------ data order
    def _index(self, n: int) -> int:
        N = len(self.dataset)
        epoch = n // N
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
            self._perm_cache = (epoch, torch.randperm(N, generator=g))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return int(self._perm_cache[1][n % N])

    def _micro_batch(self, step: int, a: int):
        start = step * self.cfg.batch_size + (a * self.world + self.rank) * self.micro
        samples = range(start, start + self.micro)
        if hasattr(self.dataset, "batch_items"):  # the dataset builds the micro-batch as a whole
            N = len(self.dataset)
            items = self.dataset.batch_items([(n // N, self._index(n)) for n in samples])
        else:
            items = [self.dataset[self._index(n)] for n in samples]
        return _to(self.collate_fn(items), self.device)

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        """Write checkpoint.tmp/ completely (trainer_state.json last, marking it complete), then swap it
        for checkpoint/. A kill at any point leaves a complete checkpoint under one of the names
        checkpoint, checkpoint.tmp or checkpoint.old, which `_recover_checkpoint` finds."""
        tmp, old = self.out / "checkpoint.tmp", self.out / "checkpoint.old"
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd, osd = get_state_dict(self.model, self.optimizer, options=opts)
        if self.rank == 0:
            _discard(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        atomic_write_json(tmp / f"rng-{self.rank}.json", _rng_state())
        if self.rank == 0:
            weights, aliases = _dedupe(msd)
            atomic_write_bytes(tmp / "model.safetensors", save(weights))
            otensors, ometa = _flatten_optimizer(osd)
            atomic_write_bytes(tmp / "optimizer.safetensors", save(otensors))
        self._barrier()
        if self.rank == 0:
            atomic_write_json(tmp / "trainer_state.json", {
                "step": self.step, "world": self.world, "aliases": aliases, "optimizer": ometa,
                "config": asdict(self.cfg)})
            _discard(old)  # never the newest: tmp is complete now
            if self.ckpt_dir.exists():
                self.ckpt_dir.rename(old)
            tmp.rename(self.ckpt_dir)
            _discard(old)
        self._barrier()

    def _recover_checkpoint(self) -> bool:
        """Make checkpoint/ the newest complete checkpoint a kill left (under checkpoint, .tmp or .old),
        discarding the rest only once it is in place; True when there is one to resume from."""
        names = [self.ckpt_dir, self.out / "checkpoint.tmp", self.out / "checkpoint.old"]
        if self.rank == 0:
            found = [(step, i) for i, d in enumerate(names) if (step := _complete_step(d)) is not None]
            if found:
                best = names[max(found, key=lambda c: (c[0], -c[1]))[1]]
                if best != self.ckpt_dir:
                    log.warning("the last checkpoint save was interrupted: resuming from %s", best)
                    _discard(self.ckpt_dir)
                    best.rename(self.ckpt_dir)
                for d in names[1:]:
                    _discard(d)
            elif any(d.exists() for d in names):
                log.warning("no complete checkpoint in %s (only partial ones): starting from step 0", self.out)
            for d in names:  # what a kill mid-delete left
                shutil.rmtree(d.with_name(d.name + ".trash"), ignore_errors=True)
        self._barrier()
        return _complete_step(self.ckpt_dir) is not None

    def load_checkpoint(self) -> None:
        """Weights, optimizer, RNG and step from checkpoint/; ValueError naming the file that is unreadable
        (truncated, tampered) or does not fit this model (another architecture)."""
        state = json.loads((self.ckpt_dir / "trainer_state.json").read_text())
        tensors = {}
        for name in ("model.safetensors", "optimizer.safetensors"):
            try:
                tensors[name] = load_file(self.ckpt_dir / name)
            except Exception as e:  # safetensors raises its own type on truncated / foreign files
                raise ValueError(f"cannot resume: {self.ckpt_dir / name} is not a readable safetensors file "
                                 f"({' '.join(str(e).split())[:200]})") from None
        weights = tensors["model.safetensors"]
        try:
            for alias, name in state["aliases"].items():
                weights[alias] = weights[name]
            osd = _unflatten_optimizer(tensors["optimizer.safetensors"], state["optimizer"])
            set_state_dict(self.model, self.optimizer, model_state_dict=weights, optim_state_dict=osd,
                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"cannot resume: the checkpoint in {self.ckpt_dir} does not fit this model (another "
                             f"architecture or config?): {' '.join(str(e).split())[:300]}") from None
        rng = self.ckpt_dir / f"rng-{self.rank}.json"
        if state["world"] == self.world and rng.exists():
            try:
                _set_rng_state(json.loads(rng.read_text()))
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise ValueError(f"cannot resume: {rng} is unreadable ({type(e).__name__}: {e})") from None
        else:
            log.warning("checkpoint from %d ranks resumed on %d: RNG streams restart", state["world"], self.world)
        self.step = state["step"]
        log.info("resumed from %s at step %d", self.ckpt_dir, self.step)

    def _barrier(self):
        if self.distributed:
            dist.barrier()

    def _collective(self, op: Callable, tensor: torch.Tensor, *args) -> torch.Tensor:
        """`op(tensor, *args)` done, its work kept until the next one. A gloo worker thread that dropped the
        last reference to a finished collective's tensors would take the GIL to free them; when that lands
        while the interpreter exits (the loop's final flag broadcast, a loaded machine), the thread is killed
        inside C++ and the rank aborts ("terminate called without an active exception", both ranks). Held
        here, the tensors are freed by this thread instead."""
        tensor = tensor.to(self.device)
        work = op(tensor, *args, async_op=True)
        work.wait()
        self._last_work = (work, tensor)
        return tensor

    # ------------------------------------------------------------------ loop
    def _metrics_writer(self):
        path = self.out / "metrics.jsonl"
        if self.rank != 0:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        self._kept_rows = []
        if self.step and path.exists():  # drop rows logged after the checkpoint we resumed from
            self._kept_rows = [row for row in _read_metrics(path) if row["step"] <= self.step]
            atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in self._kept_rows).encode())
        elif path.exists():
            path.unlink()
        try:  # tensorboard is optional: without it, metrics.jsonl only
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tb"))
        except ImportError:
            self.tb = None
        return path.open("a")

    def _log(self, f, row: dict):
        if f is None:
            return
        f.write(json.dumps(row) + "\n")
        f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def _evaluate(self, f) -> dict:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast(self.eval_amp):
            result = self.eval_fn(self.raw_model)
        self.model.train()
        self._log(f, {"step": self.step, **result})
        return result

    def _autocast(self, enabled: bool = True):
        if self.amp_dtype is None or not enabled:
            return torch.autocast(self.device.split(":")[0], enabled=False)
        return torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype)

    def fit(self, until_step: int | None = None) -> dict:
        """Train to cfg.steps (or `until_step`, or the time limit); returns the last metrics row. The output
        folder is locked meanwhile: a second training into it is refused, naming this process."""
        with run_lock(self.out, self.rank):
            return self._fit(until_step)

    def _fit(self, until_step: int | None) -> dict:
        cfg = self.cfg
        if cfg.resume and self._recover_checkpoint():
            self.load_checkpoint()
        end = min(cfg.steps, until_step or cfg.steps)
        finished = self.step >= end  # resuming a run that already reached its end
        f = self._metrics_writer()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.rank == 0),
                   desc="train", dynamic_ncols=True)
        t0 = t_log = time.time()
        tokens = 0
        row: dict = {}
        self.model.train()
        while self.step < end:
            lr = lr_at(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for a in range(cfg.grad_accum):
                batch = self._micro_batch(self.step, a)
                with self._grad_sync(a == cfg.grad_accum - 1), self._autocast():
                    loss, n = self.step_fn(self.model, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                tokens += n
            grad_norm = float(_local(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))) \
                if cfg.grad_clip > 0 else float("nan")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.step % cfg.log_every == 0 or self.step == end:
                if self.distributed:  # mean loss and total tokens over ranks
                    t = self._collective(dist.all_reduce, torch.tensor([loss_sum, tokens], dtype=torch.float64))
                    loss_sum, tokens = t[0].item() / self.world, int(t[1].item())
                now = time.time()
                row = {"step": self.step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                       "tokens_per_s": tokens / max(now - t_log, 1e-9), "elapsed_s": now - t0}
                self._log(f, row)
                bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
                t_log, tokens = now, 0
            bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != end:
                row.update(self._evaluate(f))
            out_of_time = cfg.max_minutes is not None and (time.time() - t0) > cfg.max_minutes * 60
            if self.distributed:
                out_of_time = bool(self._collective(dist.broadcast, torch.tensor([float(out_of_time)]), 0).item())
            if self.step % cfg.ckpt_every == 0 or self.step == end or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                log.warning("CUT SHORT: the %.1f-minute cap stopped training at step %d of %d; results are not "
                            "those of the configured budget", cfg.max_minutes, self.step, end)
                break
        bar.close()
        done = [r for r in getattr(self, "_kept_rows", []) if r["step"] == self.step]  # rank 0's log
        logged = finished and any("lr" not in r for r in done)  # the finished run's final evaluation is logged
        if self.distributed:  # every rank evaluates, or none
            logged = bool(self._collective(dist.broadcast, torch.tensor([float(logged)]), 0).item())
        if logged:
            row = {k: v for r in done for k, v in r.items()}
        else:
            row.update(self._evaluate(f))
        if f is not None:
            f.close()
            if self.tb is not None:
                self.tb.close()
        return row
