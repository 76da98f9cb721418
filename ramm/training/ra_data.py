"""Retrieval-augmented training data for the generator (RA-CM3 sec. 3.3; CM3Leon's pretraining stage).

Work done once per run, not per step:
- every document's image is VQ-encoded once and cached (`ramm.tokenizers.code_cache`);
- for every training document two neighbour lists are precomputed with the Memory: one for its
  text as the query (20% query-word dropout) and one for its image; the document itself and exact
  duplicates are excluded by the Memory; candidates whose relevance to the query exceeds the diversity
  threshold are skipped, except (optionally) the leave-one-out partners (documents sharing a metadata
  key, `RAConfig.group_by`; EmojiBench: the concept, so the other style, docs/emojibench.md). The Memory's batched search (`Memory.neighbours`, the one the facade and evaluation
  use) serves all queries, under `neighbour_strategy`: the threshold applies to query relevance.
Per example (deterministic in (seed, epoch, index), so resume is exact): pick the text or image list,
sample k from `k_choices` (in training once per micro-batch, `batch_items`), build `<doc> m_1 </doc> .. <sep> CM3-masked main`, weights alpha on m_i.

Copy examples (`RAConfig.copy_self`): with that chance an example with k >= 1 has its own document first
among the retrieved ones. Leave-one-out alone never shows the generator a retrieved image it should
reproduce code for code, so it never learns to: with the target in context its teacher-forced argmax got
only half the codes right. A user who asks for what the memory holds expects that image back; the
other examples (siblings, the other style) teach what to change when the evidence differs from the prompt.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ramm.config import RAConfig
from ramm.corpus.document import Document
from ramm.model.batch import pad_batch
from ramm.retrieval.strategies import Strategy, query_dropout
from ramm.tokenizers.cm3_format import CM3Format


def partner_ids(docs: Sequence[Document], pool: Sequence[Document], group_by: str | None) -> dict[str, set[str]]:
    """Leave-one-out partners: documents of `pool` sharing `metadata[group_by]` (EmojiBench: the other style);
    group_by None: none."""
    if group_by is None:
        return {d.id: set() for d in docs}
    by_group: dict[str, set[str]] = {}
    for d in pool:
        if group_by in d.metadata:
            by_group.setdefault(d.metadata[group_by], set()).add(d.id)
    return {d.id: by_group.get(d.metadata.get(group_by), set()) - {d.id} for d in docs}


def relative_ids(docs: Sequence[Document], pool: Sequence[Document], group_by: str | None,
                 sibling_key: Callable[[Document], object] | None = None) -> dict[str, set[str]]:
    """Leave-one-out partners plus siblings: documents of `pool` with the same `sibling_key(doc)` (not None;
    `CorpusHooks.sibling_key`; EmojiBench: the other skin tones in the same art style). Both are
    the knowledge retrieval exists for, so the diversity threshold must not drop them as near-duplicates."""
    out = partner_ids(docs, pool, group_by)
    if sibling_key is None:
        return out
    by_key: dict[object, set[str]] = {}
    for d in pool:
        if (key := sibling_key(d)) is not None:
            by_key.setdefault(key, set()).add(d.id)
    for d in docs:
        if (key := sibling_key(d)) is not None:
            out[d.id] = out[d.id] | (by_key.get(key, set()) - {d.id})
    return out


def precompute_neighbours(memory, docs: Sequence[Document], cfg: RAConfig, partners: dict[str, set[str]],
                          dropout: float | None = None, kinds=("text", "image"),
                          allowed: set[str] | None = None, leave_one_out: bool = True) -> dict[str, list[list[str]]]:
    """{"text": [ids per doc], "image": [ids per doc]}: up to n_candidates neighbours each, by the Memory's
    batched search (`Memory.neighbours`) under `neighbour_strategy`. Text queries lose `dropout` (default
    cfg.query_dropout) of their words first. With `allowed`, only those documents may be picked: training
    passes the train split, because retrieved documents carry a loss (alpha) and so are trained on, and
    heldout concepts must stay unseen by the generator. `leave_one_out=False` lets a document find itself
    (and its exact duplicates), past the diversity rule: a user's memory holds what they ask about."""
    rng = np.random.default_rng(cfg.seed)
    p = cfg.query_dropout if dropout is None else dropout
    queries = {}
    if "text" in kinds:
        queries["text"] = memory.encoder.embed_text([query_dropout(d.text, p, rng) if p > 0 else d.text for d in docs])
    if "image" in kinds:
        queries["image"] = memory.encoder.embed_image([d.image for d in docs])
    exempt = [partners.get(d.id, set()) if cfg.exempt_partner else set() for d in docs]
    if leave_one_out:
        excluded, hashes = [[d.id] for d in docs], [[d.content_hash()] for d in docs]
    else:
        excluded, hashes, exempt = None, None, [e | {d.id} for e, d in zip(exempt, docs)]
    return {kind: [[i for i, _ in row] for row in memory.neighbours(
                q, cfg.n_candidates, exclude_ids=excluded, strategy=neighbour_strategy(cfg, kind),
                exclude_hashes=hashes, exempt_ids=exempt, allowed_ids=allowed)]
            for kind, q in queries.items()}


