"""A generator directory: the transformer (config.json + model.safetensors), copies of its tokenizers
(text_tokenizer/, image_tokenizer/) and generator.json (paths relative to the directory, the memory it
was trained with), so decoding can rebuild the CM3 format."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ramm.model.transformer import Transformer
from ramm.utils import atomic_write_json, pick_device

INFO = "generator.json"


def save_generator(model: Transformer, directory: str | Path, *, text_tokenizer: str | Path, image_tokenizer: str | Path,
                   memory: str | Path | None = None, alpha: float = 0.1, **extra) -> None:
    """Tokenizers are copied in (their source directories may be retrained later); the memory is referenced."""
    directory = Path(directory)
    model.save_pretrained(directory)
    for name, src in (("text_tokenizer", text_tokenizer), ("image_tokenizer", image_tokenizer)):
        dst = directory / name
        if Path(src).resolve() != dst.resolve():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint*", "metrics.jsonl"))
    atomic_write_json(directory / INFO, {"text_tokenizer": "text_tokenizer", "image_tokenizer": "image_tokenizer",
                                         "memory": str(Path(memory).resolve()) if memory else None,
                                         "alpha": alpha, **extra})


def bundle_info(directory: str | Path) -> dict:
    """generator.json with the tokenizer entries resolved to paths under `directory`."""
    directory = Path(directory)
    if not (directory / INFO).is_file():
        raise FileNotFoundError(f"{directory / INFO} not found (train one with `ramm train generator`)")
    try:
        info = json.loads((directory / INFO).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{directory / INFO}: not readable JSON ({e})") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("text_tokenizer", "image_tokenizer")):
        raise ValueError(f"{directory / INFO}: expected an object naming text_tokenizer and image_tokenizer folders, "
                         f"got {json.dumps(info)[:80]}")
    return {**info, "text_tokenizer": directory / info["text_tokenizer"], "image_tokenizer": directory / info["image_tokenizer"]}


def load_generator(directory: str | Path, device: str | None = None):
    """(model, CM3Format with both tokenizers, info dict) from a directory written by save_generator, or
    from a transformers Chameleon / Anole checkpoint (`ramm.model.hf_chameleon`)."""
    from ramm.model.hf_chameleon import check_checkpoint, is_chameleon_checkpoint, load_chameleon
    from ramm.tokenizers.cm3_format import CM3Format
    from ramm.tokenizers.image_tokenizer import ImageTokenizer
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary

    if is_chameleon_checkpoint(directory):
        return load_chameleon(directory, device)
    config = Path(directory) / "config.json"
    if not (Path(directory) / INFO).is_file() and config.is_file() and "model_type" in json.loads(config.read_text()):
        check_checkpoint(directory)  # a transformers checkpoint of another kind: says which
    info = bundle_info(directory)
    device = pick_device(device)
    model = Transformer.from_pretrained(directory, device=device).eval()
    text = TextTokenizer.from_pretrained(info["text_tokenizer"])
    image = ImageTokenizer.from_pretrained(info["image_tokenizer"], device=device)
    vocab = Vocabulary(text_size=text.vocab_size, image_size=image.codebook_size)
    if model.cfg.vocab_size < vocab.size:
        raise ValueError(f"{directory}: model has {model.cfg.vocab_size} ids, its tokenizers need {vocab.size}")
    return model, CM3Format(vocab, text, image, alpha=info.get("alpha", 0.1)), info
