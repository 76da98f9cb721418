"""Retrieval-augmented training data for the generator (RA-CM3 sec. 3.3; CM3Leon's pretraining stage).

Work done once per run, not per step:
- every document's image is VQ-encoded once and cached as .npy, keyed by the tokenizer's weights
  and the documents' content (`encode_images_cached`);
- for every training document two neighbour lists are precomputed with the Memory: one for its
  text as the query (20% query-word dropout) and one for its image; the document itself and exact
  duplicates are excluded by the Memory; candidates whose relevance to the query exceeds the diversity
  threshold are skipped, except (optionally) the leave-one-out partner (same concept, other style:
  docs/emojibench.md). One batched index search serves all queries; the threshold applies to query relevance.
Per example (deterministic in (seed, epoch, index), so resume is exact): pick the text or image list,
sample k from `k_choices` (in training once per micro-batch, `batch_items`), build `<doc> m_1 </doc> .. <sep> CM3-masked main`, weights alpha on m_i.
"""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ramm.config import RAConfig
from ramm.corpus.document import Document, ImageSegment, TextSegment, batch_pixels
from ramm.retrieval.strategies import query_dropout
from ramm.tokenizers.cm3_format import CM3Format
from ramm.utils import default_cache_dir

log = logging.getLogger(__name__)


def name_words(docs: Sequence[Document]) -> list[str]:
    """Every word of the documents' concept names (`metadata['name']`), once per concept, sorted: the
    pseudo-name pool, where a word is as frequent as among real names ("face", "flag", "with" often)."""
    names = {(d.metadata.get("base", d.metadata.get("concept", d.id)), base_name(str(d.metadata.get("name", ""))))
             for d in docs}
    return sorted(w for _, name in names for w in name.split())


_TONE_SUFFIX = re.compile(r"(, [a-z-]+ skin tone)+$")


def base_of(doc: Document):
    """The document's base concept (EmojiBench: its default skin tone), else its concept (None if neither)."""
    return doc.metadata.get("base", doc.metadata.get("concept"))


def base_name(name: str) -> str:
    """"waving hand sign, dark skin tone" -> "waving hand sign": the part of a name its skin-tone
    variants share (a name without a tone suffix is returned as is)."""
    return _TONE_SUFFIX.sub("", name)


def rename_concept(main: Document, retrieved: Sequence[Document], words: Sequence[str],
                   rng: np.random.Generator) -> tuple[Document, list[Document]]:
    """Give the main document's concept a made-up name of as many words, drawn from `words`, in the main
    document and in every retrieved document of the same concept or base concept (its leave-one-out
    partner, its other skin tones); tone words are kept, only the shared base name changes.

    Why: on training concepts the memorised name predicts the image, so plain RA training never pays the
    model for reading its retrieved documents; a heldout concept is a name never trained on whose image
    is only in the retrieved documents. A renamed concept is exactly that: new words (each a known word,
    in a new combination, as a heldout name is), shared by main and relatives, and only their images
    tell what to draw (and only their text can give the name to a caption). Our addition, not in the
    papers. Made-up spellings ("vanoteli", rare BPE pieces like a heldout name's) instead of train-name
    words for half the words did not help (val exact cross-style captions 16% vs 20%), so names stay
    train-name words. Documents without their name in their text are returned unchanged."""
    name, base = main.metadata.get("name"), base_of(main)
    if not name or not words or name not in main.text:
        return main, list(retrieved)
    old = base_name(name)
    pseudo = " ".join(words[int(rng.integers(len(words)))] for _ in old.split())

    def rename(d: Document) -> Document:
        segs = [TextSegment(s.text.replace(old, pseudo)) if isinstance(s, TextSegment) else s for s in d.segments]
        new_name = str(d.metadata.get("name", "")).replace(old, pseudo)
        return Document(id=d.id, segments=segs, source=d.source, metadata={**d.metadata, "name": new_name})

    return rename(main), [rename(r) if base is not None and base_of(r) == base else r for r in retrieved]


def _tokenizer_key(tokenizer_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update((Path(tokenizer_dir) / name).read_bytes())
    return h.hexdigest()[:16]


def encode_images_cached(image_tokenizer, tokenizer_dir: str | Path, docs: Sequence[Document],
                         cache_dir: str | Path | None = None, batch: int = 256) -> dict[str, np.ndarray]:
    """{doc id: codes (tokens_per_image,)} for each document's first image; computed once, then read from
    <cache>/image_codes/<tokenizer hash>/<documents hash>.npy."""
    docs = [d for d in docs if d.image is not None]
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode() + b"\0" + d.content_hash().encode())
    path = Path(cache_dir or default_cache_dir()) / "image_codes" / _tokenizer_key(tokenizer_dir) / f"{h.hexdigest()[:16]}.npy"
    if path.exists():
        codes = np.load(path, allow_pickle=False)
        log.info("image codes of %d documents read from %s", len(docs), path)
    else:
        image_tokenizer.eval()  # deterministic codes (no dropout / codebook updates while encoding)
        with torch.no_grad():  # batch_pixels: (B, C, H, W) float
            codes = np.concatenate([image_tokenizer.encode(batch_pixels(docs[i:i + batch])).cpu().numpy()
                                    for i in range(0, len(docs), batch)]).astype(np.int64)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, codes)
        tmp.replace(path)
        log.info("encoded %d images to %s", len(docs), path)
    return {d.id: c for d, c in zip(docs, codes)}


