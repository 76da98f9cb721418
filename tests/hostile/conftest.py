"""The hostile-input suite: every loader, model folder and command facing a user's files joins it.

Bombs and huge dimensions, bad encodings, read-only and full disks, tampered files and swapped parts:
each must end in a clear error naming the item (never a traceback, never a silent wrong result).
Fixtures are tiny (CPU, seconds) and built by the tests themselves (`hostile_helpers`)."""
import pytest
import torch

from hostile_helpers import pair_docs, tiny_image_tokenizer


@pytest.fixture
def bundle(tmp_path):
    """A generator bundle with random weights and its own tokenizers, saved as `ramm train generator` does."""
    from ramm.model.bundle import save_generator
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary

    torch.set_num_threads(1)
    docs = pair_docs()
    text_tok = TextTokenizer.train([d.text for d in docs] * 3, vocab_size=300)
    text_tok.save_pretrained(tmp_path / "text-tok")
    image_tok = tiny_image_tokenizer()
    image_tok.save_pretrained(tmp_path / "image-tok")
    vocab = Vocabulary(text_tok.vocab_size, image_tok.codebook_size)
    torch.manual_seed(0)
    gen = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=160))
    save_generator(gen, tmp_path / "gen", text_tokenizer=tmp_path / "text-tok", image_tokenizer=tmp_path / "image-tok")
    return tmp_path / "gen"
