"""kill -9 at random points of each resumable job, then resume: is the result the uninterrupted one?

Jobs, on tiny fixtures (the tests' coloured shapes, a random-weight tiny encoder):
  memory-build     Memory.build of 60 documents, batch 4
  memory-add       Memory.add of 30 documents to a 30-document memory, batch 4
  trainer          the Trainer on a tiny transformer (dropout on), 24 steps, a checkpoint every 2
  image-tokenizer  train_image_tokenizer, 16 steps, a checkpoint every 2
  retriever        train_retriever, 16 steps, a checkpoint every 2
  generator-ra     train_generator with retrieval on (a JSONL corpus, its memory, random-weight tokenizers), 12 steps
  grace            train_grace (semantic ids, mixed schedule), 12 steps, a checkpoint every 2
  two-trainings    the trainer job started twice into one folder, the second a random moment after the first:
                   the second must be refused naming the first's pid (or, the first finished, resume to no
                   change), and the first's result must be the uninterrupted one
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
JOBS = ("memory-build", "memory-add", "trainer", "image-tokenizer", "retriever", "generator-ra", "grace",
        "two-trainings")
RECIPES = ("generator-ra", "grace")


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


def _recipe_inputs(work: Path) -> None:
    """What the generator and GRACE recipes read, made once per bench run: a JSONL corpus of the fixture
    documents, a memory of them, a text BPE and a random-weight image tokenizer."""
    import json

    import torch

    from ramm.corpus.document import batch_pixels, encode_png
    from ramm.retrieval.memory import Memory
    from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    docs = _docs(60)
    (work / "corpus").mkdir()
    for d in docs:
        (work / "corpus" / f"{d.id}.png").write_bytes(encode_png(d.image))
    (work / "corpus" / "corpus.jsonl").write_text("".join(
        json.dumps({"id": d.id, "image": f"{d.id}.png", "caption": d.text, **d.metadata}) + "\n" for d in docs))
    Memory.build(docs, work / "encoder", work / "memory", batch_size=16, progress=False)
    TextTokenizer.train([d.text for d in docs] * 3, vocab_size=300).save_pretrained(work / "text-tok")
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(ImageTokenizerConfig(image_size=16, grid=4, patch=2, channels=8, latent_dim=8))
    with torch.no_grad():  # k-means-initialise the codebook now: encoding draws no random numbers in the jobs then
        tokenizer(batch_pixels(docs, 16))
    tokenizer.save_pretrained(work / "image-tok")


def child(job: str, out: Path, work: Path) -> None:
    import torch
    torch.set_num_threads(1)
    import ramm.retrieval.memory  # noqa: F401 - imports first, so that kill points fall in the job itself
    import ramm.training.retriever_recipe  # noqa: F401
    import ramm.training.tokenizer_recipe  # noqa: F401
    from ramm.training.trainer import TrainerConfig
    _docs(60)
    print("ready", flush=True)
    if job == "two-trainings":  # the parent says when, so that the two trainings overlap
        sys.stdin.readline()

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
    elif job in ("trainer", "two-trainings"):
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
    elif job == "generator-ra":
        from ramm.config import GeneratorConfig, RAConfig
        from ramm.training.generator_recipe import train_generator
        train_generator(GeneratorConfig(
            corpus=str(work / "corpus" / "corpus.jsonl"), memory=str(work / "memory"), tokenizer=str(work / "image-tok"),
            text_tokenizer=str(work / "text-tok"), out=str(out), size="tiny", copy_dim=8, eval_limit=4,
            ra=RAConfig(max_len=160), trainer=trainer_cfg(12)))
    elif job == "grace":
        from ramm.config import GraceConfig
        from ramm.training.grace_recipe import grace_documents, train_grace
        cfg = GraceConfig(corpus=str(work / "corpus" / "corpus.jsonl"), out=str(out), text_tokenizer=str(work / "text-tok"),
                          image_tokenizer=str(work / "image-tok"), memorize_steps=6, retrieve_steps=6, num_beams=2,
                          trainer=trainer_cfg(12))
        train_grace(cfg, *grace_documents(cfg))
    else:
        raise SystemExit(f"unknown job {job}")


# ---------------------------------------------------------------------------------------------- parent side
def _run(job: str, out: Path, work: Path, kill_after: float | None = None) -> tuple[float, bool]:
    """(seconds of the job itself, after the child's imports; whether it was killed before it finished).
    kill_after: SIGKILL that many seconds into the job."""
    proc = _start(job, out, work)
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


def _spawn(job: str, out: Path, work: Path) -> subprocess.Popen:
    """The job's child, started (it prints "ready" when its imports are done, then runs the job)."""
    cmd = [sys.executable, __file__, "child", job, str(out), str(work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAMM_CACHE": str(work / "cache")}
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _start(job: str, out: Path, work: Path) -> subprocess.Popen:
    """The job's child, once its imports are done."""
    proc = _spawn(job, out, work)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{job} child did not start:\n{proc.communicate()[1][-3000:]}")
    return proc


def _two_trainings(out: Path, work: Path, delay: float) -> str:
    """Start the trainer job into `out`, then a second one `delay` s later: 'refused' when one was refused
    naming the other's pid (with a delay near 0 the second may take the folder first), 'after' when the second
    started after the first had finished (and changed nothing), else a description of what went wrong."""
    first, second = _spawn("two-trainings", out, work), _spawn("two-trainings", out, work)
    for proc in (first, second):
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a two-trainings child did not start:\n{proc.communicate()[1][-3000:]}")
    first.stdin.write("go\n")
    first.stdin.flush()
    time.sleep(delay)
    second.stdin.write("go\n")
    second.stdin.flush()
    _, err2 = second.communicate()
    _, err1 = first.communicate()
    if first.returncode:
        said = err1.strip().splitlines()[-1] if err1.strip() else ""
        if second.returncode == 0 and f"being trained into by pid {second.pid}" in said:
            return "refused"
        return f"the first training failed: {said}"
    if second.returncode == 0:
        return "after"
    said = err2.strip().splitlines()[-1] if err2.strip() else ""
    return "refused" if f"being trained into by pid {first.pid}" in said else f"the second failed otherwise: {said}"


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
    weights_file = out / ("checkpoint/model.safetensors" if job in ("trainer", "two-trainings") else "model.safetensors")
    w = load_file(weights_file)
    metrics = out / "metrics.jsonl" if (out / "metrics.jsonl").exists() else out / "mixed" / "metrics.jsonl"  # GRACE
    losses = [json.loads(r).get("loss") for r in metrics.read_text().splitlines() if '"loss"' in r]
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
        if any(job in args.jobs for job in RECIPES):
            _recipe_inputs(work)
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
                if job == "two-trainings":  # "killed" counts the second trainings refused
                    outcome = _two_trainings(out, work, t)
                    killed += outcome == "refused"
                    if outcome not in ("refused", "after"):
                        print(f"  {job} run {i}: {outcome}")
                else:
                    killed += _run(job, out, work, kill_after=t)[1]
                    _run(job, out, work)
                ok = _result(job, out) == want and (job != "two-trainings" or outcome in ("refused", "after"))
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
