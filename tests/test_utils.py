import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ramm.utils import atomic_write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_keeps_the_mode_a_plain_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "plain.bin"]


def test_a_torchrun_process_ends_cleanly_after_gloo_collectives_on_python_tensors(tmp_path):
    """Four two-rank runs that end right after their collectives all exit 0 with every rank's output; without
    `end_distributed_process` each aborts at exit with probability about 0.4 (measured 8 of 20), so four clean
    runs by chance are 0.6 ** 4 = 13%."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("distributed_exit_run.py")
    for run in range(4):
        out = tmp_path / str(run)
        out.mkdir()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), str(out)], env=env, capture_output=True, text=True)
        assert r.returncode == 0 and "terminate called" not in r.stderr, (run, r.stderr[-2000:])
        assert [(out / f"rank-{rank}.txt").read_text() for rank in (0, 1)] == ["3", "3"]
