"""Run by torchrun in test_utils: gloo collectives on Python-made tensors up to the last line, then
`end_distributed_process`. Without it, about 2 in 5 such runs abort at exit ("terminate called without an
active exception": a gloo thread freeing a tensor while the interpreter finalises)."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ramm.utils import end_distributed_process

torch.set_num_threads(1)
dist.init_process_group("gloo")
total = torch.ones(1000) * (dist.get_rank() + 1)
dist.all_reduce(total, async_op=True).wait()
(Path(sys.argv[1]) / f"rank-{dist.get_rank()}.txt").write_text(f"{total[0].item():g}")
for _ in range(50):  # collectives up to the last line: their tensors are freed as the interpreter finalises
    dist.all_reduce(torch.ones(1000), async_op=True).wait()
    dist.broadcast(torch.zeros(10), 0, async_op=True).wait()
end_distributed_process(0)
