"""Trains a tiny transformer with the Trainer; run as a script (also under torchrun) by the trainer tests."""
import json
import sys
from pathlib import Path

import torch

from ramm.model.transformer import Transformer, TransformerConfig
from ramm.training.trainer import Trainer, TrainerConfig
from ramm.utils import end_distributed_process

V, T = 31, 16


class Pattern(torch.utils.data.Dataset):
    """Fixed-length sequences (equal tokens per micro-batch, so rank means average to the global mean)."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(1)
        self.rows = (torch.randint(0, V, (n, 1), generator=g) + torch.arange(T + 1) * 3) % V

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"idx": self.rows[i, :-1], "targets": self.rows[i, 1:]}


def run(out_dir, steps=12, until=None, resume=False, grad_accum=1, dropout=0.1, strategy="ddp", amp_cpu=False):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=V, max_seq_len=T, dropout=dropout))
    cfg = TrainerConfig(out_dir=str(out_dir), steps=steps, batch_size=4, grad_accum=grad_accum, lr=3e-3,
                        warmup_steps=2, log_every=1, ckpt_every=5, resume=resume, progress=False, device="cpu",
                        strategy=strategy, amp_cpu=amp_cpu)
    trainer = Trainer(model, Pattern(), cfg)
    trainer.fit(until_step=until)
    return trainer


def main(argv: list[str]) -> None:
    """The script: out_dir grad_accum [strategy [until_step [resume]]]. A one-rank run needs no launcher, so
    the tests call this in their own process for it (4 s less than a fresh interpreter) and torchrun the ranks."""
    args = [str(a) for a in argv] + [None] * (5 - len(argv))
    t = run(args[0], grad_accum=int(args[1]), dropout=0.0, strategy=args[2] or "ddp",
            until=int(args[3]) if args[3] else None, resume=args[4] == "resume")
    local = sum(getattr(p, "_local_tensor", p).numel() for p in t.model.parameters())  # this rank's share
    (Path(args[0]) / f"params-{t.rank}.json").write_text(json.dumps({"local": local}))


if __name__ == "__main__":
    main(sys.argv[1:])
    end_distributed_process(0)  # torchrun's ranks: no interpreter teardown (the in-process caller has no group)
