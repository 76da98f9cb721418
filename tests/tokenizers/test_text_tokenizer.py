import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramm.tokenizers.text_tokenizer import TextTokenizer

TEXTS = [f"{style} emoji: {name}" for style in ("google", "twitter")
         for name in ("japan flag", "grinning face", "red heart", "flag: france", "smiling face with halo")] * 5


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(TEXTS, vocab_size=320)


def test_training_learns_merges_that_shorten_corpus_text(tok):
    ids = tok.encode("twitter emoji: japan flag")
    assert len(ids) < len("twitter emoji: japan flag".encode()) / 3
    assert 256 < tok.vocab_size <= 320 and tok.pad == 0


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_any_unicode_text_round_trips(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_save_load_gives_identical_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = TextTokenizer.from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists() and loaded.vocab_size == tok.vocab_size
    for t in ["google emoji: red heart", "unseen words ünïcode 😀"]:
        assert loaded.encode(t) == tok.encode(t)


def test_bad_inputs_raise_value_error(tok, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_pretrained(tmp_path / "missing")


def test_cli_trains_on_corpus_text(tmp_path, capsys):
    from ramm.__main__ import main
    from ramm.corpus.document import encode_png

    rows = []
    for i, text in enumerate(TEXTS):
        (tmp_path / f"{i}.png").write_bytes(encode_png(np.full((8, 8, 3), 255, np.uint8)))
        rows.append(json.dumps({"id": str(i), "image": f"{i}.png", "caption": text}))
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["train", "text-tokenizer", "--corpus", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "bpe"),
                 "--vocab-size", "300", "--split.fractions", '{"train": 1.0}']) == 0
    assert "tokens per text" in capsys.readouterr().out
    tok = TextTokenizer.from_pretrained(tmp_path / "bpe")
    assert tok.decode(tok.encode(TEXTS[0])) == TEXTS[0] and tok.vocab_size <= 300
