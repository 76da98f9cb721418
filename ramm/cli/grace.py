"""`ramm train grace` (flags: the fields of `ramm.config.GraceConfig`) and `ramm grace search DIR "query"`
(`ramm.config.GraceSearchConfig`)."""
from __future__ import annotations

from ramm.config import GraceConfig, GraceSearchConfig


def register(cli) -> None:
    cli.config_command("grace", "train a GRACE generative retriever (identifiers, memorize, retrieve) on any corpus "
                       "`open_corpus` reads", GraceConfig, _train, group="train")

    cli.config_command("search", "retrieve images for a text query with a GRACE model", GraceSearchConfig, _search,
                       group="grace", positional=("model", "query"))


def _train(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.training.grace_recipe import grace_documents, train_grace

    hooks = open_corpus(cfg.corpus).hooks  # EmojiBench: names and short names as pseudo-queries; others: none
    retriever = train_grace(cfg, *grace_documents(cfg), hooks.pseudo_queries)
    print(f"saved GRACE model ({len(retriever.identifiers)} {cfg.scheme} identifiers) to {cfg.out}")
    return 0


def _search(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.grace.retriever import GraceRetriever

    retriever = GraceRetriever.from_pretrained(cfg.model, device=cfg.device)
    captions = {}
    if cfg.corpus:
        from ramm.corpus import open_corpus
        captions = {d.id: d.text for d in open_corpus(cfg.corpus)}
    for rank, (image_id, score) in enumerate(retriever.search(cfg.query, k=cfg.k), 1):
        ident = retriever.identifiers.strings[retriever.identifiers.index(image_id)]
        print(f"{rank:2d}. {image_id:28s} logp={score:8.3f}  id={ident!r}  {captions.get(image_id, '')}")
    return 0
