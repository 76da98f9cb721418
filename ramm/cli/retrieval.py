"""`ramm train retriever`, `ramm memory build|add|search`, `ramm eval retrieval`.

Flags and `--config FILE` of train / build / add / eval are the fields of `ramm.config.RetrieverTrainConfig`,
`ramm.config.MemoryBuildConfig`, `MemoryAddConfig` and `RetrievalEvalConfig` (`--model.private_dim`, `--trainer.steps`,
`--split.seed`, `--backend milvus --uri URI`, ...).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ramm.cli import corpus_documents
from ramm.config import (MemoryAddConfig, MemoryBuildConfig, MemorySearchConfig, RetrievalEvalConfig,
                         RetrieverTrainConfig)
from ramm.utils import atomic_write_json


def register(cli) -> None:
    cli.config_command("retriever", "train the CLIP-style dual encoder on a corpus' train split",
                       RetrieverTrainConfig, _train, group="train")
    cli.config_command("build", "embed a corpus and build (or resume building) a memory", MemoryBuildConfig, _build,
                       group="memory")
    cli.config_command("add", "embed a corpus' new documents into a built memory", MemoryAddConfig, _add,
                       group="memory", positional=("memory", "corpus"))
    cli.config_command("search", "query a memory by text or image", MemorySearchConfig, _search, group="memory",
                       positional=("memory", "text"))

    cli.config_command("retrieval", "Recall@1/5/10 text->image and image->text on test and heldout",
                       RetrievalEvalConfig, _eval, group="eval")


def _train(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.training.retriever_recipe import train_retriever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hooks = open_corpus(cfg.corpus).hooks  # EmojiBench: a concept is one answer, its name a second text view
    views = replace(cfg.views, match=hooks.match_or(cfg.views.match))
    docs = list(corpus_documents(cfg.corpus, cfg.split, ["train", "val"], strict=cfg.strict))
    train, val = list(cfg.split.select(docs, "train")), list(cfg.split.select(docs, "val"))
    if not train:
        raise ValueError(f"{cfg.corpus} has no train documents")
    print(f"training the retriever on {len(train)} train documents; val recall on {len(val)} val documents")
    row = train_retriever(train, cfg.out, cfg.trainer, cfg.model, views, val_docs=val or None,
                          alt_text=hooks.alt_text)
    print(f"saved the retriever to {cfg.out}: step {row.get('step')}, loss {row.get('loss', float('nan')):.4f}" +
          "".join(f", val {k} {v:.3f}" for k, v in row.items() if k.startswith(("t2i", "i2t"))))
    return 0


def _build(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.retrieval.distributed_build import build_distributed, embedding_report, world_size
    from ramm.retrieval.encoder import load_encoder
    from ramm.retrieval.memory import memory_class
    encoder = load_encoder(cfg.encoder)
    image_size = getattr(getattr(encoder, "cfg", None), "image_size", None)  # decode large images reduced
    corpus = open_corpus(cfg.corpus, strict=cfg.strict, image_size=image_size)
    docs = cfg.split.select(corpus, cfg.splits)
    if world_size() > 1:  # under torchrun: each rank embeds its shard (faiss: rank 0 merges them)
        mem = build_distributed(docs, cfg.encoder, cfg.out, batch_size=cfg.batch_size, backend=cfg.backend,
                                **cfg.backend_options())
        if mem is None:
            return 0
        for rep in embedding_report(cfg.out):
            print(f"  rank {rep['rank']}: {rep['documents']} documents embedded at {rep['docs_per_s']:.1f} docs/s")
        print(f"memory {cfg.out}: {len(mem)} documents from {rep['world']} shards; index {mem.index_description}")
        return 0
    mem = memory_class(cfg.backend).build(docs, encoder, cfg.out, encoder_path=cfg.encoder, batch_size=cfg.batch_size,
                                          **cfg.backend_options())
    _report(mem, cfg.out, corpus)
    return 0


def _add(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.retrieval.memory import Memory
    mem = Memory.load(cfg.memory)
    image_size = getattr(getattr(mem.encoder, "cfg", None), "image_size", None)
    corpus = open_corpus(cfg.corpus, strict=cfg.strict, image_size=image_size)
    mem.add(cfg.split.select(corpus, cfg.splits), batch_size=cfg.batch_size, progress=True)
    _report(mem, cfg.memory, corpus)
    return 0


def _report(mem, where: str, corpus) -> None:
    """What a build or add did: counts, and every skip reason (the memory's and the loader's)."""
    s = mem.stats
    reasons = Counter({k[len("skipped_"):]: v for k, v in s.items() if k.startswith("skipped_")})
    reasons.update(corpus.skips.skipped)  # the loader's skips (unreadable rows never reach the memory)
    print(f"memory {where}: {len(mem)} documents ({s['added']} added, {s['already_present']} already present, "
          f"{sum(reasons.values())} skipped); index {mem.index_description}")
    for reason, n in reasons.most_common():
        print(f"  skipped {reason}: {n}")


def _search(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus.document import read_image_file
    from ramm.retrieval.memory import Memory
    if cfg.image is not None and not Path(cfg.image).is_file():
        raise ValueError(f"--image {cfg.image} is not an image file")
    mem = Memory.load(cfg.memory, snapshot=True)  # creates no file; a read-only mount works
    size = getattr(getattr(mem.encoder, "cfg", None), "image_size", None)  # decoded reduced to the encoder's size
    query = cfg.text if cfg.image is None else read_image_file(cfg.image, cfg.image, size)
    for doc, score in mem.search(query, k=cfg.k, strategy=cfg.strategy):
        print(f"{doc.id}\t{score:.4f}\t{doc.text}")
    return 0


def _eval(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.retrieval.memory import Memory
    from ramm.retrieval.recall import memory_recall

    match = open_corpus(cfg.corpus).hooks.match_or(cfg.match)
    if match is None:
        raise ValueError(f"{cfg.corpus}: its format names no metadata key that documents of one answer share "
                         f"(a query's only hit would be itself, which is left out); pass --match KEY")
    mem = Memory.load(cfg.memory, snapshot=True)
    print("queries: each document's text (text->image) or image (image->text); memory: every document, "
          f"the query's own left out; hit: a document of the same {match}")
    print(f"{'split':<8} {'direction':<12} {'n':>5} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    results = {}
    for split in cfg.splits:
        docs = list(corpus_documents(cfg.corpus, cfg.split, [split], strict=cfg.strict))
        if not docs:
            raise ValueError(f"split {split!r} of {cfg.corpus} has no documents")
        results[split] = memory_recall(mem, docs, match=match)
        for direction, r in results[split].items():
            print(f"{split:<8} {direction:<12} {len(docs):>5} {r[1]:>6.3f} {r[5]:>6.3f} {r[10]:>6.3f}")
    if cfg.json:
        atomic_write_json(cfg.json, results)
    return 0
