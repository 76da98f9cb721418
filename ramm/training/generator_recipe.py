"""Recipe: train the RA-CM3 generator (retrieval on) or its vanilla baseline (retrieval off) on a corpus,
and measure what RA-CM3 claims: loss on the main document's image tokens, with k = 2 retrieved
documents vs none, for concepts the generator never trained on (heldout) and for test concepts.

Training neighbours come from the train split only (retrieved documents carry the alpha loss, so they
are trained on; the memory's val/test/heldout documents are retrieved only at evaluation).
Both runs see the same documents in the same order with the same CM3 masks (the per-example RNG
draws the query modality and k even when k is always 0), so only retrieval differs.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from ramm.corpus.splits import SplitSpec
from ramm.training.ra_data import RAConfig
from ramm.utils import atomic_write_json, seed_everything

log = logging.getLogger(__name__)


@dataclass
class GeneratorConfig:
    corpus: str  # any corpus open_corpus reads; its train split (ramm.corpus.splits) gives the main documents
    memory: str  # Memory directory (ramm memory build): retrieved documents come from here
    tokenizer: str  # image tokenizer directory
    text_tokenizer: str  # text tokenizer directory
    out: str  # output directory: generator + checkpoint/ + metrics.jsonl + eval.json
    size: str = "small"  # model preset (tiny / small / medium / base / large)
    dropout: float = 0.0  # residual/attention dropout of the model (regularises memorising the train images)
    copy_dim: int = 64  # width of the copy (pointer) head over retrieved documents (ramm.model.copy_head); 0: none
    retrieval: bool = True  # False: the vanilla baseline (k = 0 always)
    steps: int = 2000  # optimizer steps (the cosine schedule's length)
    max_minutes: float | None = None  # stop early after this wall time
    batch_size: int = 16  # sequences per optimizer step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3  # peak learning rate
    warmup_steps: int = 100  # linear warmup steps
    eval_every: int = 0  # steps between validation evaluations (0: at the end only)
    eval_limit: int = 0  # documents per split in evaluations (0: all)
    eval_k: int = 2  # retrieved documents at evaluation (RA-CM3's best at inference)
    ra: RAConfig = field(default_factory=RAConfig)  # retrieval-augmented data
    seed: int = 0  # initialisation and data order
    device: str | None = None  # None: cuda when available
    resume: bool = False  # continue from out/checkpoint

    def __post_init__(self):
        if isinstance(self.ra, dict):
            self.ra = RAConfig(**self.ra)
        if not self.retrieval:
            self.ra.k_choices = (0,)
        for name in ("steps", "batch_size", "grad_accum", "eval_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_k > self.ra.n_candidates:
            self.ra.n_candidates = self.eval_k


def _load_corpus(path: str):
    from ramm.corpus import open_corpus
    docs = list(open_corpus(path))
    if not docs:
        raise ValueError(f"corpus {path} has no documents")
    return docs


def evaluate_generator(model, fmt, memory, eval_sets: dict[str, list], lookup: dict, cfg: GeneratorConfig,
                       partners: dict[str, set[str]], ks=(0,)) -> dict[str, float]:
    """Image-token loss of each split's main documents with k retrieved documents (text query, no dropout)."""
    from ramm.evaluation.token_loss import image_token_loss
    from ramm.training.ra_data import precompute_neighbours

    out = {}
    for split, docs in eval_sets.items():
        if cfg.eval_limit:
            docs = docs[:cfg.eval_limit]
        nb = precompute_neighbours(memory, docs, cfg.ra, partners, dropout=0.0, kinds=("text",))["text"] if max(ks) else None
        for k in ks:
            retrieved = [[lookup[i] for i in row[:k]] for row in nb] if k else [[] for _ in docs]
            out[f"{split}_image_loss_k{k}"] = image_token_loss(model, fmt, docs, retrieved)
    return out


