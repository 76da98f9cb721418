"""Corpus hooks: what a corpus format knows beyond its documents, as one object.

`open_corpus` returns it beside the documents (`Corpus.hooks`). The recipes and the CLI read corpus-specific
behaviour from it and from nowhere else; every default is neutral, which is what a plain JSONL, CSV, COCO or
webdataset corpus gets. A corpus format (`ramm.corpus.formats.CorpusFormat`, e.g. the EmojiBench lab's) fills
in what it knows.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ramm.corpus.document import Document

Renamer = Callable[[Document, list[Document], np.random.Generator], tuple[Document, list[Document]]]


@dataclass(frozen=True)
class CorpusHooks:
    """Corpus-specific behaviour; None everywhere is the neutral corpus."""

    match_key: str | None = None  # metadata key whose equal values are one answer: Recall@K hits, leave-one-out partners (None: a document is only itself)
    alt_text: Callable[[Document], str] | None = None  # the retriever's second text view of a document (`train_retriever(alt_text=)`)
    pseudo_queries: Callable[[Document], list[str]] | None = None  # GRACE: extra retrieval queries of a document
    pseudo_namer: Callable[[Iterable[Document]], Renamer] | None = None  # generator training: names swapped in retrieved contexts
    sibling_key: Callable[[Document], object] | None = None  # generator training: documents sharing it are relatives
    sft_tasks: Callable[[list[Document]], tuple[dict, dict]] | None = None  # SFT (pairings, masks) over the given documents
    sft_templates: Mapping[str, tuple[str, ...]] | None = None  # SFT wordings of the corpus' own tasks (its edits, styles, vqa_<kind> questions)
    sft_questions: Mapping[str, float] | None = None  # default SFT weight of each of its question tasks (SFTMixture.questions)
    describe: Callable[[], str] | None = None  # `ramm data stats`: a summary table (None: stream-check the documents)
    verify: Callable[[], tuple[int, list[str]]] | None = None  # `ramm data stats --verify`: (images checked, problems found)

    def match_or(self, key: str | None) -> str | None:
        """`key` when a setting names one, else the corpus' own `match_key`."""
        return key if key is not None else self.match_key


NEUTRAL = CorpusHooks()
