"""Same seed, same weights: each recipe seeds before it builds its model (the initial weights included)."""
import pytest
import torch
from safetensors.torch import load_file

from ramm.training.trainer import TrainerConfig
from tests.retrieval.conftest import TINY as ENCODER_TINY
from tests.retrieval.conftest import make_docs


def _image_tokenizer(out, docs):
    from ramm.tokenizers.image_tokenizer import ImageTokenizerConfig
    from ramm.training.tokenizer_recipe import train_image_tokenizer
    train_image_tokenizer(docs, ImageTokenizerConfig(image_size=16, grid=4, channels=16, latent_dim=16, codebook_size=32),
                          TrainerConfig(out_dir=str(out), steps=2, batch_size=4, progress=False, device="cpu", amp=False))


def _retriever(out, docs):
    from ramm.retrieval.dual_encoder import DualEncoderConfig
    from ramm.training.retriever_recipe import train_retriever
    train_retriever(docs, out, TrainerConfig(out_dir=str(out), steps=2, batch_size=6, progress=False, device="cpu",
                                             amp=False), DualEncoderConfig(**ENCODER_TINY))


@pytest.mark.parametrize("recipe", [_image_tokenizer, _retriever])
def test_same_seed_gives_the_same_weights(tmp_path, recipe):
    torch.set_num_threads(1)
    docs = make_docs()[:12]
    for run in ("a", "b"):
        torch.manual_seed(len(run) * 1234 + ord(run))  # whatever the global RNG held before
        recipe(tmp_path / run, docs)
    a, b = load_file(tmp_path / "a/model.safetensors"), load_file(tmp_path / "b/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