def neighbour_strategy(cfg: RAConfig, kind: str) -> Strategy:
    """The retrieval strategy of training inputs: the document itself and its exact duplicates excluded, the
    diversity threshold on relevance to the query only (the leave-one-out partner exempt), and for text
    queries with cfg.mmr > 0 maximal marginal relevance (`ramm.retrieval.strategies.mmr`)."""
    return Strategy(diversity=cfg.diversity, diversity_to_picks=False, mmr=cfg.mmr if kind == "text" else 0.0)


Rename = Callable[[Document, list[Document], np.random.Generator], tuple[Document, list[Document]]]


class RADataset(torch.utils.data.Dataset):
    """Training examples: main documents (image codes attached) with their precomputed neighbours.

    `rename(main, retrieved, rng)`: with chance cfg.pseudo_names, gives the example's concept a made-up
    name (EmojiBench: `ramm_lab.emojibench.pseudo_namer`); None: names stay as they are."""

    def __init__(self, docs: Sequence[Document], neighbours: dict[str, list[list[str]]], lookup: dict[str, Document],
                 fmt: CM3Format, cfg: RAConfig, rename: Rename | None = None):
        if not docs:
            raise ValueError("no training documents")
        self.docs, self.neighbours, self.lookup, self.fmt, self.cfg = list(docs), neighbours, lookup, fmt, cfg
        self.rename = rename
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.docs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def example(self, i: int, rng: np.random.Generator, k: int | None = None) -> tuple[list[int], list[float]]:
        """Example i; `k` (the batch's draw) overrides the example's own draw, which is made either way
        so that the masks that follow stay the same."""
        kind = "text" if rng.random() < 0.5 else "image"
        kind = kind if self.cfg.query == "both" else self.cfg.query
        # one uniform draw whatever the choices: Generator.choice draws nothing from a one-element population,
        # which put the vanilla run (k_choices (0,)) out of step with the RA run's masks
        n = len(self.cfg.k_choices)
        own_k = self.cfg.k_choices[min(int(rng.random() * n), n - 1)]
        k = own_k if k is None else k
        retrieved = [self.lookup[r] for r in self.neighbours[kind][i][:k]] if self.neighbours else []
        main = self.docs[i]
        if self.cfg.copy_self > 0:  # drawn for every example, so runs with and without retrieval stay in step
            if rng.random() < self.cfg.copy_self and retrieved:
                retrieved = [main, *retrieved[:-1]]
        if self.cfg.pseudo_names > 0:  # drawn for every example, so runs with and without retrieval stay in step
            u, name_seed = rng.random(), int(rng.integers(1 << 62))
            if u < self.cfg.pseudo_names and self.rename is not None:
                main, retrieved = self.rename(main, retrieved, np.random.default_rng(name_seed))
        while True:
            seq = self.fmt.encode_ra(main, retrieved, rng=rng, mask=True)
            if len(seq) <= self.cfg.max_len + 1 or not retrieved:
                return seq.ids[:self.cfg.max_len + 1], seq.weights[:self.cfg.max_len + 1]
            retrieved = retrieved[:-1]

    def __getitem__(self, i: int) -> tuple[list[int], list[float]]:
        return self.example(i, np.random.default_rng((self.cfg.seed, self.epoch, i)))

    def batch_items(self, samples: Sequence[tuple[int, int]]) -> list[tuple[list[int], list[float]]]:
        """A training micro-batch of (epoch, index) samples sharing one k: the same marginal distribution
        of k as RA-CM3's per-example draw, but no sequence is padded to a longer k's length (with
        k in {0, 1, 2} per example nearly every batch holds a k = 2 sequence, so ~40% of the tokens
        computed were padding). The draw is a function of the batch's samples, so resume is exact; under
        DDP or gradient accumulation each micro-batch draws its own k."""
        if not self.cfg.batch_k:
            return [self.example(i, np.random.default_rng((self.cfg.seed, e, i))) for e, i in samples]
        k = int(np.random.default_rng((self.cfg.seed, 1, *samples[0])).choice(self.cfg.k_choices))
        return [self.example(i, np.random.default_rng((self.cfg.seed, e, i)), k=k) for e, i in samples]

    def collate(self, items) -> dict[str, torch.Tensor]:
        return pad_batch(items, self.fmt.vocab.pad)
