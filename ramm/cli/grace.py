"""`ramm train grace` (GRACE identifiers + memorize/retrieve training) and `ramm grace search DIR "query"`."""
from __future__ import annotations

from ramm.cli import add_runtime_args


def register(cli) -> None:
    p = cli.command("grace", "train a GRACE generative retriever (identifiers, memorize, retrieve)", group="train")
    p.add_argument("--corpus", required=True, help="EmojiBench directory")
    p.add_argument("--out", required=True, help="output directory for the GRACE model")
    p.add_argument("--scheme", default="structured", choices=("numeric", "string", "semantic", "structured", "atomic"),
                   help="identifier scheme")
    p.add_argument("--init", default=None, help="pretrained generator bundle (default: train from scratch)")
    p.add_argument("--preset", default="tiny", help="model size when training from scratch")
    p.add_argument("--text-tokenizer", default="runs/text_tokenizer", help="text tokenizer dir (without --init)")
    p.add_argument("--image-tokenizer", default="runs/image_tokenizer", help="image tokenizer dir (without --init)")
    p.add_argument("--retriever", default="runs/retriever", help="dual encoder dir (structured scheme's embeddings)")
    p.add_argument("--schedule", default="mixed", choices=("sequence", "mixed"),
                   help="memorize then retrieve, or both tasks mixed")
    p.add_argument("--memorize-splits", default="train,test", help="splits whose images are memorized")
    p.add_argument("--retrieve-splits", default="train", help="splits whose queries train retrieval")
    p.add_argument("--no-pseudo-queries", action="store_true", help="train retrieval on captions only")
    p.add_argument("--memorize-steps", type=int, default=1000, help="steps of learning to memorize")
    p.add_argument("--retrieve-steps", type=int, default=1000, help="steps of learning to retrieve")
    p.add_argument("--minutes", type=float, default=None, help="wall-time cap per stage")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--k", type=int, default=30, help="structured: clusters per level")
    p.add_argument("--leaf-size", type=int, default=30, help="structured: most images per leaf")
    p.add_argument("--beams", type=int, default=10, help="beam width at retrieval time")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_runtime_args(p, "continue the stages' checkpoints")
    p.set_defaults(func=_train)

    p = cli.command("search", "retrieve images for a text query with a GRACE model", group="grace")
    p.add_argument("model", help="GRACE model directory (ramm train grace --out)")
    p.add_argument("query", help="text query")
    p.add_argument("-k", type=int, default=5, help="number of results")
    p.add_argument("--corpus", default=None, help="show each result's caption from this EmojiBench directory")
    p.add_argument("--device", default=None, help="cpu / cuda")
    p.set_defaults(func=_search)


def _splits(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _train(args) -> int:
    import torch

    from ramm.corpus.emojibench import is_emojibench_dir, pseudo_queries
    from ramm.training.grace_recipe import GraceConfig, grace_documents, train_grace

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GraceConfig(corpus=args.corpus, out=args.out, scheme=args.scheme, init=args.init, preset=args.preset,
                      text_tokenizer=args.text_tokenizer, image_tokenizer=args.image_tokenizer, retriever=args.retriever,
                      schedule=args.schedule, memorize_splits=_splits(args.memorize_splits),
                      retrieve_splits=_splits(args.retrieve_splits), pseudo_queries=not args.no_pseudo_queries,
                      memorize_steps=args.memorize_steps, retrieve_steps=args.retrieve_steps, max_minutes=args.minutes,
                      batch_size=args.batch_size, lr=args.lr, k=args.k, leaf_size=args.leaf_size, num_beams=args.beams,
                      seed=args.seed, device=args.device, resume=args.resume)
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
