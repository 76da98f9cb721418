"""`ramm train retriever`, `ramm memory build|search`, `ramm eval retrieval`."""
from __future__ import annotations

from ramm.cli import add_runtime_args

SPLITS_ALL = ("train", "val", "test", "heldout")


def register(cli) -> None:
    p = cli.command("retriever", "train the CLIP-style dual encoder on a corpus' train split", group="train")
    p.add_argument("--corpus", required=True, help="any corpus `open_corpus` reads (directory, JSONL/CSV, COCO JSON, webdataset shards)")
    p.add_argument("--out", required=True, help="encoder dir: config.json, model.safetensors, tokenizer.json")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget; stops early with a checkpoint")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (also the cosine schedule's length)")
    p.add_argument("--batch-size", type=int, default=128, help="concepts per step (two images + one text each)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: min(100, steps/10))")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices")
    p.add_argument("--embed-dim", type=int, default=256, help="shared embedding dimension")
    p.add_argument("--private-dim", type=int, default=0,
                   help="per-modality private subspace size (demo: 128; needs two views per concept)")
    p.add_argument("--shared-weight", type=float, default=0.5,
                   help="with --private-dim: share of each vector's squared norm in the shared space (demo: 0.1)")
    p.add_argument("--embed-shared-weight", type=float, default=None,
                   help="shared weight of retrieval vectors (default: --shared-weight; lower favours "
                        "image-image matching)")
    p.add_argument("--pool", choices=("mean", "flatten"), default="mean", help="image tower head (demo: flatten)")
    p.add_argument("--image-loss-weight", type=float, default=0.0,
                   help="weight of the image->image leave-one-out loss (demo: 1.0)")
    p.add_argument("--memory-loss-weight", type=float, default=1.0,
                   help="weight of the leave-one-out loss against mixed-modal documents (0: CLIP's losses only, "
                        "the peer for image-only text->image search)")
    p.add_argument("--eval-every", type=int, default=200, help="steps between val recall evaluations")
    add_runtime_args(p, "continue from OUT/checkpoint")
    p.set_defaults(func=_train)

    p = cli.command("build", "embed a corpus and build (or resume building) a memory", group="memory")
    p.add_argument("--corpus", required=True, help="corpus directory or file")
    p.add_argument("--encoder", required=True, help="encoder dir (ramm dual encoder or transformers CLIP)")
    p.add_argument("--out", required=True, help="memory dir")
    p.add_argument("--splits", default=",".join(SPLITS_ALL), help="comma-separated splits to include")
    p.add_argument("--batch-size", type=int, default=256, help="documents embedded per store transaction")
    p.add_argument("--flat-below", type=int, default=100_000, help="exact index below this many documents")
    p.set_defaults(func=_build)

    p = cli.command("search", "query a memory by text or image", group="memory")
    p.add_argument("memory", help="memory dir")
    p.add_argument("text", nargs="?", help="text query")
    p.add_argument("--image", help="image file query (PNG/JPEG)")
    p.add_argument("-k", type=int, default=5, help="results")
    p.add_argument("--strategy", default="relevance", help="relevance | modality | diversity | ra-cm3")
    p.set_defaults(func=_search)

    p = cli.command("retrieval", "Recall@1/5/10 text->image and image->text on test and heldout", group="eval")
    p.add_argument("--memory", required=True, help="memory dir (should hold every split)")
    p.add_argument("--corpus", required=True, help="corpus the queries come from")
    p.add_argument("--splits", default="test,heldout", help="comma-separated query splits")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=_eval)


def _documents(corpus: str, splits=None):
    """Stream a corpus' documents of `splits` (None: all)."""
    from ramm.corpus.emojibench import is_emojibench_dir, iter_emojibench
    if is_emojibench_dir(corpus):
        return iter_emojibench(corpus, splits)
    from ramm.corpus import open_corpus
    docs = open_corpus(corpus)
    return docs if splits is None else (d for d in docs if d.metadata.get("split", "train") in set(splits))


