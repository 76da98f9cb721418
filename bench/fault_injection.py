"""kill -9 at random points of each resumable job, then resume: is the result the uninterrupted one?

Jobs, on tiny fixtures (the tests' coloured shapes, a random-weight tiny encoder):
  memory-build     Memory.build of 60 documents, batch 4
  memory-add       Memory.add of 30 documents to a 30-document memory, batch 4
  trainer          the Trainer on a tiny transformer (dropout on), 24 steps, a checkpoint every 2
  image-tokenizer  train_image_tokenizer, 16 steps, a checkpoint every 2
  retriever        train_retriever, 16 steps, a checkpoint every 2
Each run starts the job in a child process, kills it (SIGKILL) after a uniformly random time within
the uninterrupted job's duration (counted from the end of the child's imports), reruns it to the end (resume on), and compares with the
uninterrupted result: memory ids in order, stored embeddings and index rows; final weights bitwise
and the logged losses for training.

    python bench/fault_injection.py [--runs 20] [--jobs memory-build,trainer]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("memory-build", "memory-add", "trainer", "image-tokenizer", "retriever")


# ---------------------------------------------------------------------------------------------- child side
def _docs(n: int):
    sys.path.insert(0, str(ROOT / "tests" / "retrieval"))
    from conftest import make_docs
    return make_docs()[:n]


def _encoder(work: Path) -> Path:
    """A random-weight tiny encoder, saved once per bench run (the same for every child)."""
    from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
    path = work / "encoder"
    if not (path / "config.json").exists():
        import torch
        torch.manual_seed(0)
        cfg = DualEncoderConfig(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=16, text_width=32,
                                text_layers=1, text_heads=2, embed_dim=32)
        DualEncoder(cfg, train_text_tokenizer([d.text for d in _docs(60)], 300)).save_pretrained(path)
    return path


def child(job: str, out: Path, work: Path) -> None:
    import torch
    torch.set_num_threads(1)
    import ramm.retrieval.memory  # noqa: F401 - imports first, so that kill points fall in the job itself
    import ramm.training.retriever_recipe  # noqa: F401
    import ramm.training.tokenizer_recipe  # noqa: F401
    from ramm.training.trainer import TrainerConfig
    _docs(60)
    print("ready", flush=True)

    def trainer_cfg(steps):
        return TrainerConfig(out_dir=str(out), steps=steps, batch_size=6, lr=3e-3, warmup_steps=2, log_every=1,
                             ckpt_every=2, resume=True, progress=False, device="cpu", amp=False)

    if job == "memory-build":
        from ramm.retrieval.memory import Memory
        Memory.build(_docs(60), _encoder(work), out, batch_size=4, progress=False)
    elif job == "memory-add":
        from ramm.retrieval.memory import Memory
        base = work / "memory-base"
        if not out.exists():
            shutil.copytree(base, out)
        Memory.load(out).add(_docs(60)[30:], batch_size=4)
    elif job == "trainer":
        sys.path.insert(0, str(ROOT / "tests" / "training"))
        from tiny_run import Pattern
        from ramm.model.transformer import Transformer, TransformerConfig
        from ramm.training.trainer import Trainer
        torch.manual_seed(0)
        model = Transformer(TransformerConfig.preset("tiny", vocab_size=31, max_seq_len=16, dropout=0.1))
        cfg = trainer_cfg(24)
        cfg.batch_size = 4
        Trainer(model, Pattern(), cfg).fit()
    elif job == "image-tokenizer":
        from ramm.tokenizers.image_tokenizer import ImageTokenizerConfig
        from ramm.training.tokenizer_recipe import train_image_tokenizer
        train_image_tokenizer(_docs(24), ImageTokenizerConfig(image_size=16, grid=4, channels=16, latent_dim=16,
                                                              codebook_size=32), trainer_cfg(16))
    elif job == "retriever":
        from ramm.retrieval.dual_encoder import DualEncoderConfig
        from ramm.training.retriever_recipe import train_retriever
        train_retriever(_docs(24), out, trainer_cfg(16), DualEncoderConfig(
            image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=16, text_width=32, text_layers=1,
            text_heads=2, embed_dim=32))
    else:
        raise SystemExit(f"unknown job {job}")


# ---------------------------------------------------------------------------------------------- parent side
def _run(job: str, out: Path, work: Path, kill_after: float | None = None) -> tuple[float, bool]:
    """(seconds of the job itself, after the child's imports; whether it was killed before it finished).
    kill_after: SIGKILL that many seconds into the job."""
    cmd = [sys.executable, __file__, "child", job, str(out), str(work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{job} child did not start:\n{proc.communicate()[1][-3000:]}")
    t0 = time.time()
    if kill_after is None:
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{job} failed:\n{err[-3000:]}")
        return time.time() - t0, False
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    return time.time() - t0, proc.returncode == -signal.SIGKILL


def _result(job: str, out: Path):
    """What must equal the uninterrupted run's: comparable plain values."""
    import json

    import numpy as np
    if job.startswith("memory"):
        from ramm.retrieval.memory import Memory
        mem = Memory.load(out)
        emb = np.concatenate(list(mem.store.iter_embeddings())) if len(mem) else np.zeros((0, mem.config.dim))
        _, rows = mem.search_vectors(emb, 1)
        return {"ids": mem.ids, "emb": emb.tobytes(), "index": int(mem.index.ntotal), "top1": rows[:, 0].tolist()}
    from safetensors.torch import load_file
    weights_file = out / ("checkpoint/model.safetensors" if job == "trainer" else "model.safetensors")
    w = load_file(weights_file)
    losses = [json.loads(r).get("loss") for r in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in r]
    return {"weights": {k: v.numpy().tobytes() for k, v in w.items()}, "losses": losses}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ramm-faults-"))
    try:
        sys.path.insert(0, str(ROOT))
        _encoder(work)
        if "memory-add" in args.jobs:
            from ramm.retrieval.memory import Memory
            Memory.build(_docs(60)[:30], work / "encoder", work / "memory-base", batch_size=4, progress=False)
        print(f"{'job':<16} {'runs':>4} {'killed':>6} {'equal':>5} {'job s':>6} {'kill points (s)':<20}")
        failures = 0
        for job in args.jobs.split(","):
            ref = work / f"{job}-ref"
            duration, _ = _run(job, ref, work)
            want = _result(job, ref)
            killed = equal = 0
            points = []
            for i in range(args.runs):
                out = work / f"{job}-{i}"
                t = rng.uniform(0, duration)
                points.append(t)
                killed += _run(job, out, work, kill_after=t)[1]
                _run(job, out, work)
                ok = _result(job, out) == want
                equal += ok
                if not ok:
                    failures += 1
                    print(f"  {job} run {i}: killed at {t:.2f}s, resumed result differs ({out})")
                else:
                    shutil.rmtree(out, ignore_errors=True)
            print(f"{job:<16} {args.runs:>4} {killed:>6} {equal:>5} {duration:>6.1f} "
                  f"{min(points):.2f}..{max(points):.2f}")
        return 1 if failures else 0
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit(main())
