"""A training folder has one writer, and a damaged checkpoint is refused instead of silently restarting."""
import json
import os
from pathlib import Path

import pytest
import torch

from hostile_helpers import Holder

V, T = 31, 16


class Pattern(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        row = (torch.arange(T + 1) * 3 + i) % V
        return {"idx": row[:-1], "targets": row[1:]}


def train(out, steps=4, resume=False, n_layer=None, evaluate=False):
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.training.trainer import Trainer, TrainerConfig
    torch.set_num_threads(1)
    torch.manual_seed(0)
    extra = {"n_layer": n_layer} if n_layer else {}
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=V, max_seq_len=T, dropout=0.0, **extra))
    cfg = TrainerConfig(out_dir=str(out), steps=steps, batch_size=2, lr=3e-3, warmup_steps=1, log_every=1,
                        ckpt_every=2, resume=resume, progress=False, device="cpu")
    trainer = Trainer(model, Pattern(), cfg, eval_fn=(lambda m: {"val_score": 0.5}) if evaluate else None)
    return trainer.fit()


def rows(out) -> list[dict]:
    return [json.loads(r) for r in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_a_second_training_into_a_held_folder_is_refused_naming_the_holder(tmp_path):
    from ramm.utils import Locked
    train(tmp_path, steps=2)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    holder = Holder(tmp_path / ".lock")
    try:
        with pytest.raises(Locked, match=f"being trained into by pid {holder.proc.pid}") as e:
            train(tmp_path, steps=4, resume=True)
        assert e.value.pid == str(holder.proc.pid)
    finally:
        holder.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # the first run's log is untouched
    train(tmp_path, steps=4, resume=True)  # the holder gone, the folder is free again


def test_a_recipe_holds_its_folder_before_writing_anything(tmp_path):
    from ramm.config import GeneratorConfig
    from ramm.training.generator_recipe import train_generator
    from ramm.utils import Locked
    for name in ("corpus", "memory", "tok", "text", "out"):
        (tmp_path / name).mkdir()
    cfg = GeneratorConfig(corpus=str(tmp_path / "corpus"), memory=str(tmp_path / "memory"), tokenizer=str(tmp_path / "tok"),
                          text_tokenizer=str(tmp_path / "text"), out=str(tmp_path / "out"))
    holder = Holder(tmp_path / "out" / ".lock")
    try:
        with pytest.raises(Locked, match=f"pid {holder.proc.pid}"):
            train_generator(cfg)
    finally:
        holder.close()
    assert not (tmp_path / "out" / "generator_config.json").exists()


def test_a_corrupt_trainer_state_refuses_to_resume_and_keeps_the_run(tmp_path):
    train(tmp_path, steps=4)
    state = tmp_path / "checkpoint" / "trainer_state.json"
    state.write_text('{"step": 4, "wor')
    weights, log = (tmp_path / "checkpoint" / "model.safetensors").read_bytes(), (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume: .*checkpoint/trainer_state\.json is unreadable"):
        train(tmp_path, steps=6, resume=True)
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == weights
    assert (tmp_path / "metrics.jsonl").read_bytes() == log


def test_a_checkpoint_missing_a_file_its_state_lists_is_refused(tmp_path):
    train(tmp_path, steps=4)
    (tmp_path / "checkpoint" / "optimizer.safetensors").unlink()
    with pytest.raises(ValueError, match=r"checkpoint lacks optimizer\.safetensors"):
        train(tmp_path, steps=6, resume=True)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_a_truncated_checkpoint_file_is_named(tmp_path, name):
    train(tmp_path, steps=2)
    f = tmp_path / "checkpoint" / name
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"cannot resume: .*checkpoint/{name.replace('.', '[.]')} is not a readable"):
        train(tmp_path, steps=4, resume=True)


def test_resuming_with_another_architecture_is_a_clear_error(tmp_path):
    train(tmp_path, steps=2)
    with pytest.raises(ValueError, match="does not fit this model"):
        train(tmp_path, steps=4, resume=True, n_layer=1)


def test_resuming_a_finished_run_logs_no_second_evaluation(tmp_path):
    first = train(tmp_path, steps=4, evaluate=True)
    logged = rows(tmp_path)
    assert sum("val_score" in r for r in logged) == 1
    again = train(tmp_path, steps=4, resume=True, evaluate=True)
    assert rows(tmp_path) == logged
    assert again["val_score"] == first["val_score"] and again["loss"] == first["loss"]


def test_a_lock_message_waits_for_the_holders_pid_rather_than_saying_pid_unknown(tmp_path):
    import fcntl
    import threading
    from ramm.utils import Locked, exclusive_lock
    lock = tmp_path / "x.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that has the lock and has not written its pid yet
    threading.Timer(0.05, lambda: os.pwrite(fd, b"12345", 0)).start()
    try:
        with pytest.raises(Locked, match="held by 12345") as e:
            with exclusive_lock(lock, lambda pid: f"held by {pid}"):
                pass
        assert e.value.pid == "12345"
    finally:
        os.close(fd)
