import pytest
import torch

from ramm.model.transformer import Transformer, TransformerConfig
from ramm.tokenizers.vocab import Vocabulary


@pytest.fixture(scope="session")
def vocab():
    return Vocabulary(text_size=24, image_size=16, n_sentinels=3)


@pytest.fixture(scope="session")
def model(vocab):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=96)
    return Transformer(cfg).eval()
