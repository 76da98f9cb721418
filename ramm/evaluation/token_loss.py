"""Token-level losses of a generator on CM3 sequences: the main document's image tokens after its retrieved
documents, and a caption after its image (the usage probe and the generator recipe's evaluations)."""
from __future__ import annotations

from typing import Sequence

from ramm.corpus.document import Document
from ramm.model.batch import pad_batch
from ramm.tokenizers.cm3_format import CM3Format


def _main_token_loss(model, seqs: Sequence[tuple[list[int], list[float]]], pad: int, batch_size: int, device) -> float:
    """Weighted mean next-token loss of (ids, weights) sequences (weight w_j on predicting ids[j]): the model's
    own weighted loss per batch (so a copy head scores its mixture without building it over the vocabulary)."""
    total, count = 0.0, 0.0
    for s in range(0, len(seqs), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(seqs[s:s + batch_size], pad).items()}
        _, loss = model(**batch)
        w = float(batch["loss_weights"].sum())  # padding and ignored targets weigh 0 (pad_batch)
        total += float(loss) * w
        count += w
    return total / max(count, 1.0)


def image_token_loss(model, fmt: CM3Format, docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                     batch_size: int = 32, device=None) -> float:
    """Mean next-token loss on the main document's image tokens (uncorrupted, after the retrieved ones)."""
    vocab = fmt.vocab
    seqs = []
    for d, r in zip(docs, retrieved):
        ids = fmt.encode_ra(d, r, mask=False).ids
        start = ids.index(vocab.sep) + 1 if vocab.sep in ids else 0  # weight 1 on the main document's codes only
        seqs.append((ids, [float(j >= start and vocab.is_image(t)) for j, t in enumerate(ids)]))
    return _main_token_loss(model, seqs, vocab.pad, batch_size, device or next(model.parameters()).device)


def caption_token_loss(model, fmt: CM3Format, docs: Sequence[Document], retrieved: Sequence[Sequence[Document]],
                       batch_size: int = 32, device=None) -> float:
    """Mean next-token loss on the caption tokens (and <eos>) of image -> text infilling, the way captions are
    decoded: `caption_prompt(codes, retrieved)` then the document's text."""
    seqs = []
    for d, r in zip(docs, retrieved):
        prompt = fmt.caption_prompt(fmt.image_codes(d.images[0]), r)
        answer = [*fmt.text.encode(d.text), fmt.vocab.eos]
        seqs.append((prompt + answer, [0.0] * len(prompt) + [1.0] * len(answer)))
    return _main_token_loss(model, seqs, fmt.vocab.pad, batch_size, device or next(model.parameters()).device)
