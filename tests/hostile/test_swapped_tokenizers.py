"""A generator bundle pins its tokenizers: a swapped or edited one is refused, naming the file."""
import json
import shutil

import pytest

from hostile_helpers import cli, one_line_error, pair_docs, tiny_image_tokenizer


def test_a_bundle_loads_with_its_own_tokenizers_and_records_their_pins(bundle):
    from ramm.model.bundle import load_generator
    pins = json.loads((bundle / "generator.json").read_text())["tokenizer_sha256"]
    assert sorted(pins) == ["image_tokenizer/config.json", "image_tokenizer/model.safetensors",
                            "text_tokenizer/tokenizer.json"]
    model, fmt, _ = load_generator(bundle, device="cpu")
    assert model.cfg.vocab_size >= fmt.vocab.size


def test_another_trainings_image_tokenizer_of_the_same_config_is_refused(bundle):
    from ramm.model.bundle import load_generator
    tiny_image_tokenizer(seed=1).save_pretrained(bundle / "image_tokenizer")  # same config, other weights
    with pytest.raises(ValueError, match=r"image_tokenizer/model\.safetensors is not the file this generator"):
        load_generator(bundle, device="cpu")


@pytest.mark.parametrize("vocab_size", [300, 280])
def test_another_bpe_is_refused_whatever_its_size(bundle, vocab_size):
    from ramm.model.bundle import load_generator
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    texts = [f"another corpus sentence number {i} about {w}" for i in range(40) for w in ("cats", "boats")]
    TextTokenizer.train(texts, vocab_size=vocab_size).save_pretrained(bundle / "text_tokenizer")
    with pytest.raises(ValueError, match=r"text_tokenizer/tokenizer\.json is not the file"):
        load_generator(bundle, device="cpu")


def test_garbage_tokenizer_json_is_named_never_a_parser_traceback(bundle, tmp_path):
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    (bundle / "text_tokenizer" / "tokenizer.json").write_text("{ not json")
    shutil.copytree(bundle / "text_tokenizer", tmp_path / "loose")
    with pytest.raises(ValueError, match=r"loose/tokenizer\.json: not a readable tokenizer"):
        TextTokenizer.from_pretrained(tmp_path / "loose")  # the tokenizer on its own, no pins to check


def test_cli_generate_refuses_a_swapped_tokenizer_in_one_line(bundle, tmp_path, capsys):
    tiny_image_tokenizer(seed=2).save_pretrained(bundle / "image_tokenizer")
    rc = cli("generate", "image", pair_docs()[0].text, "--model", bundle, "--out", tmp_path / "o", "--n", 1,
             "--device", "cpu", "--no-retrieve")
    assert rc == 1
    assert "image_tokenizer/model.safetensors is not the file" in one_line_error(capsys)
    assert not list((tmp_path / "o").glob("sample_*.png"))


def test_a_missing_pinned_file_is_named(bundle):
    from ramm.model.bundle import bundle_info
    (bundle / "image_tokenizer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"image_tokenizer/config\.json not found"):
        bundle_info(bundle)
