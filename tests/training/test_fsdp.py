"""FSDP2 under torchrun (2 CPU ranks, gloo): the same run as one rank with the same global batch, and a
resumed run equals an uninterrupted one (checkpoints hold the full state on rank 0)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
sys.path.insert(0, str(HERE))
import tiny_run  # noqa: E402


def losses(out):
    return [json.loads(r)["loss"] for r in (Path(out) / "metrics.jsonl").read_text().splitlines() if "loss" in r]


def torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(HERE / "tiny_run.py"), *map(str, args)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One rank (no sharding) and two FSDP ranks, 12 steps each, batch 4 (grad_accum 2 on the single rank)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    tiny_run.main([tmp / "one", "2"])  # the script's one-rank run, in this process
    torchrun(tmp / "fsdp", 1, "fsdp")
    return tmp


def test_two_rank_fsdp_equals_one_rank_with_the_same_global_batch(runs):
    one, two = load_file(runs / "one/checkpoint/model.safetensors"), load_file(runs / "fsdp/checkpoint/model.safetensors")
    assert set(one) <= set(two)  # full (unsharded) weights; tied ones may be written under both names
    for k in one:
        assert two[k].shape == one[k].shape, k
        torch.testing.assert_close(one[k], two[k], atol=2e-5, rtol=1e-4)
    assert len(losses(runs / "one")) == 12
    assert losses(runs / "one") == pytest.approx(losses(runs / "fsdp"), abs=1e-5)
    state = json.loads((runs / "fsdp/checkpoint/trainer_state.json").read_text())
    assert state["world"] == 2 and state["config"]["strategy"] == "fsdp"
    full = json.loads((runs / "one/params-0.json").read_text())["local"]
    shares = [json.loads((runs / f"fsdp/params-{r}.json").read_text())["local"] for r in (0, 1)]
    assert all(s <= full // 2 + 64 for s in shares) and sum(shares) >= full, (full, shares)  # sharded
    opt = load_file(runs / "fsdp/checkpoint/optimizer.safetensors")  # full Adam moments, not a rank's shard
    name = next(k for k in one if k.endswith("weight") and one[k].dim() == 2)
    assert opt[f"{name}::exp_avg"].shape == one[name].shape


def test_resumed_fsdp_run_equals_an_uninterrupted_one(runs, tmp_path):
    torchrun(tmp_path, 1, "fsdp", 7)
    assert json.loads((tmp_path / "checkpoint/trainer_state.json").read_text())["step"] == 7
    torchrun(tmp_path, 1, "fsdp", "", "resume")
    assert losses(tmp_path) == losses(runs / "fsdp")
    want, got = load_file(runs / "fsdp/checkpoint/model.safetensors"), load_file(tmp_path / "checkpoint/model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)
