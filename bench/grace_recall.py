"""GRACE text -> image Recall@1/5/10 per identifier scheme, next to the dense retriever (issue 7).

Candidates: the memorized images (EmojiBench train + test concepts, both styles). Queries: the test concepts'
captions and pseudo-queries (name without style, short names), unseen in training. A hit is an image of the
query's concept (either style: docs/emojibench.md counts the other style as a hit). Peer: the dual encoder's exact
cosine search over the same images; with several `--retriever`s each is scored and the best R@1 is the peer
(a dense retriever trained for text -> image search is the fair one: the demo's private-subspace encoder
trades cross-modal search on unseen names for image -> document search). Target: the best scheme's R@1 >= dense.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from _common import emit


def dense_ranking(enc, docs, texts: list[str], documents: bool = False) -> list[list[str]]:
    """Top-10 ids per query by exact cosine search (the dual encoder peer): over image embeddings (cross-modal),
    or with `documents` over RA-CM3's text+image document embeddings (what the memory searches)."""
    img = enc.embed_documents(docs) if documents else enc.embed_image(np.stack([d.image for d in docs]))
    top = np.argsort(-(enc.embed_text(texts) @ img.T), axis=1)[:, :10]
    return [[docs[j].id for j in row] for row in top]


def queries_of(docs, candidates) -> tuple[list[str], list[set[str]], int]:
    """Query texts, the relevant candidate ids of each (same concept) and the number of caption queries."""
    from ramm_lab.emojibench import MATCH_KEY, pseudo_queries
    from ramm.training.grace_recipe import eval_queries

    queries = eval_queries(docs, pseudo_queries, match=MATCH_KEY)
    if not queries:
        raise ValueError("no documents to take queries from")
    by_concept: dict[str, set[str]] = {}
    for d in candidates:
        by_concept.setdefault(d.metadata["concept"], set()).add(d.id)
    return [q for q, _ in queries], [by_concept.get(c, set()) for _, c in queries], len(docs)


def added_images_rows(retriever, enc, memorized, new_docs, split: str) -> list[dict]:
    """Semantic ids of never-seen images inserted in the trie: R@K on their queries, over all images."""
    from ramm.retrieval.recall import recall_at_k

    retriever.add_images([d.id for d in new_docs], [d.text for d in new_docs])
    texts, relevant, _ = queries_of(new_docs, new_docs)
    ours = recall_at_k([[i for i, _ in retriever.search(q, k=10)] for q in texts], relevant)
    dense = recall_at_k(dense_ranking(enc, memorized + new_docs, texts), relevant)
    print(f"semantic, {len(new_docs)} {split} images added without retraining: {ours} | dense {dense}")
    return [{"bench": "grace_recall", "metric": f"semantic text->image R@{k}, {split} images added untrained",
             "ours": round(ours[k], 4), "peer_name": "dense dual encoder", "peer": round(dense[k], 4),
             "ratio": round(ours[k] / max(dense[k], 1e-9), 3), "target": "-", "unit": "recall",
             "note": f"{len(texts)} queries, {len(retriever.identifiers)} identifiers"} for k in (1, 5, 10)]


def main() -> int:
    from ramm_lab.emojibench import load_emojibench
    from ramm.grace.retriever import GraceRetriever
    from ramm.retrieval.encoder import load_encoder
    from ramm.tokenizers.image_tokenizer import ImageTokenizer
    from ramm.config import GraceConfig, load_config
    from ramm.retrieval.recall import recall_at_k
    from ramm.training.grace_recipe import image_codes, image_tokenizer_dir

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+", help="GRACE model directories (ramm train grace --out)")
    ap.add_argument("--corpus", default="data/emojibench", help="EmojiBench directory")
    ap.add_argument("--retriever", nargs="+", default=["runs/retriever"],
                    help="dense dual encoder(s); the best one's R@1 is the peer")
    ap.add_argument("--split", default="test", help="split whose queries are evaluated")
    ap.add_argument("--add-split", default=None,
                    help="also add this unmemorized split's images to semantic models (no retraining) and evaluate its queries")
    ap.add_argument("--memorized-sample", type=int, default=200, help="memorized images checked image -> own id")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    gcfg = json.loads((Path(args.models[0]) / "grace_config.json").read_text())
    memorized = load_emojibench(args.corpus, splits=gcfg["memorize_splits"])
    texts, relevant, n_cap = queries_of([d for d in memorized if d.metadata["split"] == args.split], memorized)
    print(f"{len(memorized)} memorized images, {len(texts)} {args.split} queries ({n_cap} captions)")

    peers = []
    for path in args.retriever:
        enc = load_encoder(path)
        ranked_dense = dense_ranking(enc, memorized, texts)
        dense, dense_cap = recall_at_k(ranked_dense, relevant), recall_at_k(ranked_dense[:n_cap], relevant[:n_cap])
        docs_dense = recall_at_k(dense_ranking(enc, memorized, texts, documents=True), relevant)
        print(f"dense {path} (images): all {dense} | captions {dense_cap} | text+image documents: {docs_dense}")
        peers.append((dense[1], path, enc, dense, dense_cap, docs_dense))
    _, peer_path, enc, dense, dense_cap, docs_dense = max(peers, key=lambda p: p[0])

    rng = np.random.default_rng(0)
    sample = [memorized[i] for i in rng.choice(len(memorized), size=min(args.memorized_sample, len(memorized)), replace=False)]
    gc = load_config(GraceConfig, Path(args.models[0]) / "grace_config.json")  # with --init: the bundle's tokenizer
    codes = image_codes(ImageTokenizer.from_pretrained(image_tokenizer_dir(gc)), gc, sample)
    rows = []
    for m in args.models:
        retriever = GraceRetriever.from_pretrained(m, device="cpu")
        ranked = [[i for i, _ in retriever.search(q, k=10)] for q in texts]
        ours, ours_cap = recall_at_k(ranked, relevant), recall_at_k(ranked[:n_cap], relevant[:n_cap])
        scheme = retriever.identifiers.scheme
        memo = float(np.mean([retriever.search_image(c, k=1)[0][0] == d.id for c, d in zip(codes, sample)]))
        print(f"{scheme} ({m}): all {ours} | captions {ours_cap} | memorization R@1 (image -> own id) {memo:.3f}")
        for k in (1, 5, 10):
            rows.append({"bench": "grace_recall", "metric": f"{scheme} text->image R@{k}, {args.split} queries",
                         "ours": round(ours[k], 4), "peer_name": f"dense dual encoder {peer_path}",
                         "peer": round(dense[k], 4), "ratio": round(ours[k] / max(dense[k], 1e-9), 3),
                         "target": ">= 1 (best scheme, R@1)",
                         "unit": "recall", "note": f"captions only: {ours_cap[k]:.3f} vs {dense_cap[k]:.3f}; "
                                                   f"dense over text+image documents: {docs_dense[k]:.3f}; "
                                                   f"memorization R@1 {memo:.3f}"})
        if args.add_split and scheme == "semantic":
            rows += added_images_rows(retriever, enc, memorized, load_emojibench(args.corpus, splits=[args.add_split]),
                                      args.add_split)
    emit(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