def _split_list(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    if not out:
        raise ValueError(f"no splits in {s!r}")
    return out


def _train(args) -> int:
    import logging

    import torch

    from ramm.retrieval.dual_encoder import DualEncoderConfig
    from ramm.training.retriever_recipe import train_retriever
    from ramm.training.trainer import TrainerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    train, val = list(_documents(args.corpus, ["train"])), list(_documents(args.corpus, ["val"]))
    if not train:
        raise ValueError(f"{args.corpus} has no train documents")
    warmup = min(100, args.steps // 10) if args.warmup_steps is None else args.warmup_steps
    tcfg = TrainerConfig(out_dir=args.out, steps=args.steps, max_minutes=args.minutes, batch_size=args.batch_size,
                         lr=args.lr, weight_decay=args.weight_decay, warmup_steps=warmup, log_every=20,
                         ckpt_every=200, eval_every=args.eval_every, device=args.device, resume=args.resume)
    print(f"training the retriever on {len(train)} train documents; val recall on {len(val)} val documents")
    row = train_retriever(train, args.out, tcfg, DualEncoderConfig(
        embed_dim=args.embed_dim, private_dim=args.private_dim, shared_weight=args.shared_weight, pool=args.pool,
        embed_shared_weight=args.embed_shared_weight, image_loss_weight=args.image_loss_weight,
        memory_loss_weight=args.memory_loss_weight), val_docs=val or None)
    print(f"saved the retriever to {args.out}: step {row.get('step')}, loss {row.get('loss', float('nan')):.4f}" +
          "".join(f", val {k} {v:.3f}" for k, v in row.items() if k.startswith(("t2i", "i2t"))))
    return 0


def _build(args) -> int:
    from ramm.retrieval.memory import Memory
    mem = Memory.build(_documents(args.corpus, _split_list(args.splits)), args.encoder, args.out,
                       batch_size=args.batch_size, flat_below=args.flat_below)
    s = mem.stats
    print(f"memory {args.out}: {len(mem)} documents ({s['added']} added, {s['already_present']} already present, "
          f"{s['skipped']} skipped); index {mem.spec.factory} {mem.spec.params}".rstrip())
    for k, v in sorted(s.items()):
        if k.startswith("skipped_"):
            print(f"  {k}: {v}")
    return 0


def _search(args) -> int:
    from pathlib import Path

    from ramm.corpus.document import decode_image_bytes
    from ramm.retrieval.memory import Memory
    if (args.text is None) == (args.image is None):
        raise ValueError("give either a text query or --image PATH")
    mem = Memory.load(args.memory)
    query = args.text if args.image is None else decode_image_bytes(Path(args.image).read_bytes(), args.image)
    for doc, score in mem.search(query, k=args.k, strategy=args.strategy):
        print(f"{doc.id}\t{score:.4f}\t{doc.text}")
    return 0


def _eval(args) -> int:
    from ramm.retrieval.memory import Memory
    from ramm.retrieval.recall import memory_recall
    from ramm.utils import atomic_write_json
    mem = Memory.load(args.memory)
    print("queries: each document's text (text->image) or image (image->text); memory: every document, "
          "the query's own left out; hit: a document of the same concept")
    print(f"{'split':<8} {'direction':<12} {'n':>5} {'R@1':>6} {'R@5':>6} {'R@10':>6}")
    results = {}
    for split in _split_list(args.splits):
        docs = list(_documents(args.corpus, [split]))
        if not docs:
            raise ValueError(f"split {split!r} of {args.corpus} has no documents")
        results[split] = memory_recall(mem, docs)
        for direction, r in results[split].items():
            print(f"{split:<8} {direction:<12} {len(docs):>5} {r[1]:>6.3f} {r[5]:>6.3f} {r[10]:>6.3f}")
    if args.json:
        atomic_write_json(args.json, results)
    return 0
