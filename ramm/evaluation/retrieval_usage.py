"""Does a retrieval-augmented generator use what it retrieves? Its loss on the same documents' image
tokens (text -> image) and caption tokens (image -> text, infilling) under controlled retrieved contexts.

A lower loss with retrieval than without can come from the retrieved document's content or merely from
having any document in front. The contexts tell these apart:
- "none": no retrieved document (the model's caption-only loss);
- "retrieved": what the memory returns for the caption (leave-one-out, as in the headline experiment);
- "partner": only the leave-one-out partner (same concept, other rendering: docs/emojibench.md's knowledge);
- "random": one document of another concept (a context that carries no information about the target);
- "own image": the document itself, which no training input contains: an oracle for how much copying
  could give. A model that learned to copy drops far below "none" here; one that ignores its context does not.
Before the copy head (ramm.model.copy_head) the demo's RA model's own-image loss was only 2.5% below its
no-retrieval loss: it had not learned to copy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ramm.corpus.document import Document
from ramm.evaluation.token_loss import caption_token_loss, image_token_loss

CONTEXTS = ("none", "retrieved", "partner", "random", "own image")
MODALITIES = {"image": image_token_loss, "caption": caption_token_loss}


def usage_contexts(docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                   partners: dict[str, Sequence[Document]], seed: int = 0, *, group_by: str | None
                   ) -> tuple[list[Document], dict[str, list[list[Document]]]]:
    """(the documents that have a leave-one-out partner, {context: retrieved documents of each}); `partners`
    maps a document id to its partners (see the module docstring for the contexts)."""
    if len(retrieved) != len(docs):
        raise ValueError(f"{len(docs)} documents but {len(retrieved)} retrieved lists")
    keep = [i for i, d in enumerate(docs) if partners.get(d.id)]
    if not keep:
        raise ValueError(f"no document has a leave-one-out partner (metadata {group_by!r} shared by another document)")
    rng = np.random.default_rng(seed)
    concept = [d.id if group_by is None else d.metadata.get(group_by, d.id) for d in docs]
    contexts: dict[str, list[list[Document]]] = {c: [] for c in CONTEXTS}
    for i in keep:
        others = [j for j in range(len(docs)) if concept[j] != concept[i]]
        contexts["none"].append([])
        contexts["retrieved"].append(list(retrieved[i]))
        contexts["partner"].append([partners[docs[i].id][0]])
        contexts["random"].append([docs[int(rng.choice(others))]] if others else [])
        contexts["own image"].append([docs[i]])
    return [docs[i] for i in keep], contexts


def retrieval_usage(model, fmt, docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                    partners: dict[str, Sequence[Document]], batch_size: int = 32, seed: int = 0,
                    modality: str = "image", *, group_by: str | None) -> dict[str, float]:
    """{context: mean loss of the documents' image tokens (modality "image") or caption tokens ("caption")}
    for every context of `usage_contexts`; `retrieved` should be what that task retrieves (caption -> text
    query for images, image query for captions)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {sorted(MODALITIES)}, got {modality!r}")
    kept, contexts = usage_contexts(docs, retrieved, partners, seed, group_by=group_by)
    model.eval()
    with torch.no_grad():
        return {name: MODALITIES[modality](model, fmt, kept, contexts[name], batch_size=batch_size) for name in CONTEXTS}
