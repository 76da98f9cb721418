import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ramm.config import from_dict
from ramm.training.trainer import TrainerConfig, lr_at
from ramm.utils import cpu_has_bf16

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import main as tiny_run_main, run  # noqa: E402

HERE = Path(__file__).parent


def losses(out):
    return [json.loads(r)["loss"] for r in (Path(out) / "metrics.jsonl").read_text().splitlines() if "loss" in r]


def test_loss_falls(tmp_path):
    run(tmp_path, steps=30)
    curve = losses(tmp_path)
    assert len(curve) == 30 and sum(curve[-5:]) / 5 < 0.5 * sum(curve[:5]) / 5


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (amp_cpu is a no-op there)")
def test_bf16_training_on_a_bf16_cpu_follows_the_fp32_run(tmp_path):
    fp32, bf16 = run(tmp_path / "fp32", steps=30), run(tmp_path / "bf16", steps=30, amp_cpu=True)
    assert fp32.amp_dtype is None and bf16.amp_dtype == torch.bfloat16
    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert a != b  # bf16 really ran
    assert abs(sum(a[-5:]) - sum(b[-5:])) / sum(a[-5:]) < 0.1  # and learned the same: last losses within 10%


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    run(tmp_path / "a", steps=12)
    run(tmp_path / "b", steps=12, until=7)  # stops at 7, checkpoint written there
    assert json.loads((tmp_path / "b/checkpoint/trainer_state.json").read_text())["step"] == 7
    run(tmp_path / "b", steps=12, resume=True)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # dropout on: RNG state restored too
    wa, wb = load_file(tmp_path / "a/checkpoint/model.safetensors"), load_file(tmp_path / "b/checkpoint/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_rank_ddp_equals_one_rank_with_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    tiny_run_main([tmp_path / "one", "1"])  # the script's one-rank run, in this process
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(HERE / "tiny_run.py"), str(tmp_path / "two"), "1"], check=True, env=env, capture_output=True)
    one, two = load_file(tmp_path / "one/checkpoint/model.safetensors"), load_file(tmp_path / "two/checkpoint/model.safetensors")
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-5)


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainerConfig(out_dir="x", steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(50, cfg) < lr_at(20, cfg) and lr_at(100, cfg) == pytest.approx(0.1)


def test_bad_config_raises_value_error():
    with pytest.raises(ValueError, match="batch_size"):
        TrainerConfig(out_dir="x", batch_size=0)
    with pytest.raises(ValueError, match="strategy"):
        from_dict(TrainerConfig, {"out_dir": "x", "strategy": "zero3"})


def test_warmup_none_scales_with_the_budget():
    assert TrainerConfig(steps=30, warmup_steps=None).warmup == 3
    assert TrainerConfig(steps=3000, warmup_steps=None).warmup == 100


def test_an_empty_out_dir_is_a_clear_error():
    from ramm.training.trainer import Trainer
    with pytest.raises(ValueError, match="out_dir"):
        Trainer(torch.nn.Linear(2, 2), [torch.zeros(2)], TrainerConfig(out_dir=""))


class _Killed(BaseException):
    """Stands for kill -9: nothing catches it."""


def _crash_save_at_op(monkeypatch, at_step: int, k: int) -> list:
    """Make the k-th file-system step (mkdir, rename, replace, delete) of the checkpoint save at
    `at_step` die; returns the ops seen, to know when k ran past the last one."""
    import shutil

    from ramm.training import trainer as trainer_mod
    seen, active = [], [False]

    def wrap(fn, name):
        def inner(*a, **kw):
            if active[0]:
                seen.append(name)
                if len(seen) == k:
                    raise _Killed(name)
            return fn(*a, **kw)
        return inner

    for owner, attr in ((Path, "rename"), (Path, "mkdir"), (os, "replace"), (shutil, "rmtree")):
        monkeypatch.setattr(owner, attr, wrap(getattr(owner, attr), attr))
    save = trainer_mod.Trainer.save_checkpoint

    def save_checkpoint(self):
        active[0] = self.step == at_step
        try:
            save(self)
        finally:
            active[0] = False
    monkeypatch.setattr(trainer_mod.Trainer, "save_checkpoint", save_checkpoint)
    return seen


def test_resume_after_a_kill_at_every_step_of_a_checkpoint_save_equals_uninterrupted(tmp_path, monkeypatch):
    run(tmp_path / "a", steps=7, dropout=0.0)  # checkpoints at 5 and 7
    want_w = load_file(tmp_path / "a/checkpoint/model.safetensors")
    k = 0
    while True:
        k += 1
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            seen = _crash_save_at_op(m, at_step=7, k=k)
            try:
                run(out, steps=7, dropout=0.0)
            except _Killed:
                pass
        if len(seen) < k:  # the save finished: every op has had its kill
            break
        run(out, steps=7, resume=True, dropout=0.0)
        assert losses(out) == losses(tmp_path / "a"), f"kill at op {k} ({seen[-1]})"
        got = load_file(out / "checkpoint/model.safetensors")
        assert all(torch.equal(got[n], want_w[n]) for n in want_w), f"kill at op {k} ({seen[-1]})"
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert k > 8  # the save has that many steps; each was killed once
