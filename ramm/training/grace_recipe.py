"""Training recipe for GRACE (Li et al. 2024): identifiers, learning to memorize, learning to retrieve.

The caller gives the documents: the memorized set (the images of `memorize_splits`, EmojiBench: train +
test concepts) and those whose queries train retrieval (`retrieve_splits`: train only, so test queries are
unseen at evaluation), and optionally extra pseudo-queries per document (`pseudo_queries`).
`schedule="sequence"` runs memorize then retrieve (GRACE's two steps); `"mixed"` trains both at once.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ramm.corpus.document import Document
from ramm.corpus.splits import SplitSpec
from ramm.utils import atomic_write_json, seed_everything

log = logging.getLogger(__name__)


@dataclass
class GraceConfig:
    """Everything `ramm train grace` needs; saved as grace_config.json in `out`."""

    corpus: str  # any corpus open_corpus reads (recorded in grace_config.json; the caller loads its documents)
    out: str  # output directory: the GRACE model plus per-stage trainer checkpoints
    scheme: str = "structured"  # identifier scheme: numeric | string | semantic | structured | atomic
    init: str | None = None  # pretrained generator directory; None trains from scratch
    preset: str = "tiny"  # model size when training from scratch
    text_tokenizer: str = "runs/text_tokenizer"  # TextTokenizer directory (the generator's)
    image_tokenizer: str = "runs/image_tokenizer"  # ImageTokenizer directory (the generator's)
    retriever: str = "runs/retriever"  # dual encoder whose image embeddings the structured scheme clusters
    schedule: str = "mixed"  # "sequence" (memorize, then retrieve) or "mixed" (both tasks in every batch)
    memorize_splits: tuple[str, ...] = ("train", "test")  # concepts whose images are memorized
    retrieve_splits: tuple[str, ...] = ("train",)  # concepts whose queries train retrieval
    pseudo_queries: bool = True  # add names and short names as extra retrieval queries
    memorize_steps: int = 1000  # optimizer steps of learning to memorize (sequence schedule)
    retrieve_steps: int = 1000  # optimizer steps of learning to retrieve (sequence); mixed runs the sum
    max_minutes: float | None = None  # wall-time cap per stage
    batch_size: int = 64  # examples per optimizer step
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 50  # linear warmup per stage
    k: int = 30  # structured: clusters per level (GRACE: 30)
    leaf_size: int = 30  # structured: most images per leaf (GRACE: 30)
    num_beams: int = 10  # beam width at retrieval time
    seed: int = 0  # data order, k-means and initialisation
    device: str | None = None  # None: cuda when available
    resume: bool = False  # continue the stages' trainer checkpoints

    def __post_init__(self):
        from ramm.grace.identifiers import SCHEMES

        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown identifier scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.schedule not in ("sequence", "mixed"):
            raise ValueError(f"schedule must be 'sequence' or 'mixed', got {self.schedule!r}")
        for name in ("memorize_steps", "retrieve_steps", "batch_size", "k", "leaf_size", "num_beams"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.memorize_splits or not self.retrieve_splits:
            raise ValueError("memorize_splits and retrieve_splits must not be empty")
        self.memorize_splits, self.retrieve_splits = tuple(self.memorize_splits), tuple(self.retrieve_splits)


def image_tokenizer_dir(cfg: GraceConfig) -> Path:
    """The image tokenizer GRACE encodes with: the generator bundle's copy with `init`, else cfg.image_tokenizer."""
    if cfg.init:
        from ramm.model.generator import bundle_info
        return bundle_info(cfg.init)["image_tokenizer"]
    return Path(cfg.image_tokenizer)


def image_codes(image_tokenizer, cfg: GraceConfig, docs) -> np.ndarray:
    """(N, tokens_per_image) codes of each document's first image, through the shared on-disk code cache."""
    from ramm.tokenizers.code_cache import encode_images_cached

    codes = encode_images_cached(image_tokenizer, image_tokenizer_dir(cfg), docs)
    return np.stack([codes[d.id] for d in docs])


