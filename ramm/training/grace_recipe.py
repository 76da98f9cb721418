"""Training recipe for GRACE (Li et al. 2024): identifiers, learning to memorize, learning to retrieve.

The caller gives the documents: the memorized set (the images of `memorize_splits`, EmojiBench: train +
test concepts) and those whose queries train retrieval (`retrieve_splits`: train only, so test queries are
unseen at evaluation), and optionally extra pseudo-queries per document (`pseudo_queries`).
`schedule="sequence"` runs memorize then retrieve (GRACE's two steps); `"mixed"` trains both at once.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ramm.config import GraceConfig
from ramm.corpus import open_corpus
from ramm.corpus.document import Document
from ramm.grace.identifiers import build_identifiers
from ramm.grace.retriever import GraceRetriever
from ramm.grace.tasks import ExampleDataset, add_identifier_tokens, memorize_examples, retrieve_examples
from ramm.model.bundle import bundle_info, load_generator
from ramm.model.transformer import Transformer, TransformerConfig
from ramm.retrieval.encoder import load_encoder
from ramm.retrieval.recall import concept_of
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.code_cache import encode_images_cached
from ramm.tokenizers.image_tokenizer import ImageTokenizer
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.training.recipe import holds_run_folder, start_run
from ramm.training.trainer import Trainer

log = logging.getLogger(__name__)


def image_tokenizer_dir(cfg: GraceConfig) -> Path:
    """The image tokenizer GRACE encodes with: the generator bundle's copy with `init`, else cfg.image_tokenizer."""
    if cfg.init:
        return bundle_info(cfg.init)["image_tokenizer"]
    return Path(cfg.image_tokenizer)


def image_codes(image_tokenizer, cfg: GraceConfig, docs) -> np.ndarray:
    """(N, tokens_per_image) codes of each document's first image, through the shared on-disk code cache."""
    codes = encode_images_cached(image_tokenizer, image_tokenizer_dir(cfg), docs)
    return np.stack([codes[d.id] for d in docs])


def eval_queries(docs, pseudo_queries: Callable[[Document], Sequence[str]] | None = None, *,
                 match: str | None) -> list[tuple[str, str]]:
    """(query, answer) pairs: each document's caption, then its pseudo-queries (deduplicated per answer); the
    answer is the document's metadata `match` (EmojiBench: the concept; None: the document itself)."""
    captions = [(d.text, concept_of(d, match)) for d in docs]
    pseudo = list(dict.fromkeys((q, concept_of(d, match)) for d in docs
                                for q in (pseudo_queries(d) if pseudo_queries else [])))
    return captions + pseudo


def grace_documents(cfg: GraceConfig) -> tuple[list[Document], list[Document]]:
    """(memorized, retrieve_docs) of cfg.corpus, any corpus open_corpus reads: the documents with an image in
    cfg.memorize_splits, and those of them in cfg.retrieve_splits (placed by cfg.split)."""
    splits = cfg.split
    memorized = [d for d in splits.select(open_corpus(cfg.corpus, strict=cfg.strict), cfg.memorize_splits) if d.image is not None]
    return memorized, [d for d in memorized if splits.of(d) in cfg.retrieve_splits]


@holds_run_folder
def train_grace(cfg: GraceConfig, memorized: Sequence[Document], retrieve_docs: Sequence[Document],
                pseudo_queries: Callable[[Document], Sequence[str]] | None = None):
    """Builds identifiers for `memorized`, trains the stages (retrieval on the queries of `retrieve_docs`, which
    must be memorized, and of `pseudo_queries` when cfg.pseudo_queries), saves the GRACE model in cfg.out;
    returns the GraceRetriever."""
    out = start_run(cfg, "grace_config.json")
    memorized, retrieve_docs = list(memorized), list(retrieve_docs)
    if not memorized:
        raise ValueError(f"no documents to memorize in {cfg.corpus} (memorize_splits {cfg.memorize_splits})")
    unknown = {d.id for d in retrieve_docs} - {d.id for d in memorized}
    if not retrieve_docs or unknown:
        raise ValueError(f"retrieval needs memorized target documents (retrieve_splits {cfg.retrieve_splits}); "
                         f"{len(retrieve_docs)} given, not memorized: {sorted(unknown)[:5]}")
    if cfg.init:  # the generator bundle brings its own tokenizers and vocabulary
        model, fmt, _ = load_generator(cfg.init, device=cfg.trainer.device)
        model.train()
        text_tok, image_tok, vocab = fmt.text, fmt.image_tokenizer, fmt.vocab
    else:
        text_tok = TextTokenizer.from_pretrained(cfg.text_tokenizer)
        image_tok = ImageTokenizer.from_pretrained(cfg.image_tokenizer)
        vocab = Vocabulary(text_size=text_tok.vocab_size, image_size=image_tok.codebook_size)
        fmt = CM3Format(vocab, text_tok, tokens_per_image=image_tok.tokens_per_image)
        prompt_len = 3 + image_tok.tokens_per_image + 2
        model = Transformer(TransformerConfig.preset(cfg.preset, vocab_size=vocab.size,
                                                     max_seq_len=max(128, prompt_len + 64)))

    embeddings = None
    if cfg.scheme == "structured":
        embeddings = load_encoder(cfg.retriever).embed_image([d.image for d in memorized])
    idents = build_identifiers(cfg.scheme, [d.id for d in memorized], vocab, text_tok,
                               captions=[d.text for d in memorized], embeddings=embeddings,
                               k=cfg.clusters, leaf_size=cfg.leaf_size, seed=cfg.trainer.seed)
    log.info("%d %s identifiers, up to %d tokens", len(idents), cfg.scheme, max(len(t) for t in idents.tokens))

    if model.cfg.vocab_size != vocab.size + idents.new_tokens:  # room for atomic ids (or drop unused rows)
        add_identifier_tokens(model, vocab.size, idents.new_tokens)

    mem = memorize_examples(memorized, image_codes(image_tok, cfg, memorized), idents, fmt)
    ret = retrieve_examples(retrieve_docs, idents, fmt, pseudo_queries if cfg.pseudo_queries else None)
    examples = {"memorize": mem, "retrieve": ret, "mixed": mem + ret}
    for name, steps in cfg.stage_steps().items():
        data = ExampleDataset(examples[name], pad=vocab.pad)
        tcfg = replace(cfg.trainer, out_dir=str(out / name), steps=steps)
        log.info("stage %s: %d examples, %d steps", name, len(data), steps)
        Trainer(model, data, tcfg, collate_fn=data.collate).fit()
    retriever = GraceRetriever(model, idents, fmt, num_beams=cfg.num_beams)
    retriever.save_pretrained(out)
    return retriever