def with_codes(doc: Document, codes: dict[str, np.ndarray]) -> Document:
    """The document with its image's cached codes attached (the format needs no tokenizer then); pixels
    are kept for image queries, metrics and reports."""
    segs = [ImageSegment(pixels=s.pixels, tokens=codes[doc.id]) if isinstance(s, ImageSegment) else s
            for s in doc.segments]
    return Document(id=doc.id, segments=segs, source=doc.source, metadata=doc.metadata)


def partner_ids(docs: Sequence[Document], pool: Sequence[Document]) -> dict[str, set[str]]:
    """Leave-one-out partners: documents of `pool` sharing `metadata['concept']` (other styles)."""
    by_concept: dict[str, set[str]] = {}
    for d in pool:
        if "concept" in d.metadata:
            by_concept.setdefault(d.metadata["concept"], set()).add(d.id)
    return {d.id: by_concept.get(d.metadata.get("concept"), set()) - {d.id} for d in docs}


def relative_ids(docs: Sequence[Document], pool: Sequence[Document]) -> dict[str, set[str]]:
    """Leave-one-out partners plus same-style siblings: documents of `pool` sharing `metadata['base']` and
    'style' (EmojiBench's other skin tones of a concept in the same art style). Both are the knowledge
    retrieval exists for, so the diversity threshold must not drop them as near-duplicates."""
    out = partner_ids(docs, pool)
    by_base: dict[tuple, set[str]] = {}
    for d in pool:
        if d.metadata.get("base") is not None:
            by_base.setdefault((d.metadata["base"], d.metadata.get("style")), set()).add(d.id)
    for d in docs:
        key = (d.metadata.get("base"), d.metadata.get("style"))
        if key[0] is not None:
            out[d.id] = out[d.id] | (by_base.get(key, set()) - {d.id})
    return out


def precompute_neighbours(memory, docs: Sequence[Document], cfg: RAConfig, partners: dict[str, set[str]],
                          dropout: float | None = None, kinds=("text", "image"),
                          allowed: set[str] | None = None) -> dict[str, list[list[str]]]:
    """{"text": [ids per doc], "image": [ids per doc]}: up to n_candidates neighbours each.
    Text queries lose `dropout` (default cfg.query_dropout) of their words first. With `allowed`, only
    those documents may be picked: training passes the train split, because retrieved documents carry
    a loss (alpha) and so are trained on, and heldout concepts must stay unseen by the generator."""
    rng = np.random.default_rng(cfg.seed)
    p = cfg.query_dropout if dropout is None else dropout
    queries = {}
    if "text" in kinds:
        queries["text"] = memory.encoder.embed_text([query_dropout(d.text, p, rng) if p > 0 else d.text for d in docs])
    if "image" in kinds:
        queries["image"] = memory.encoder.embed_image(np.stack([d.image for d in docs]))
    # one batched index search; then per query: drop itself and exact duplicates of it (by content hash),
    # and candidates above the diversity threshold unless they are its leave-one-out partner
    n = len(memory)
    row_id = memory.store.ids_of(list(range(n)))
    row_hash = memory.store.hashes(list(range(n)))
    id_hash = {i: row_hash[r] for r, i in row_id.items()}
    fetch = min(n, 4 * cfg.n_candidates + 8 if allowed is None else 16 * cfg.n_candidates + 32)
    out: dict[str, list[list[str]]] = {}
    for kind, q in queries.items():
        scores, rows = memory.search_vectors(q, fetch)
        picked = []
        for d, srow, rrow in zip(docs, scores, rows):
            own = id_hash.get(d.id) or d.content_hash()
            keep = []  # (id, score, row) of the eligible candidates, best first
            for score, r in zip(srow, rrow):
                if r < 0 or row_id[int(r)] == d.id or row_hash[int(r)] == own:
                    continue
                i = row_id[int(r)]
                if allowed is not None and i not in allowed:
                    continue
                if cfg.diversity is None or score <= cfg.diversity or (cfg.exempt_partner and i in partners.get(d.id, ())):
                    keep.append((i, float(score), int(r)))
                if len(keep) == (MMR_POOL if cfg.mmr and kind == "text" else 1) * cfg.n_candidates:
                    break
            picked.append([i for i, _, _ in keep] if cfg.mmr == 0 or kind != "text" else
                          _mmr(keep, cfg.n_candidates, cfg.mmr, memory))
        out[kind] = picked
    return out


MMR_POOL = 4  # MMR chooses among this many times n_candidates eligible candidates


