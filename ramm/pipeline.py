"""The top-level facade: load a trained generator bundle and run RA-CM3's tasks on it.

    ramm = RAMM.load("runs/gen-ra", memory_dir="runs/memory")
    out = ramm.generate_image("twitter emoji: japan flag", n=8, method="cfg", guidance_scale=2)
    out.outputs[0], out.retrieved   # best sample first, and the evidence it was conditioned on

Every call retrieves and decodes as the bundle says (generator.json: the k it trained with, the decoding
settings chosen for it) unless the caller passes k / a `DecodeConfig` / some of its fields, and returns
the retrieved documents with the outputs. The model directory is what `ramm train generator` writes
(`ramm.model.bundle`: the transformer plus generator.json naming its tokenizers and memory).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ramm.config import DecodeConfig, DecodeDefaults
from ramm.corpus.document import Document, ImageSegment, TextSegment, read_image_file
from ramm.decoding.decoder import generate, generate_batched
from ramm.decoding.rerank import continuation_nll, image_text_scores, rank
from ramm.model.bundle import decode_defaults, load_generator, retrieval_default
from ramm.model.packing import pack_weights
from ramm.retrieval.memory import Memory
from ramm.tokenizers.image_tokenizer import decode_pixels

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What every facade call returns: outputs best first, their scores, and the retrieved evidence."""

    outputs: list  # images: uint8 (H, W, 3); captions: str; infill / generate: Document
    retrieved: list[Document]  # documents the model was conditioned on (retrieved or given)
    scores: list[float] = field(default_factory=list)  # re-ranking score per output, higher is better
    tokens: list[list[int]] = field(default_factory=list)  # generated ids per output


