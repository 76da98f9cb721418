"""`ramm train grace` (flags: the fields of `ramm.config.GraceConfig`) and `ramm grace search DIR "query"`."""
from __future__ import annotations

def register(cli) -> None:
    from ramm.config import GraceConfig
    cli.config_command("grace", "train a GRACE generative retriever (identifiers, memorize, retrieve) on any corpus "
                       "`open_corpus` reads", GraceConfig, _train, group="train")

    p = cli.command("search", "retrieve images for a text query with a GRACE model", group="grace")
    p.add_argument("model", help="GRACE model directory (ramm train grace --out)")
    p.add_argument("query", help="text query")
    p.add_argument("-k", type=int, default=5, help="number of results")
    p.add_argument("--corpus", default=None, help="show each result's text from this corpus (any `open_corpus` reads)")
    p.add_argument("--device", default=None, help="cpu / cuda")
    p.set_defaults(func=_search)


def _train(cfg, threads) -> int:
    import torch

    from ramm.corpus.emojibench import is_emojibench_dir, pseudo_queries
    from ramm.training.grace_recipe import grace_documents, train_grace

    if threads:
        torch.set_num_threads(threads)
    retriever = train_grace(cfg, *grace_documents(cfg), pseudo_queries if is_emojibench_dir(cfg.corpus) else None)
    print(f"saved GRACE model ({len(retriever.identifiers)} {cfg.scheme} identifiers) to {cfg.out}")
    return 0


def _search(args) -> int:
    from ramm.grace.retriever import GraceRetriever

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    retriever = GraceRetriever.from_pretrained(args.model, device=args.device)
    captions = {}
    if args.corpus:
        from ramm.corpus import open_corpus
        captions = {d.id: d.text for d in open_corpus(args.corpus)}
    for rank, (image_id, score) in enumerate(retriever.search(args.query, k=args.k), 1):
        ident = retriever.identifiers.strings[retriever.identifiers.index(image_id)]
        print(f"{rank:2d}. {image_id:28s} logp={score:8.3f}  id={ident!r}  {captions.get(image_id, '')}")
    return 0