def _mmr(cands: list[tuple[str, float, int]], k: int, weight: float, memory) -> list[str]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): pick, one at a time, the candidate with the best
    relevance - weight * (its highest similarity to a document already picked), by stored document embeddings.

    Why: the best two documents for "google emoji: waving hand, dark skin tone" are the other style's dark hand
    (the same concept: its name and tone) and that style's light hand (near-identical to it), while the
    same-style light hand, the one whose codes a generator can copy cell by cell, comes third. Penalising
    near-duplicates of what is already picked brings complementary evidence into k = 2 (RA-CM3's diversity
    rule, softened from a hard threshold on the query into a trade-off between the picks)."""
    if len(cands) <= 1:
        return [i for i, _, _ in cands[:k]]
    emb = memory.store.embeddings([r for _, _, r in cands])
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    sim = emb @ emb.T
    rel = np.array([s for _, s, _ in cands])
    chosen = [0]
    while len(chosen) < min(k, len(cands)):
        penalty = sim[:, chosen].max(1)
        score = rel - weight * penalty
        score[chosen] = -np.inf
        chosen.append(int(score.argmax()))
    return [cands[j][0] for j in chosen]


def pad_batch(seqs: Sequence[tuple[list[int], list[float]]], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, weights) sequences into idx/targets (-100 on padding)/loss_weights tensors."""
    T = max(len(ids) for ids, _ in seqs) - 1
    idx = torch.full((len(seqs), T), pad, dtype=torch.long)
    tgt = torch.full((len(seqs), T), -100, dtype=torch.long)
    w = torch.zeros(len(seqs), T)
    for b, (ids, weights) in enumerate(seqs):
        n = len(ids) - 1
        idx[b, :n] = torch.tensor(ids[:-1])
        tgt[b, :n] = torch.tensor(ids[1:])
        w[b, :n] = torch.tensor(weights[1:])
    return {"idx": idx, "targets": tgt, "loss_weights": w}


class RADataset(torch.utils.data.Dataset):
    """Training examples: main documents (image codes attached) with their precomputed neighbours."""

    def __init__(self, docs: Sequence[Document], neighbours: dict[str, list[list[str]]], lookup: dict[str, Document],
                 fmt: CM3Format, cfg: RAConfig):
        if not docs:
            raise ValueError("no training documents")
        self.docs, self.neighbours, self.lookup, self.fmt, self.cfg = list(docs), neighbours, lookup, fmt, cfg
        self.words = name_words(self.docs) if cfg.pseudo_names > 0 else []
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
        if self.cfg.pseudo_names > 0:  # drawn for every example, so runs with and without retrieval stay in step
            u, name_seed = rng.random(), int(rng.integers(1 << 62))
            base = base_of(main)
            if u < self.cfg.pseudo_names and base is not None and any(base_of(r) == base for r in retrieved):
                main, retrieved = rename_concept(main, retrieved, self.words, np.random.default_rng(name_seed))
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


def _main_token_loss(model, seqs: Sequence[tuple[list[int], list[float]]], pad: int, batch_size: int, device) -> float:
    """Weighted mean next-token loss of (ids, weights) sequences (weight w_j on predicting ids[j]): the model's
    own weighted loss per batch (so a copy head scores its mixture without building it over the vocabulary)."""
    total, count = 0.0, 0.0
    for s in range(0, len(seqs), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(seqs[s:s + batch_size], pad).items()}
        _, loss = model(**batch)
        w = float(batch["loss_weights"].sum())  # padding and ignored targets weigh 0 (pad_batch)
        total += float(loss) * w
        count += w
    return total / max(count, 1.0)


def image_token_loss(model, fmt: CM3Format, docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                     batch_size: int = 32, device=None) -> float:
    """Mean next-token loss on the main document's image tokens (uncorrupted, after the retrieved ones)."""
    vocab = fmt.vocab
    seqs = []
    for d, r in zip(docs, retrieved):
        ids = fmt.encode_ra(d, r, mask=False).ids
        start = ids.index(vocab.sep) + 1 if vocab.sep in ids else 0  # weight 1 on the main document's codes only
        seqs.append((ids, [float(j >= start and vocab.is_image(t)) for j, t in enumerate(ids)]))
    return _main_token_loss(model, seqs, vocab.pad, batch_size, device or next(model.parameters()).device)


def caption_token_loss(model, fmt: CM3Format, docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                       batch_size: int = 32, device=None) -> float:
    """Mean next-token loss on the caption tokens (and <eos>) of image -> text infilling, the way captions are
    decoded: `caption_prompt(codes, retrieved)` then the document's text."""
    seqs = []
    for d, r in zip(docs, retrieved):
        prompt = fmt.caption_prompt(fmt.image_codes(d.images[0]), r)
        answer = [*fmt.text.encode(d.text), fmt.vocab.eos]
        seqs.append((prompt + answer, [0.0] * len(prompt) + [1.0] * len(answer)))
    return _main_token_loss(model, seqs, fmt.vocab.pad, batch_size, device or next(model.parameters()).device)
