"""The retrieval-usage probe tells a generator that copies from its context from one that cannot."""
import numpy as np
import pytest
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.evaluation.retrieval_usage import CONTEXTS, retrieval_usage, usage_contexts
from ramm.model.transformer import Transformer, TransformerConfig
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.vocab import Vocabulary
from ramm.model.batch import pad_batch

TPI = 9  # 3 x 3 image grid


class CharTokenizer:
    vocab_size = 40

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % 38 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(96 + i) for i in ids)


def make_docs(n: int, rng: np.random.Generator) -> list[Document]:
    """n concepts x 2 renderings with unrelated random codes (a partner tells nothing about the target)."""
    return [Document(id=f"{s}-{c}", segments=[TextSegment(f"{s} {c}"), ImageSegment(tokens=rng.integers(0, 16, TPI))],
                     metadata={"concept": str(c), "style": s})
            for c in range(n) for s in ("a", "b")]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = Vocabulary(text_size=40, image_size=16, n_sentinels=2)
    fmt = CM3Format(vocab, CharTokenizer(), tokens_per_image=TPI)
    docs = make_docs(12, rng)
    partners = {d.id: [p for p in docs if p.metadata["concept"] == d.metadata["concept"] and p.id != d.id] for d in docs}
    cfg = TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=64, image_tokens=TPI, image_open_id=vocab.img)
    return vocab, fmt, docs, partners, cfg


def train_copier(vocab, fmt, cfg, steps: int = 350) -> Transformer:
    """A tiny model trained on fresh random images shown twice: in front (retrieved) and as the main document."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        batch = [fmt.encode_ra(d, [d], mask=False) for d in make_docs(32, rng)[::2]]  # 32 sequences
        b = pad_batch([(s.ids, s.weights) for s in batch], vocab.pad)
        _, loss = model(b["idx"], b["targets"], b["loss_weights"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_contexts_are_what_they_say(setup):
    _, _, docs, partners, _ = setup
    kept, ctx = usage_contexts(docs, [[docs[1]]] * len(docs), partners, group_by="concept")
    assert set(ctx) == set(CONTEXTS) and [d.id for d in kept] == [d.id for d in docs]
    for i, d in enumerate(kept):
        assert ctx["none"][i] == [] and ctx["own image"][i] == [d]
        assert ctx["partner"][i][0].metadata["concept"] == d.metadata["concept"] and ctx["partner"][i][0].id != d.id
        assert ctx["random"][i][0].metadata["concept"] != d.metadata["concept"]


def test_copier_is_caught_copying_and_an_untrained_model_is_not(setup):
    vocab, fmt, docs, partners, cfg = setup
    retrieved = [[partners[d.id][0]] for d in docs]
    copier = retrieval_usage(train_copier(vocab, fmt, cfg), fmt, docs, retrieved, partners, group_by="concept")
    assert copier["own image"] < 0.5 * copier["none"]  # it copies the oracle
    assert copier["partner"] > copier["own image"] + 1.0  # and unrelated codes do not help it
    torch.manual_seed(0)
    blank = retrieval_usage(Transformer(cfg), fmt, docs, retrieved, partners, group_by="concept")
    assert abs(blank["own image"] - blank["none"]) < 0.2 * blank["none"]


def test_bad_input(setup):
    _, fmt, docs, partners, cfg = setup
    with pytest.raises(ValueError, match="retrieved lists"):
        usage_contexts(docs, [[]], partners, group_by="concept")
    with pytest.raises(ValueError, match="partner"):
        usage_contexts(docs, [[] for _ in docs], {}, group_by="concept")


def test_caption_modality_scores_caption_tokens_and_catches_a_copy_head(setup):
    """A copy head's init prior (induction: copy the token after the one just read) already copies a
    caption that is in context: the oracle context's caption loss falls far below 'none'; a model
    without the head is untouched by it."""
    vocab, fmt, docs, partners, cfg = setup
    retrieved = [[partners[d.id][0]] for d in docs]
    torch.manual_seed(0)
    copy_cfg = TransformerConfig(**{**cfg.__dict__, "copy_dim": 32, "sep_id": vocab.sep,
                                    "content_ids": vocab.special_offset})
    head = retrieval_usage(Transformer(copy_cfg).eval(), fmt, docs, retrieved, partners, modality="caption", group_by="concept")
    assert head["own image"] < 0.8 * head["none"], head
    torch.manual_seed(0)
    plain = retrieval_usage(Transformer(cfg).eval(), fmt, docs, retrieved, partners, modality="caption", group_by="concept")
    assert abs(plain["own image"] - plain["none"]) < 0.1 * plain["none"], plain
    with pytest.raises(ValueError, match="modality"):
        retrieval_usage(Transformer(cfg), fmt, docs, retrieved, partners, modality="audio", group_by="concept")