def read_image(image, size: int) -> np.ndarray:
    """A path, PIL image or uint8 (H, W, 3) array -> uint8 (size, size, 3); unreadable files raise."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} not found")
        return read_image_file(path, str(path), size)
    if isinstance(image, Image.Image):
        image = ImageSegment.from_pil(image).pixels
    pixels = ImageSegment(pixels=np.asarray(image)).pixels  # validates dtype and shape
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.LANCZOS))
    return pixels


def image_size(image_tokenizer) -> int:
    """Pixels per side the image tokenizer takes (ramm's keeps it in its config, Chameleon's as an attribute)."""
    if image_tokenizer is None:
        raise ValueError("this generator has no image tokenizer, so it takes no images")
    size = getattr(image_tokenizer, "image_size", None)
    return size if size is not None else image_tokenizer.cfg.image_size


class RAMM:
    """A retrieval-augmented multimodal generator with its memory: generate images, captions, infills."""

    def __init__(self, model, fmt, memory=None, pack: bool = True, instruction_tuned: bool = False,
                 images_unavailable: str | None = None, instruction_k: int = 0, k: int = 2,
                 decode: DecodeDefaults | None = None):
        self.model, self.format, self.memory = model, fmt, memory
        self.default_k = k  # what a task retrieves when its caller does not say (`retrieval_default`; 0: nothing)
        self.decode = decode or DecodeDefaults()  # how images and captions decode when the caller does not say
        self.instruction_tuned = instruction_tuned  # trained by `ramm train sft`: edit_image / answer follow instructions
        self.instruction_k = instruction_k  # documents retrieved into instruction prompts in SFT (their default)
        self.images_unavailable = images_unavailable  # why image tasks are refused (a checkpoint without them)
        self.vocab = fmt.vocab
        self.device = next(model.parameters()).device
        if pack:
            # inference only: keep the (in, out) weight copies the CPU decode products want for the facade's
            # life (ramm.model.packing.Linear), instead of packing on every call (~11 ms per call for the
            # small preset; batch-1 image latency 325 -> 277 ms). Costs a second copy of the weights;
            # a no-op on other devices.
            pack_weights(model)

    @classmethod
    def load(cls, model_dir: str | Path, memory_dir: str | Path | None = None, device: str | None = None,
             pack: bool = True) -> "RAMM":
        """Load a generator directory, and the memory (`memory_dir`, else the one it was trained with).

        `pack` keeps CPU decoding's weight copies for the facade's life (see `__init__`)."""
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        model, fmt, info = load_generator(model_dir, device)
        memory_dir = memory_dir or info.get("memory")
        memory = None
        if memory_dir:
            memory = Memory.load(memory_dir)
        return cls(model, fmt, memory, pack=pack, instruction_tuned=bool(info.get("sft", False)),
                   images_unavailable=info.get("images_unavailable"), instruction_k=int(info.get("sft_retrieve_k", 0)),
                   k=retrieval_default(info), decode=decode_defaults(info, Path(model_dir) / "generator.json"))

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, query, k: int | None = None, retrieve: bool | None = None,
                 retrieved: Sequence[Document] | None = None, exclude_ids: Sequence[str] = ()) -> list[Document]:
        """The caller's documents if given; else k from the memory (none when retrieve=False or k=0).
        `retrieve` / `k` left None: as the bundle trained (a vanilla bundle retrieves nothing, an RA one its
        eval_k); an explicit k > 0 with retrieve left None asks for retrieval."""
        if retrieved is not None:
            return list(retrieved)
        if retrieve is None:
            retrieve = (self.default_k if k is None else k) > 0
        if k is None:
            k = self.default_k or 2  # retrieval asked of a bundle trained without: RA-CM3's k
        if not retrieve or k == 0:
            return []
        if self.memory is None:
            raise ValueError("retrieval needs a memory: load one (memory_dir=...), or pass retrieve=False "
                             "or retrieved=[...]")
        return [doc for doc, _ in self.memory.search(query, k, exclude_ids=exclude_ids)]

    # ------------------------------------------------------------------ tasks
    def generate_image(self, caption: str, n: int = 8, *, decode: DecodeConfig | None = None,
                       retrieve: bool | None = None, retrieved: Sequence[Document] | None = None, k: int | None = None,
                       exclude_ids: Sequence[str] = (), seed: int = 0, rerank: bool = True, batch_size: int = 8,
                       progress: Callable[[int], None] | None = None, **overrides) -> Result:
        """Text -> image: n samples, best first by the retriever's image-text similarity (when a memory
        is loaded and rerank=True). Decoded with `decode` (default: the bundle's `self.decode.image`), any
        DecodeConfig field given as a keyword on top (`method="cfg", guidance_scale=2`); greedy image
        decoding collapses to blanks."""
        return self.generate_images([caption], [n], decode=decode, retrieve=retrieve, retrieved=[retrieved], k=k,
                                    exclude_ids=exclude_ids, seed=seed, rerank=rerank,
                                    batch_size=batch_size, progress=progress, **overrides)[0]

    def generate_images(self, captions: Sequence[str], n: Sequence[int], *, decode: DecodeConfig | None = None,
                        retrieve: bool | None = None, retrieved: Sequence[Sequence[Document] | None] | None = None,
                        k: int | None = None, exclude_ids: Sequence[str] = (), seed: int = 0, rerank: bool = True,
                        batch_size: int = 8, progress: Callable[[int], None] | None = None,
                        **overrides) -> list[Result]:
        """`generate_image` for several captions (n[i] samples each) decoded together, so a server can
        batch concurrent requests into one KV-cached decode; one seed draws the whole batch, so a
        caption's samples depend on its batch mates. A Result per caption, as `generate_image` gives."""
        if len(n) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(n)} sample counts")
        for caption, count in zip(captions, n):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError("caption is empty")
            if count < 1:
                raise ValueError(f"n must be >= 1, got {count}")
        self._require_images("generate_image")
        config = (decode or self.decode.image).with_overrides("generate_image", **overrides)
        docs = [self.retrieve(c, k, retrieve, r, exclude_ids) for c, r in zip(captions, retrieved or [None] * len(n))]
        prompts = [self.format.image_prompt(c, d) for c, d in zip(captions, docs)]
        tpi = self.format.tokens_per_image
        uncond = self.format.unconditional_image_prompt()
        rows: list[list[list[int]]] = [[] for _ in captions]
        done = 0
        for i, (part, counts) in enumerate(p for p in config.parts(list(n)) if sum(p[1])):
            owner = [j for j, c in enumerate(counts) for _ in range(c)]
            new = self._sample([prompts[j] for j in owner], [uncond] * len(owner), part, seed + i, batch_size,
                               progress and (lambda r, done=done: progress(done + r)),
                               max_new_tokens=tpi + 1, stop_after_image=True)
            for j, row in zip(owner, new):
                rows[j].append(row)
            done += len(owner)
        pixels = self._pixels([r for rs in rows for r in rs])
        ranked = rerank and self.memory is not None and any(len(rs) > 1 for rs in rows)
        if ranked:
            every = image_text_scores(self.memory.encoder, pixels, [c for c, rs in zip(captions, rows) for _ in rs])
        results, start = [], 0
        for rs, d in zip(rows, docs):
            images, start = pixels[start:start + len(rs)], start + len(rs)
            scores: list[float] = []
            if ranked and len(rs) > 1:
                s = every[start - len(rs):start]
                order = rank(s)
                images, rs, scores = images[order], [rs[i] for i in order], s[order].tolist()
            results.append(Result(list(images), d, scores, rs))
        return results

    def caption_image(self, image, n: int = 8, *, decode: DecodeConfig | None = None, retrieve: bool | None = None,
                      retrieved: Sequence[Document] | None = None, k: int | None = None, exclude_ids: Sequence[str] = (),
                      seed: int = 0, rerank: bool = True, max_new_tokens: int = 32,
                      batch_size: int = 8, progress: Callable[[int], None] | None = None, **overrides) -> Result:
        """Image -> text by CM3 infilling of a masked caption; n samples, best first by the model's
        own perplexity (RA-CM3). `image`: a path, PIL image or uint8 (H, W, 3) array. Decoded as
        `generate_image` says, the bundle's default being `self.decode.caption`."""
        config = (decode or self.decode.caption).with_overrides("caption_image", **overrides)
        pixels, codes, docs = self._read_query_image("caption_image", image, k, retrieve, retrieved, exclude_ids)
        prompt = self.format.caption_prompt(codes, docs)
        rows = self._sample([prompt] * n, [self.format.unconditional_caption_prompt()] * n, config, seed,
                            batch_size, progress, max_new_tokens=max_new_tokens, stop_tokens=(self.vocab.eos,),
                            allow_images=False)
        texts = [self.format.caption_text(r) for r in rows]
        scores: list[float] = []
        if rerank and n > 1:
            nll = continuation_nll(self.model, self.vocab.pad, [prompt] * n, rows)
            order = rank(nll, higher_is_better=False)
            texts, rows, scores = [texts[i] for i in order], [rows[i] for i in order], (-nll[order]).tolist()
        return Result(texts, docs, scores, rows)

    def infill(self, document: Document, masked: Sequence[int], n: int = 1, *, retrieve: bool | None = None,
               retrieved: Sequence[Document] | None = None, k: int | None = None, exclude_ids: Sequence[str] = (),
               decode: DecodeConfig | None = None, seed: int = 0, max_new_tokens: int = 32, **overrides) -> Result:
        """CM3 infilling: regenerate the segments at indices `masked` (their content is ignored) given the
        rest of the document; image spans get exactly one image's codes, text spans end at a sentinel.
        Decoded with `decode` (default: sampling) and keyword overrides, sample or greedy only."""
        config = self._plain("infill", decode, overrides)
        if any(isinstance(document.segments[i], ImageSegment) for i in masked if 0 <= i < len(document.segments)):
            self._require_images("infill of an image")
        kept = [s for i, s in enumerate(document.segments) if i not in set(masked)]
        query = Document(document.id, kept) if kept else None  # the masked content must not leak in
        docs = self.retrieve(query, k, False if query is None else retrieve, retrieved, exclude_ids)
        prompt, kinds = self.format.infill_prompt(document, masked, docs)
        generator = self._generator(seed)
        rows = [list(prompt) for _ in range(n)]
        spans: list[list[int]] = [[] for _ in range(n)]
        for j, kind in enumerate(kinds):
            if j:
                rows = [r + [self.vocab.sentinel(j)] for r in rows]
            opener = [self.vocab.img] if kind == "image" else []
            if kind == "image":
                new = self._generate([r + opener for r in rows], None, config, generator,
                                     max_new_tokens=self.format.tokens_per_image + 1, stop_after_image=True)
            else:
                stops = (self.vocab.eos, *(self.vocab.sentinel(i) for i in range(self.vocab.n_sentinels)))
                new = self._generate(rows, None, config, generator, max_new_tokens=max_new_tokens,
                                     stop_tokens=stops, allow_images=False)
                new = [[t for t in r if t not in stops] for r in new]
            rows = [r + opener + t for r, t in zip(rows, new)]
            spans = [s + ([self.vocab.sentinel(j)] if j else []) + opener + t for s, t in zip(spans, new)]
        outputs = [self.format.parse(r + [self.vocab.eos], doc_id=f"{document.id}-infill-{i}")
                   for i, r in enumerate(rows)]
        return Result(outputs, docs, [], spans)

    def generate(self, prompt: Document, demonstrations: Sequence[Document] = (), n: int = 1, *,
                 retrieve: bool | None = None, retrieved: Sequence[Document] | None = None, k: int | None = None,
                 exclude_ids: Sequence[str] = (), decode: DecodeConfig | None = None, seed: int = 0,
                 max_new_tokens: int = 96, **overrides) -> Result:
        """In-context continuation: retrieved documents, then the demonstrations, <sep>, then the
        open prompt document, continued until </doc>. Outputs are the completed prompt documents.
        Decoded as `infill` says."""
        config = self._plain("generate", decode, overrides)
        docs = self.retrieve(prompt, k, retrieve, retrieved, exclude_ids)
        context = [*docs, *demonstrations]
        prefix = [t for d in context for t in self.format.encode_document(d)] + ([self.vocab.sep] if context else [])
        ids = prefix + self.format.encode_document(prompt)[:-1]  # the prompt document stays open
        rows = self._generate([ids] * n, None, config, self._generator(seed),
                              max_new_tokens=max_new_tokens, stop_tokens=(self.vocab.doc_end,))
        outputs = [self.format.parse(ids + r + ([] if r[-1:] == [self.vocab.doc_end] else [self.vocab.doc_end]),
                                     doc_id=f"{prompt.id}-continued-{i}") for i, r in enumerate(rows)]
        return Result(outputs, docs, [], rows)

    def edit_image(self, image, instruction: str, n: int = 1, *, retrieve: bool | None = None,
                   retrieved: Sequence[Document] | None = None, k: int | None = None, exclude_ids: Sequence[str] = (),
                   decode: DecodeConfig | None = None, seed: int = 0, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None, **overrides) -> Result:
        """Image + instruction -> image ("make the skin tone dark", "draw it in the google style"): the
        instruction format of `ramm train sft`. `retrieve` / `k` default to how SFT trained (its
        `retrieve_k`: 0 = no retrieval); decoded as `infill` says."""
        config = self._plain("edit_image", decode, overrides)
        pixels, prompt, docs = self._instruction(image, instruction, "image", retrieve, retrieved, k, exclude_ids)
        tpi = self.format.tokens_per_image
        rows = self._sample([prompt] * n, None, config, seed, batch_size, progress,
                            max_new_tokens=tpi + 1, stop_after_image=True)
        return Result(list(self._pixels(rows)), docs, [], rows)

    def answer(self, image, question: str, *, retrieve: bool | None = None, retrieved: Sequence[Document] | None = None,
               k: int | None = None, exclude_ids: Sequence[str] = (), max_new_tokens: int = 16) -> Result:
        """A question about an image, answered greedily in the SFT instruction format (one output);
        retrieval defaults as in `edit_image`."""
        pixels, prompt, docs = self._instruction(image, question, "text", retrieve, retrieved, k, exclude_ids)
        rows = self._sample([prompt], None, DecodeConfig(method="greedy"), 0, 1, None, max_new_tokens=max_new_tokens,
                            stop_tokens=(self.vocab.doc_end,), allow_images=False)
        return Result([self.format.caption_text(rows[0])], docs, [], rows)

    def _instruction(self, image, instruction, response, retrieve, retrieved, k, exclude_ids):
        """(pixels, prompt ids, retrieved documents) of an instruction about an image; bad input raises."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction is empty")
        retrieve = self.instruction_k > 0 if retrieve is None else retrieve
        k = (self.instruction_k or 2) if k is None else k
        pixels, codes, docs = self._read_query_image("an instruction about an image", image, k, retrieve, retrieved,
                                                     exclude_ids)
        segments = [TextSegment(instruction), ImageSegment(pixels=pixels, tokens=codes)]
        prompt = self.format.instruction_prompt(segments, response, docs)
        room = self.model.cfg.max_seq_len - (self.format.tokens_per_image + 2 if response == "image" else 1)
        while len(prompt) > room and docs:  # as in SFT: retrieved documents give way first
            docs = docs[:-1]
            prompt = self.format.instruction_prompt(segments, response, docs)
        if len(prompt) > room:
            raise ValueError(f"instruction {instruction[:40]!r}... is too long: the prompt has {len(prompt)} tokens, "
                             f"the model's context leaves room for {room}")
        return pixels, prompt, docs

    # ------------------------------------------------------------------ helpers
    def _read_query_image(self, task, image, k, retrieve, retrieved, exclude_ids):
        """(pixels, VQ codes, retrieved documents) of an image given to a task: read at the tokenizer's size."""
        self._require_images(task)
        pixels = read_image(image, image_size(self.format.image_tokenizer))
        docs = self.retrieve(pixels, k, retrieve, retrieved, exclude_ids)
        codes = self.format.image_tokenizer.encode(ImageSegment(pixels=pixels).to_tensor()[None])[0].cpu().numpy()
        return pixels, codes, docs

    def _pixels(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Generated rows that start with an image's codes -> uint8 images (N, H, W, 3)."""
        tpi = self.format.tokens_per_image
        codes = torch.tensor([[self.vocab.code(t) for t in r[:tpi]] for r in rows], dtype=torch.long)
        return decode_pixels(self.format.image_tokenizer, codes)

    def _require_images(self, task: str) -> None:
        if self.images_unavailable:
            raise ValueError(f"{task} needs image tokens and a VQGAN: {self.images_unavailable}")

    def _generator(self, seed: int):
        return torch.Generator(device=self.device).manual_seed(seed)

    @staticmethod
    def _plain(task: str, decode: DecodeConfig | None, overrides: dict) -> DecodeConfig:
        """The settings of a task without an unconditional stream (infill, generate, edit): sample or greedy."""
        config = (decode or DecodeConfig()).with_overrides(task, **overrides)
        if config.method not in ("sample", "greedy"):
            raise ValueError(f"{task} decodes with method 'sample' or 'greedy', not {config.method!r}")
        return config

    def _generate(self, prompts, uncond, config: DecodeConfig, generator, **kw) -> list[list[int]]:
        return generate(self.model, self.vocab, prompts, tokens_per_image=self.format.tokens_per_image,
                        config=config, uncond_prompts=uncond, generator=generator, **kw)

    def _sample(self, prompts, uncond, config: DecodeConfig, seed, batch_size, progress, **kw) -> list[list[int]]:
        """n samples in batches of batch_size (one seeded generator across batches)."""
        if len(prompts) < 1:
            raise ValueError(f"n must be >= 1, got {len(prompts)}")
        return generate_batched(self.model, self.vocab, prompts, batch_size=batch_size, uncond_prompts=uncond,
                                generator=self._generator(seed), progress=progress,
                                tokens_per_image=self.format.tokens_per_image,
                                config=config, **kw)

