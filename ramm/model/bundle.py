"""A generator bundle, saved and loaded as one directory: the transformer (config.json +
model.safetensors), copies of its tokenizers (text_tokenizer/, image_tokenizer/) and generator.json
(paths relative to the directory, the memory it was trained with, how it decodes), so decoding can
rebuild the CM3 format.

The tokenizers are pinned as the memory pins its encoder: generator.json records the sha256 of each file
that decides a tokenizer's ids (`TOKENIZER_FILES`), and every reader of the bundle (`bundle_info`) checks
them, because a swapped tokenizer of the same size turns the model's ids into other words and pictures
without any error."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from ramm.config import DecodeDefaults, from_dict, to_dict
from ramm.model.hf_chameleon import check_checkpoint, is_chameleon_checkpoint, load_chameleon
from ramm.model.transformer import Transformer
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.image_tokenizer import ImageTokenizer
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.utils import atomic_write_json, file_sha256, pick_device

log = logging.getLogger(__name__)

INFO = "generator.json"
TOKENIZER_FILES = {"text_tokenizer": ("tokenizer.json",), "image_tokenizer": ("config.json", "model.safetensors")}


def tokenizer_pins(directory: Path) -> dict[str, str]:
    """{"text_tokenizer/tokenizer.json": sha256, ...}: the bundle's tokenizer files as they are now."""
    return {f"{folder}/{name}": file_sha256(directory / folder / name)
            for folder, names in TOKENIZER_FILES.items() for name in names}


def check_pins(directory: Path, pins) -> None:
    """ValueError naming the first tokenizer file that is missing or not the one the bundle was saved with."""
    if not isinstance(pins, dict):
        raise ValueError(f"{directory / INFO}: tokenizer_sha256 must be an object of file -> sha256, got {pins!r:.60}")
    for rel, want in pins.items():
        path = directory / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the generator was saved with it")
        got = file_sha256(path)
        if got != want:
            raise ValueError(f"{path} is not the file this generator was saved with (sha256 {got[:12]}, saved "
                             f"{str(want)[:12]}): another tokenizer maps the model's ids to other tokens. Restore "
                             f"the bundle's own copy, or retrain the generator with this tokenizer.")


def save_generator(model: Transformer, directory: str | Path, *, text_tokenizer: str | Path, image_tokenizer: str | Path,
                   memory: str | Path | None = None, alpha: float = 0.1, decode: DecodeDefaults | None = None,
                   **extra) -> None:
    """Tokenizers are copied in (their source directories may be retrained later); the memory is referenced;
    `decode` is how the bundle decodes unless its caller says otherwise (None: the library's defaults, written
    out, so the bundle keeps them if those change)."""
    directory = Path(directory)
    model.save_pretrained(directory)
    for name, src in (("text_tokenizer", text_tokenizer), ("image_tokenizer", image_tokenizer)):
        dst = directory / name
        if Path(src).resolve() != dst.resolve():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint*", "metrics.jsonl", ".lock"))
    # the memory relative to the bundle, so a run folder moved or copied whole still finds it
    rel_memory = os.path.relpath(Path(memory).resolve(), directory.resolve()) if memory else None
    atomic_write_json(directory / INFO, {"text_tokenizer": "text_tokenizer", "image_tokenizer": "image_tokenizer",
                                         "memory": rel_memory,
                                         "alpha": alpha, "decode": to_dict(decode or DecodeDefaults()), **extra,
                                         "tokenizer_sha256": tokenizer_pins(directory)})


def set_decode_defaults(directory: str | Path, decode: DecodeDefaults) -> None:
    """Record in a saved bundle how it decodes by default (the lab, once it has chosen the settings on val)."""
    path = Path(directory) / INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("decode") != to_dict(decode):
        atomic_write_json(path, {**info, "decode": to_dict(decode)})


def bundle_info(directory: str | Path) -> dict:
    """generator.json with the tokenizer entries resolved to paths under `directory`, its tokenizer files
    checked against the pins saved with it."""
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
    if "tokenizer_sha256" in info:
        check_pins(directory, info["tokenizer_sha256"])
    else:
        log.warning("%s predates tokenizer pins: cannot check that its tokenizers are the ones it was trained with",
                    directory)
    memory = info.get("memory")
    if memory is not None and not isinstance(memory, str):
        raise ValueError(f"{directory / INFO}: memory must be a path or null, got {memory!r:.60}")
    return {**info, "text_tokenizer": directory / info["text_tokenizer"], "image_tokenizer": directory / info["image_tokenizer"],
            "memory": directory / memory if memory else None}  # relative to the bundle (absolute in older ones)


def retrieval_default(info: dict) -> int:
    """The k a bundle retrieves unless the caller says otherwise: as it was trained (generator.json's
    `retrieval` and `eval_k`), so a vanilla bundle 0; bundles that do not say retrieve RA-CM3's 2."""
    retrieve, k = info.get("retrieval", True), info.get("eval_k", 2)
    if not isinstance(retrieve, bool) or isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{INFO}: retrieval must be true/false and eval_k an integer >= 0, got {retrieve!r}, {k!r}")
    return k if retrieve else 0


def decode_defaults(info: dict, where: str | Path = INFO) -> DecodeDefaults:
    """How a bundle decodes unless the caller says otherwise (generator.json's `decode`; bad values are a
    ValueError naming `where` and the field); bundles saved before it was recorded decode with the library's
    defaults."""
    try:
        return from_dict(DecodeDefaults, info.get("decode") or {}, str(where), "decode.")
    except ValueError as e:
        raise ValueError(e if str(e).startswith(str(where)) else f"{where}: decode: {e}") from None


def read_decode_defaults(directory: str | Path) -> DecodeDefaults:
    """`decode_defaults` of a directory without loading it: the library's defaults when it is no ramm bundle
    (a Chameleon checkpoint) or its generator.json is unreadable (loading it says why)."""
    try:
        info = json.loads((Path(directory) / INFO).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return DecodeDefaults()
    return decode_defaults(info, Path(directory) / INFO) if isinstance(info, dict) else DecodeDefaults()


def load_generator(directory: str | Path, device: str | None = None):
    """(model, CM3Format with both tokenizers, info dict) from a directory written by save_generator, or
    from a transformers Chameleon / Anole checkpoint (`ramm.model.hf_chameleon`)."""
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
