"""`finetune_chameleon` from a JSON config; run under torchrun by the Chameleon FSDP test."""
import json
import sys

import torch

from ramm.config import ChameleonFinetuneConfig, from_dict
from ramm.training.chameleon_recipe import finetune_chameleon
from ramm.utils import end_distributed_process

if __name__ == "__main__":
    torch.set_num_threads(1)
    summary = finetune_chameleon(from_dict(ChameleonFinetuneConfig, json.loads(open(sys.argv[1]).read())))
    print(json.dumps(summary))
    end_distributed_process(0)
