"""GRACE's two training tasks as CM3 token sequences (Li et al. 2024, sec. 3.3).

    learning to memorize   <doc> <img> i_1 ... i_N </img> <sep>  identifier </doc>
    learning to retrieve   <doc> query text <sep>              identifier </doc>

The loss covers only the identifier. Retrieval queries are the captions plus, optionally, the caller's
pseudo-queries (EmojiBench: the name without the style, the short names) that stand in for the
paraphrases a user would type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ramm.corpus.document import Document
from ramm.grace.identifiers import Identifiers
from ramm.model.batch import pad_batch


@dataclass(frozen=True)
class Example:
    prompt: list[int]  # input tokens, ending in <sep>
    target: list[int]  # identifier tokens, ending in </doc>


def query_prompt(fmt, text: str) -> list[int]:
    if not text or not text.strip():
        raise ValueError("the query is empty")
    return [fmt.vocab.doc, *fmt.text.encode(text), fmt.vocab.sep]


def image_prompt(fmt, codes) -> list[int]:
    return [fmt.vocab.doc, *fmt.encode_image_codes(codes), fmt.vocab.sep]


def memorize_examples(docs: Sequence[Document], codes: np.ndarray, ids: Identifiers, fmt) -> list[Example]:
    """Image tokens -> identifier, one per memorized image; `codes` (N, tokens_per_image) as `docs`."""
    if len(codes) != len(docs):
        raise ValueError(f"{len(docs)} documents but {len(codes)} code rows")
    return [Example(image_prompt(fmt, c), ids.token_sequence(d.id)) for d, c in zip(docs, codes)]


def retrieve_examples(docs: Sequence[Document], ids: Identifiers, fmt,
                      pseudo_queries: Callable[[Document], Sequence[str]] | None = None) -> list[Example]:
    """Query -> identifier for the captions of `docs` and, with `pseudo_queries`, each document's extra queries."""
    out = []
    for d in docs:
        target = ids.token_sequence(d.id)
        for q in [d.text, *(pseudo_queries(d) if pseudo_queries else [])]:
            out.append(Example(query_prompt(fmt, q), target))
    return out


class ExampleDataset:
    """Map-style dataset of Examples for the Trainer; `collate` right-pads and masks the prompt from the loss."""

    def __init__(self, examples: Sequence[Example], pad: int):
        if not examples:
            raise ValueError("no GRACE training examples")
        self.examples, self.pad = list(examples), pad

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def collate(self, batch: list[Example]) -> dict:
        return pad_batch([(e.prompt + e.target, [0.0] * len(e.prompt) + [1.0] * len(e.target)) for e in batch],
                         self.pad, loss_weights=False)


def add_identifier_tokens(model, base: int, n: int) -> None:
    """Resize the generator to `base + n` ids; atomic ids get the model's normal init rather than the mean
    embedding, so that they start distinguishable (identical rows make all atomic logits tie)."""
    model.resize_token_embeddings(base + n)
    if n:
        with torch.no_grad():
            model.embed.weight[base:].normal_(0.0, model.cfg.init_std)
