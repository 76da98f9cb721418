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
from dataclasses import replace

import torch

from ramm.config import GeneratorConfig
from ramm.corpus import open_corpus
from ramm.evaluation.token_loss import image_token_loss
from ramm.model.bundle import save_generator
from ramm.model.transformer import PRESETS, Transformer, TransformerConfig
from ramm.retrieval.memory import Memory
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.code_cache import encode_images_cached, with_codes
from ramm.tokenizers.image_tokenizer import ImageTokenizer
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.training.ra_data import RADataset, precompute_neighbours, relative_ids
from ramm.training.recipe import holds_run_folder, start_run
from ramm.training.trainer import Trainer
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


def _load_corpus(path: str, strict: bool = False):
    docs = list(open_corpus(path, strict=strict))
    if not docs:
        raise ValueError(f"corpus {path} has no documents")
    return docs


def evaluate_generator(model, fmt, memory, eval_sets: dict[str, list], lookup: dict, cfg: GeneratorConfig,
                       partners: dict[str, set[str]], ks=(0,)) -> dict[str, float]:
    """Image-token loss of each split's main documents with k retrieved documents (text query, no dropout)."""
    out = {}
    for split, docs in eval_sets.items():
        if cfg.eval_limit:
            docs = docs[:cfg.eval_limit]
        nb = precompute_neighbours(memory, docs, cfg.ra, partners, dropout=0.0, kinds=("text",))["text"] if max(ks) else None
        for k in ks:
            retrieved = [[lookup[i] for i in row[:k]] for row in nb] if k else [[] for _ in docs]
            out[f"{split}_image_loss_k{k}"] = image_token_loss(model, fmt, docs, retrieved)
    return out


@holds_run_folder
def train_generator(cfg: GeneratorConfig, pseudo_namer=None, sibling_key=None) -> dict:
    """Train, save the generator to cfg.out, return the final evaluation (also in eval.json there);
    cfg.split places the documents that carry no split field.

    What only the caller knows of its corpus (the `CorpusHooks` fields of these names; EmojiBench:
    `ramm_lab.emojibench`'s functions): `pseudo_namer(train_docs)` makes the `rename` that cfg.ra.pseudo_names applies
    (None: no renaming), and `sibling_key(doc)` the related documents the diversity rule keeps besides
    the leave-one-out partners (documents sharing cfg.ra.group_by)."""
    out = start_run(cfg, "generator_config.json")
    ra = cfg.ra if cfg.retrieval else replace(cfg.ra, k_choices=(0,))  # the baseline: k = 0 always
    t0 = time.time()
    docs = _load_corpus(cfg.corpus, cfg.strict)
    by_split = cfg.split.group(docs)
    train = [d for d in by_split.get("train", []) if d.image is not None]
    if not train:
        raise ValueError(f"corpus {cfg.corpus} has no train documents with an image")
    memory = Memory.load(cfg.memory)
    text_tok = TextTokenizer.from_pretrained(cfg.text_tokenizer)
    image_tok = ImageTokenizer.from_pretrained(cfg.tokenizer, device=cfg.trainer.device)
    vocab = Vocabulary(text_size=text_tok.vocab_size, image_size=image_tok.codebook_size)
    fmt = CM3Format(vocab, text_tok, tokens_per_image=image_tok.tokens_per_image, alpha=cfg.ra.alpha)

    # every document a sequence can hold: the corpus, plus memory documents outside it
    pool = {d.id: d for d in docs if d.image is not None}
    pool.update((d.id, d) for d in memory.documents([i for i in memory.ids if i not in pool]))
    codes = encode_images_cached(image_tok, cfg.tokenizer, list(pool.values()))
    lookup = {i: with_codes(d, codes) for i, d in pool.items() if i in codes}
    partners = relative_ids(list(pool.values()), list(pool.values()), cfg.ra.group_by, sibling_key)  # kept by the diversity rule

    nb_file = out / "neighbours.json"
    if not cfg.retrieval:
        neighbours = {}
    elif cfg.trainer.resume and nb_file.exists():
        neighbours = json.loads(nb_file.read_text())
    else:
        neighbours = precompute_neighbours(memory, train, cfg.ra, partners, allowed={d.id for d in train})
        atomic_write_json(nb_file, neighbours)
    main = [lookup[d.id] for d in train]
    data = RADataset(main, neighbours, lookup, fmt, ra, rename=pseudo_namer(main) if pseudo_namer and ra.pseudo_names else None)
    log.info("%d training documents, %d in the pool, prepared in %.0fs", len(data), len(lookup), time.time() - t0)

    max_len = max(PRESETS[cfg.size]["max_seq_len"], cfg.ra.max_len) if cfg.size in PRESETS else cfg.ra.max_len
    model = Transformer(TransformerConfig.preset(cfg.size, vocab_size=vocab.size, max_seq_len=max_len, dropout=cfg.dropout,
                                                 image_tokens=fmt.tokens_per_image, image_open_id=vocab.img,
                                                 copy_dim=cfg.copy_dim, copy_gate_reads=cfg.copy_gate_reads,
                                                 sep_id=vocab.sep,
                                                 content_ids=vocab.special_offset,
                                                 copy_end_ids=(vocab.img, vocab.doc_end), eos_id=vocab.eos))
    log.info("generator %s: %.2fM parameters", cfg.size, model.num_parameters() / 1e6)
    ks = (0, cfg.eval_k) if cfg.retrieval else (0,)
    val = {"val": [lookup[d.id] for d in by_split.get("val", []) if d.id in lookup]}
    eval_fn = (lambda m: evaluate_generator(m, fmt, memory, val, lookup, cfg, partners, ks)) if val["val"] else None

    trainer = Trainer(model, data, replace(cfg.trainer, out_dir=cfg.trainer.out_dir or str(out)),
                      collate_fn=data.collate, eval_fn=eval_fn)
    last = trainer.fit()
    save_generator(model, out, text_tokenizer=cfg.text_tokenizer, image_tokenizer=cfg.tokenizer, memory=cfg.memory,
                   alpha=cfg.ra.alpha, decode=cfg.decode, retrieval=cfg.retrieval, eval_k=cfg.eval_k)

    model.eval()
    tests = {s: [lookup[d.id] for d in by_split.get(s, []) if d.id in lookup] for s in ("heldout", "test", "val")}
    with torch.no_grad():
        result = evaluate_generator(model, fmt, memory, {s: v for s, v in tests.items() if v}, lookup, cfg, partners,
                                    (0, cfg.eval_k))
    result.update(steps=trainer.step, train_loss=last.get("loss"), minutes=(time.time() - t0) / 60,
                  tokens_per_s=last.get("tokens_per_s"), retrieval=cfg.retrieval)
    atomic_write_json(out / "eval.json", result)
    return result
