import numpy as np
import pytest
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.grace.identifiers import build_identifiers
from ramm.grace.retriever import GraceRetriever
from ramm_lab.emojibench import pseudo_queries
from ramm.grace.tasks import ExampleDataset, add_identifier_tokens, memorize_examples, retrieve_examples
from ramm.model.transformer import Transformer, TransformerConfig
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.text_tokenizer import ByteTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.training.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)
N, TPI, CODES = 20, 8, 32
NAMES = ["cat", "dog", "sun", "moon", "star", "tree", "fish", "bird", "cake", "ball",
         "boat", "car", "key", "lock", "bell", "leaf", "rose", "fire", "snow", "rain"]


def corpus():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, CODES, size=(N, TPI))
    docs = [Document(id=f"img-{i}", segments=[TextSegment(f"emoji: {n}"), ImageSegment(tokens=codes[i])],
                     metadata={"concept": n, "name": n.title(), "short_names": [f"{n}_face"]})
            for i, n in enumerate(NAMES)]
    return docs, codes


@pytest.mark.parametrize("scheme", ["numeric", "atomic"])
def test_tiny_model_overfit_on_20_images_retrieves_them_all(scheme, tmp_path):
    docs, codes = corpus()
    vocab = Vocabulary(text_size=256, image_size=CODES, n_sentinels=1)
    fmt = CM3Format(vocab, ByteTokenizer(), tokens_per_image=TPI)
    idents = build_identifiers(scheme, [d.id for d in docs], vocab, fmt.text)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=64))
    add_identifier_tokens(model, vocab.size, idents.new_tokens)
    data = ExampleDataset(memorize_examples(docs, codes, idents, fmt) + retrieve_examples(docs, idents, fmt, pseudo_queries),
                         vocab.pad)
    assert len(data) == 4 * N  # image; caption, name, short name
    cfg = TrainerConfig(out_dir=str(tmp_path), steps=400, batch_size=20, lr=3e-3, warmup_steps=20, weight_decay=0.0,
                        device="cpu", amp=False, progress=False, ckpt_every=1000, log_every=50)
    Trainer(model, data, cfg, collate_fn=data.collate).fit()
    retriever = GraceRetriever(model, idents, fmt, num_beams=5)
    assert [retriever.search(d.text, k=1)[0][0] for d in docs] == [d.id for d in docs]
    assert [retriever.search(pseudo_queries(d)[0], k=1)[0][0] for d in docs] == [d.id for d in docs]
    assert [retriever.search_image(c, k=1)[0][0] for c in codes] == [d.id for d in docs]
    top5 = retriever.search("emoji: cat", k=5)
    assert len(top5) == 5 and len({i for i, _ in top5}) == 5 and all(i in idents.ids for i, _ in top5)


def test_retriever_rejects_a_model_without_room_for_atomic_ids():
    docs, _ = corpus()
    vocab = Vocabulary(text_size=256, image_size=CODES, n_sentinels=1)
    fmt = CM3Format(vocab, ByteTokenizer(), tokens_per_image=TPI)
    idents = build_identifiers("atomic", [d.id for d in docs], vocab, fmt.text)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=64))
    with pytest.raises(ValueError, match="identifiers need"):
        GraceRetriever(model, idents, fmt)


def test_collate_masks_the_prompt_and_pads():
    docs, codes = corpus()
    vocab = Vocabulary(text_size=256, image_size=CODES, n_sentinels=1)
    fmt = CM3Format(vocab, ByteTokenizer(), tokens_per_image=TPI)
    idents = build_identifiers("string", [d.id for d in docs], vocab, fmt.text)
    ex = retrieve_examples(docs[:2], idents, fmt)
    batch = ExampleDataset(ex, vocab.pad).collate(ex)
    tgt = batch["targets"][0]
    assert tgt[tgt != -100].tolist() == idents.token_sequence("img-0")
    assert batch["idx"][0, len(ex[0].prompt) - 1].item() == vocab.sep


def test_adding_images_extends_the_trie_for_semantic_ids_and_refuses_other_schemes():
    docs, _ = corpus()
    vocab = Vocabulary(text_size=256, image_size=CODES, n_sentinels=1)
    fmt = CM3Format(vocab, ByteTokenizer(), tokens_per_image=TPI)
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=64))
    semantic = GraceRetriever(model, build_identifiers("semantic", [d.id for d in docs[:18]], vocab, fmt.text,
                                                       captions=[d.text for d in docs[:18]]), fmt)
    semantic.add_images(["new-0", "new-1"], ["emoji: rain", "emoji: cat"])  # "emoji: cat" is taken: made unique
    assert len(semantic.trie) == 20 and semantic.identifiers.strings[-2:] == ["emoji: rain", "emoji: cat (2)"]
    found = {i for i, _ in semantic.search("emoji: rain", k=20)}
    assert {"new-0", "new-1"} <= found
    numeric = GraceRetriever(model, build_identifiers("numeric", [d.id for d in docs], vocab, fmt.text), fmt)
    with pytest.raises(ValueError, match="needs retraining"):
        numeric.add_images(["new-0"], ["emoji: rain"])
