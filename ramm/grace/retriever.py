"""A trained GRACE model as a retriever: query -> trie-constrained beam search -> ranked image ids.

A GRACE directory holds the generator (config.json + model.safetensors), identifiers.json, grace.json
(vocabulary layout, tokens per image, decoding width) and the text tokenizer (text_tokenizer/).
"""
from __future__ import annotations

import json
from pathlib import Path

from ramm.decoding.constrained_beam import constrained_beam_search
from ramm.grace.identifiers import Identifiers, unique_strings
from ramm.grace.tasks import image_prompt, query_prompt
from ramm.model.transformer import Transformer
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.utils import atomic_write_json, pick_device


class GraceRetriever:
    """Generative retrieval over the memorized images; `trie` may be extended as images are added."""

    def __init__(self, model, identifiers: Identifiers, fmt: CM3Format, num_beams: int = 10):
        expected = fmt.vocab.size + identifiers.new_tokens
        if model.cfg.vocab_size != expected:
            raise ValueError(f"model has {model.cfg.vocab_size} ids, vocabulary + identifiers need {expected}")
        self.model, self.identifiers, self.fmt, self.num_beams = model.eval(), identifiers, fmt, num_beams
        self.trie = identifiers.trie()

    def _search(self, prompt: list[int], k: int) -> list[tuple[str, float]]:
        hyps = constrained_beam_search(self.model, prompt, self.trie, num_beams=max(k, self.num_beams))
        return [(self.identifiers.ids[h.value], h.score) for h in hyps[:k]]

    def search(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        """Text query -> up to k (image id, log-probability of its identifier), best first."""
        return self._search(query_prompt(self.fmt, query), k)

    def search_image(self, codes, k: int = 10) -> list[tuple[str, float]]:
        """Image tokens -> identifiers (the memorization task; near-duplicate lookup)."""
        return self._search(image_prompt(self.fmt, codes), k)

    def add_images(self, image_ids: list[str], captions: list[str]) -> None:
        """Make new images retrievable without retraining: semantic identifiers are captions, which a model
        trained to map queries to captions already generates. Other schemes' new ids were never trained."""
        if self.identifiers.scheme != "semantic":
            raise ValueError(f"adding images to a {self.identifiers.scheme!r} model needs retraining "
                             "(memorize + retrieve on the new identifiers); only 'semantic' adds without it")
        if len(image_ids) != len(captions):
            raise ValueError(f"{len(image_ids)} image ids but {len(captions)} captions")
        empty = [i for i, c in zip(image_ids, captions) if not c or not c.strip()]
        if empty:
            raise ValueError(f"image {empty[0]!r} has an empty caption (semantic identifiers need one)")
        old = self.identifiers
        strings = unique_strings(old.strings + [c.strip() for c in captions])[len(old):]
        tokens = [[*self.fmt.text.encode(s), self.fmt.vocab.doc_end] for s in strings]
        self.identifiers = Identifiers(old.scheme, old.ids + list(image_ids), old.strings + strings,
                                       old.tokens + tokens, old.new_tokens)
        for i, t in enumerate(tokens, start=len(old)):
            self.trie.add(t, i)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.identifiers.save(directory / "identifiers.json")
        self.fmt.text.save_pretrained(directory / "text_tokenizer")
        atomic_write_json(directory / "grace.json", {"vocab": self.fmt.vocab.to_dict(), "num_beams": self.num_beams,
                                                     "tokens_per_image": self.fmt.tokens_per_image})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> "GraceRetriever":
        directory = Path(directory)
        if not (directory / "grace.json").is_file():
            raise FileNotFoundError(f"{directory / 'grace.json'} not found (not a GRACE model directory?)")
        meta = json.loads((directory / "grace.json").read_text())
        fmt = CM3Format(Vocabulary.from_dict(meta["vocab"]), TextTokenizer.from_pretrained(directory / "text_tokenizer"),
                        tokens_per_image=meta["tokens_per_image"])
        model = Transformer.from_pretrained(directory, device=pick_device(device))
        return cls(model, Identifiers.load(directory / "identifiers.json"), fmt, meta.get("num_beams", 10))