def eval_queries(docs, pseudo_queries: Callable[[Document], Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """(query, concept) pairs: each document's caption, then its pseudo-queries (deduplicated per concept)."""
    from ramm.retrieval.recall import concept_of

    captions = [(d.text, concept_of(d)) for d in docs]
    pseudo = list(dict.fromkeys((q, concept_of(d)) for d in docs for q in (pseudo_queries(d) if pseudo_queries else [])))
    return captions + pseudo


def grace_documents(cfg: GraceConfig, splits: SplitSpec | None = None) -> tuple[list[Document], list[Document]]:
    """(memorized, retrieve_docs) of cfg.corpus, any corpus open_corpus reads: the documents with an image in
    cfg.memorize_splits, and those of them in cfg.retrieve_splits (splits as `splits` places them)."""
    from ramm.corpus import open_corpus

    splits = splits or SplitSpec()
    memorized = [d for d in splits.select(open_corpus(cfg.corpus), cfg.memorize_splits) if d.image is not None]
    return memorized, [d for d in memorized if splits.of(d) in cfg.retrieve_splits]


def train_grace(cfg: GraceConfig, memorized: Sequence[Document], retrieve_docs: Sequence[Document],
                pseudo_queries: Callable[[Document], Sequence[str]] | None = None):
    """Builds identifiers for `memorized`, trains the stages (retrieval on the queries of `retrieve_docs`, which
    must be memorized, and of `pseudo_queries` when cfg.pseudo_queries), saves the GRACE model in cfg.out;
    returns the GraceRetriever."""
    from ramm.grace.identifiers import build_identifiers
    from ramm.grace.retriever import GraceRetriever
    from ramm.grace.tasks import ExampleDataset, add_identifier_tokens, memorize_examples, retrieve_examples
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.tokenizers.cm3_format import CM3Format
    from ramm.tokenizers.image_tokenizer import ImageTokenizer
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary
    from ramm.training.trainer import Trainer, TrainerConfig

    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "grace_config.json", asdict(cfg))
    memorized, retrieve_docs = list(memorized), list(retrieve_docs)
    if not memorized:
        raise ValueError(f"no documents to memorize in {cfg.corpus} (memorize_splits {cfg.memorize_splits})")
    unknown = {d.id for d in retrieve_docs} - {d.id for d in memorized}
    if not retrieve_docs or unknown:
        raise ValueError(f"retrieval needs memorized target documents (retrieve_splits {cfg.retrieve_splits}); "
                         f"{len(retrieve_docs)} given, not memorized: {sorted(unknown)[:5]}")
    if cfg.init:  # the generator bundle brings its own tokenizers and vocabulary
        from ramm.model.generator import load_generator
        model, fmt, _ = load_generator(cfg.init, device=cfg.device)
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
        from ramm.retrieval.encoder import load_encoder
        embeddings = load_encoder(cfg.retriever).embed_image(np.stack([d.image for d in memorized]))
    idents = build_identifiers(cfg.scheme, [d.id for d in memorized], vocab, text_tok,
                               captions=[d.text for d in memorized], embeddings=embeddings,
                               k=cfg.k, leaf_size=cfg.leaf_size, seed=cfg.seed)
    log.info("%d %s identifiers, up to %d tokens", len(idents), cfg.scheme, max(len(t) for t in idents.tokens))

    if model.cfg.vocab_size != vocab.size + idents.new_tokens:  # room for atomic ids (or drop unused rows)
        add_identifier_tokens(model, vocab.size, idents.new_tokens)

    mem = memorize_examples(memorized, image_codes(image_tok, cfg, memorized), idents, fmt)
    ret = retrieve_examples(retrieve_docs, idents, fmt, pseudo_queries if cfg.pseudo_queries else None)
    if cfg.schedule == "sequence":
        stages = [("memorize", mem, cfg.memorize_steps), ("retrieve", ret, cfg.retrieve_steps)]
    else:
        stages = [("mixed", mem + ret, cfg.memorize_steps + cfg.retrieve_steps)]
    for name, examples, steps in stages:
        data = ExampleDataset(examples, pad=vocab.pad)
        tcfg = TrainerConfig(out_dir=str(out / name), steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                             warmup_steps=min(cfg.warmup_steps, steps // 2), max_minutes=cfg.max_minutes,
                             seed=cfg.seed, device=cfg.device, resume=cfg.resume, ckpt_every=max(steps // 4, 1),
                             weight_decay=0.0)
        log.info("stage %s: %d examples, %d steps", name, len(data), steps)
        Trainer(model, data, tcfg, collate_fn=data.collate).fit()
    retriever = GraceRetriever(model, idents, fmt, num_beams=cfg.num_beams)
    retriever.save_pretrained(out)
    return retriever
