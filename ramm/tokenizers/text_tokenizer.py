"""Byte-level BPE for the text side of the CM3 stream (HF `tokenizers`, as GPT-2 / CM3 use).

Only text ids live here; the CM3 special tokens (<doc>, <img>, <mask:i>, ...) are in the unified
`Vocabulary`, after the image ids. A `<pad>` id 0 is kept for users of the tokenizer on its own.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ramm.utils import atomic_write_text

log = logging.getLogger(__name__)

PAD = "<pad>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, add_prefix_space: bool = False):
    """The one byte-level BPE trainer (a `tokenizers.Tokenizer`, <pad> id 0): the generator's TextTokenizer
    and the dual encoder's text tower (`train_text_tokenizer`) differ only in these arguments."""
    if vocab_size < 258:
        raise ValueError(f"vocab_size must be >= 258 (256 bytes + <pad> + one merge), got {vocab_size}")
    texts = list(texts)
    if not texts:
        raise ValueError("cannot train a tokenizer on zero texts")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    log.info("trained byte-level BPE with %d tokens", tok.get_vocab_size())
    return tok


class TextTokenizer:
    def __init__(self, tokenizer):
        self._tok = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> "TextTokenizer":
        """Learn merges on `texts`; vocab_size counts the 256 byte symbols and <pad>."""
        return cls(train_bpe(texts, vocab_size, min_frequency))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @property
    def pad(self) -> int:
        return self._tok.token_to_id(PAD)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=True)

    def save_pretrained(self, out_dir) -> None:
        atomic_write_text(Path(out_dir) / "tokenizer.json", self._tok.to_str())

    @classmethod
    def from_pretrained(cls, model_dir) -> "TextTokenizer":
        path = Path(model_dir) / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"{path}: not a readable tokenizer ({e})") from None


class ByteTokenizer:
    """Training-free UTF-8 bytes (256 ids): round-trips any text exactly; for tests and tiny corpora
    where training a BPE is not worth it."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")