def train_generator(cfg: GeneratorConfig, splits: SplitSpec | None = None) -> dict:
    """Train, save the generator to cfg.out, return the final evaluation; `splits` places documents
    without a split field (default: SplitSpec())."""
    import torch

    from ramm.model.generator import save_generator
    from ramm.model.transformer import PRESETS, Transformer, TransformerConfig
    from ramm.retrieval.memory import Memory
    from ramm.tokenizers.cm3_format import CM3Format
    from ramm.tokenizers.image_tokenizer import ImageTokenizer
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary
    from ramm.tokenizers.code_cache import encode_images_cached, with_codes
    from ramm.training.ra_data import RADataset, precompute_neighbours, relative_ids
    from ramm.training.trainer import Trainer, TrainerConfig

    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "generator_config.json", asdict(cfg))
    t0 = time.time()
    docs = _load_corpus(cfg.corpus)
    by_split = (splits or SplitSpec()).group(docs)
    train = [d for d in by_split.get("train", []) if d.image is not None]
    if not train:
        raise ValueError(f"corpus {cfg.corpus} has no train documents with an image")
    memory = Memory.load(cfg.memory)
    text_tok = TextTokenizer.from_pretrained(cfg.text_tokenizer)
    image_tok = ImageTokenizer.from_pretrained(cfg.tokenizer, device=cfg.device)
    vocab = Vocabulary(text_size=text_tok.vocab_size, image_size=image_tok.codebook_size)
    fmt = CM3Format(vocab, text_tok, tokens_per_image=image_tok.tokens_per_image, alpha=cfg.ra.alpha)

    # every document a sequence can hold: the corpus, plus memory documents outside it
    pool = {d.id: d for d in docs if d.image is not None}
    pool.update({i: memory.get(i) for i in memory.ids if i not in pool})
    codes = encode_images_cached(image_tok, cfg.tokenizer, list(pool.values()))
    lookup = {i: with_codes(d, codes) for i, d in pool.items() if i in codes}
    partners = relative_ids(list(pool.values()), list(pool.values()))  # exempt from the diversity threshold

    nb_file = out / "neighbours.json"
    if not cfg.retrieval:
        neighbours = {}
    elif cfg.resume and nb_file.exists():
        neighbours = json.loads(nb_file.read_text())
    else:
        neighbours = precompute_neighbours(memory, train, cfg.ra, partners, allowed={d.id for d in train})
        atomic_write_json(nb_file, neighbours)
    view_codes = None
    if cfg.retrieval and cfg.ra.augment > 0:
        view_codes = encode_images_cached(image_tok, cfg.tokenizer, list(pool.values()), views=cfg.ra.views)
    data = RADataset([lookup[d.id] for d in train], neighbours, lookup, fmt, cfg.ra, view_codes=view_codes)
    log.info("%d training documents, %d in the pool, prepared in %.0fs", len(data), len(lookup), time.time() - t0)

    max_len = max(PRESETS[cfg.size]["max_seq_len"], cfg.ra.max_len) if cfg.size in PRESETS else cfg.ra.max_len
    model = Transformer(TransformerConfig.preset(cfg.size, vocab_size=vocab.size, max_seq_len=max_len, dropout=cfg.dropout,
                                                 image_tokens=fmt.tokens_per_image, image_open_id=vocab.img,
                                                 copy_dim=cfg.copy_dim, sep_id=vocab.sep,
                                                 content_ids=vocab.special_offset,
                                                 copy_end_ids=(vocab.img, vocab.doc_end), eos_id=vocab.eos))
    log.info("generator %s: %.2fM parameters", cfg.size, model.num_parameters() / 1e6)
    ks = (0, cfg.eval_k) if cfg.retrieval else (0,)
    val = {"val": [lookup[d.id] for d in by_split.get("val", []) if d.id in lookup]}
    eval_fn = (lambda m: evaluate_generator(m, fmt, memory, val, lookup, cfg, partners, ks)) if val["val"] else None

    tcfg = TrainerConfig(out_dir=str(out), steps=cfg.steps, max_minutes=cfg.max_minutes, batch_size=cfg.batch_size,
                         grad_accum=cfg.grad_accum, lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps // 10),
                         eval_every=cfg.eval_every, seed=cfg.seed, device=cfg.device, resume=cfg.resume,
                         log_every=10, ckpt_every=200)
    trainer = Trainer(model, data, tcfg, collate_fn=data.collate, eval_fn=eval_fn)
    last = trainer.fit()
    save_generator(model, out, text_tokenizer=cfg.text_tokenizer, image_tokenizer=cfg.tokenizer, memory=cfg.memory,
                   alpha=cfg.ra.alpha, retrieval=cfg.retrieval, eval_k=cfg.eval_k)

    model.eval()
    tests = {s: [lookup[d.id] for d in by_split.get(s, []) if d.id in lookup] for s in ("heldout", "test", "val")}
    with torch.no_grad():
        result = evaluate_generator(model, fmt, memory, {s: v for s, v in tests.items() if v}, lookup, cfg, partners,
                                    (0, cfg.eval_k))
    result.update(steps=trainer.step, train_loss=last.get("loss"), minutes=(time.time() - t0) / 60,
                  tokens_per_s=last.get("tokens_per_s"), retrieval=cfg.retrieval)
    atomic_write_json(out / "eval.json", result)
    return result
