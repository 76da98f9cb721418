"""The CM3 sequence format: Documents <-> one token stream, retrieval-augmented inputs, causal masking.

    document     <doc> text... <img> i_1 ... i_N </img> ... </doc>      (any order/number of segments)
    RA input     <doc> m_1 </doc> ... <doc> m_k </doc> <sep> <doc> x </doc>   (RA-CM3 sec. 3: retrieved first)
    CM3 masking  <doc> a <mask:0> c </doc> <infill> <mask:0> b <eos>     (CM3: spans moved to the end)

Masked spans stay inside one segment (CM3Leon: masks never cross a modality change), and an image is
masked whole unless `MaskingConfig.partial_images` asks otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol, Sequence as Seq

import numpy as np

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.tokenizers.vocab import Vocabulary

log = logging.getLogger(__name__)


class TextTokenizerLike(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class MaskingConfig:
    """How the causal-masked (CM3) transform picks spans."""

    rate: float = 1.0  # Poisson mean of the number of masked spans (CM3 uses 1)
    max_spans: int = 2  # cap on the number of spans per document
    text_subspan_prob: float = 0.25  # chance a text span is a sub-span rather than the whole text segment
    partial_images: bool = False  # allow a span to cut an image (rarely useful)

    def __post_init__(self):
        if self.rate < 0 or self.max_spans < 0:
            raise ValueError("masking rate and max_spans must be >= 0")
        if not 0.0 <= self.text_subspan_prob <= 1.0:
            raise ValueError("text_subspan_prob must be in [0, 1]")


@dataclass
class Sequence:
    """Token ids plus a per-token loss weight (alpha on retrieved documents, RA-CM3's loss)."""

    ids: list[int]
    weights: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class CM3Format:
    """Serialises Documents for the generator and parses generated streams back."""

    def __init__(self, vocab: Vocabulary, text_tokenizer: TextTokenizerLike, image_tokenizer=None,
                 tokens_per_image: int | None = None, masking: MaskingConfig | None = None, alpha: float = 0.1):
        if text_tokenizer.vocab_size > vocab.text_size:
            raise ValueError(f"text tokenizer has {text_tokenizer.vocab_size} ids but the vocabulary reserves {vocab.text_size}")
        self.vocab, self.text, self.image_tokenizer = vocab, text_tokenizer, image_tokenizer
        self.tokens_per_image = tokens_per_image or getattr(image_tokenizer, "tokens_per_image", None)
        if self.tokens_per_image is None:
            raise ValueError("tokens_per_image is needed (pass it or an image tokenizer)")
        self.masking = masking or MaskingConfig()
        self.alpha = alpha

    # ------------------------------------------------------------------ encoding
    def image_codes(self, seg: ImageSegment) -> np.ndarray:
        if seg.tokens is not None:
            codes = np.asarray(seg.tokens, dtype=np.int64).reshape(-1)
        elif self.image_tokenizer is not None:
            # lazy: the CM3 format is torch-free; only raw pixels need the VQ model
            import torch
            with torch.no_grad():
                codes = self.image_tokenizer.encode(seg.to_tensor()[None]).cpu().numpy()[0]
        else:
            raise ValueError("image segment has no tokens and no image tokenizer was given")
        if codes.shape[0] != self.tokens_per_image:
            raise ValueError(f"image has {codes.shape[0]} codes, expected {self.tokens_per_image}")
        if codes.min() < 0 or codes.max() >= self.vocab.image_size:
            raise ValueError(f"image codes out of range [0, {self.vocab.image_size})")
        return codes

    def encode_image_codes(self, codes) -> list[int]:
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        return [self.vocab.img, *self.vocab.image_id(codes).tolist(), self.vocab.img_end]

    def segment_chunks(self, doc: Document) -> list[tuple[str, list[int]]]:
        """Token chunks per segment: ("text", ids) or ("image", <img> codes </img>); <break> between texts."""
        chunks: list[tuple[str, list[int]]] = []
        for seg in doc.segments:
            if isinstance(seg, TextSegment):
                if not seg.text:
                    continue
                if chunks and chunks[-1][0] == "text":
                    chunks.append(("break", [self.vocab.brk]))
                chunks.append(("text", self.text.encode(seg.text)))
            else:
                chunks.append(("image", self.encode_image_codes(self.image_codes(seg))))
        return chunks

    def encode_document(self, doc: Document) -> list[int]:
        body = [t for _, ids in self.segment_chunks(doc) for t in ids]
        return [self.vocab.doc, *body, self.vocab.doc_end]

    def encode_ra(self, main: Document, retrieved: Seq[Document] = (), rng: np.random.Generator | None = None,
                  mask: bool = True) -> Sequence:
        """Retrieved documents (weight alpha), <sep>, then the main document, CM3-masked when `mask`."""
        ids: list[int] = []
        for r in retrieved:
            ids += self.encode_document(r)
        weights = [self.alpha] * len(ids)
        if retrieved:
            ids.append(self.vocab.sep)
            weights.append(1.0)
        chunks = self.segment_chunks(main)
        main_ids = self.causal_mask(chunks, rng) if mask else \
            [self.vocab.doc, *[t for _, c in chunks for t in c], self.vocab.doc_end]
        ids += main_ids
        weights += [1.0] * len(main_ids)
        return Sequence(ids, weights)

    def causal_mask(self, chunks: list[tuple[str, list[int]]], rng: np.random.Generator | None) -> list[int]:
        """CM3: replace n ~ min(Poisson(rate), cap) spans by <mask:i>, append them after <infill>."""
        rng = rng or np.random.default_rng()
        cfg = self.masking
        candidates = [i for i, (kind, ids) in enumerate(chunks) if kind in ("text", "image") and ids]
        n = min(int(rng.poisson(cfg.rate)), cfg.max_spans, len(candidates), self.vocab.n_sentinels)
        plain = [self.vocab.doc, *[t for _, c in chunks for t in c], self.vocab.doc_end]
        if n == 0:
            return plain
        picked = sorted(rng.choice(candidates, size=n, replace=False).tolist())
        body: list[int] = []
        spans: list[list[int]] = []
        for i, (kind, ids) in enumerate(chunks):
            if i not in picked:
                body += ids
                continue
            lo, hi = 0, len(ids)
            if kind == "text" and len(ids) > 1 and rng.random() < cfg.text_subspan_prob:
                lo = int(rng.integers(0, len(ids)))
                hi = int(rng.integers(lo + 1, len(ids) + 1))
            elif kind == "image" and cfg.partial_images:
                # keep <img> ... </img> brackets outside the span so the remainder stays well formed
                lo = int(rng.integers(1, len(ids) - 1))
                hi = len(ids) - 1
            body += ids[:lo] + [self.vocab.sentinel(len(spans))] + ids[hi:]
            spans.append(ids[lo:hi])
        tail: list[int] = [self.vocab.infill]
        for j, span in enumerate(spans):
            tail += [self.vocab.sentinel(j), *span]
        tail.append(self.vocab.eos)
        return [self.vocab.doc, *body, self.vocab.doc_end, *tail]

    def unmask(self, ids: Seq[int]) -> list[int]:
        """Move infilled spans back into their sentinels; sentinels with no span are dropped (with a warning)."""
        ids = list(ids)
        if self.vocab.infill not in ids:
            return ids
        cut = ids.index(self.vocab.infill)
        head, tail = ids[:cut], ids[cut + 1:]
        spans: dict[int, list[int]] = {}
        cur: int | None = None
        for t in tail:
            if t == self.vocab.eos:
                break
            s = self.vocab.sentinel_index(t)
            if s is not None:
                cur = s
                spans[cur] = []
            elif cur is not None:
                spans[cur].append(t)
        out: list[int] = []
        for t in head:
            s = self.vocab.sentinel_index(t)
            if s is None:
                out.append(t)
            elif s in spans:
                out += spans[s]
            else:
                log.warning("sentinel <mask:%d> has no infilled span; dropped", s)
        return out

    # ------------------------------------------------------------------ prompts
    def _prefix(self, retrieved: Seq[Document]) -> list[int]:
        ids = [t for r in retrieved for t in self.encode_document(r)]
        return ids + [self.vocab.sep] if retrieved else ids

    def image_prompt(self, caption: str, retrieved: Seq[Document] = ()) -> list[int]:
        """Text -> image: ends in <img>; the model then emits tokens_per_image codes."""
        if not caption or not caption.strip():
            raise ValueError("caption is empty")
        return [*self._prefix(retrieved), self.vocab.doc, *self.text.encode(caption), self.vocab.img]

    def unconditional_image_prompt(self) -> list[int]:
        """CM3Leon's CFG stream: caption replaced by <mask>, no retrieved documents."""
        return [self.vocab.doc, self.vocab.mask, self.vocab.img]

    def caption_prompt(self, codes, retrieved: Seq[Document] = ()) -> list[int]:
        """Image -> text by infilling: <doc> <mask:0> <img>..</img> </doc> <infill> <mask:0>, then text until <eos>."""
        return [*self._prefix(retrieved), self.vocab.doc, self.vocab.mask, *self.encode_image_codes(codes),
                self.vocab.doc_end, self.vocab.infill, self.vocab.mask]

    def unconditional_caption_prompt(self) -> list[int]:
        """Amateur stream for contrastive decoding of captions: the image is masked too."""
        return [self.vocab.doc, self.vocab.mask, self.vocab.doc_end, self.vocab.infill, self.vocab.mask]

    def caption_text(self, row: Seq[int]) -> str:
        """The caption a decoded row holds: its text ids up to the first non-text token, decoded and stripped."""
        ids = []
        for t in row:
            if not self.vocab.is_text(t):
                break
            ids.append(t)
        return self.text.decode(ids).strip()

    def infill_prompt(self, doc: Document, masked: Seq[int], retrieved: Seq[Document] = ()) -> tuple[list[int], list[str]]:
        """Mask the given segment indices of `doc`; returns the prompt (ending in <infill> <mask:0>) and
        the kind ("text"/"image") of each span the model must fill, in order."""
        masked = sorted(set(masked))
        if not masked:
            raise ValueError("infill needs at least one masked segment index")
        if masked[0] < 0 or masked[-1] >= len(doc.segments):
            raise ValueError(f"masked segment indices {masked} out of range for {len(doc.segments)} segments")
        if len(masked) > self.vocab.n_sentinels:
            raise ValueError(f"at most {self.vocab.n_sentinels} masked spans")
        body: list[int] = []
        kinds: list[str] = []
        prev_text = False
        for i, seg in enumerate(doc.segments):
            is_text = isinstance(seg, TextSegment)
            if i in masked:
                body.append(self.vocab.sentinel(len(kinds)))
                kinds.append("text" if is_text else "image")
            elif is_text:
                if prev_text:
                    body.append(self.vocab.brk)
                body += self.text.encode(seg.text)
            else:
                body += self.encode_image_codes(self.image_codes(seg))
            prev_text = is_text and i not in masked
        ids = [*self._prefix(retrieved), self.vocab.doc, *body, self.vocab.doc_end, self.vocab.infill, self.vocab.sentinel(0)]
        return ids, kinds

    def instruction_prompt(self, prompt: Seq, response: str, retrieved: Seq[Document] = ()) -> list[int]:
        """Instruction tuning (CM3Leon sec. 4): the retrieved documents and `<sep>` (when any), `<doc>` the
        prompt's segments (instruction text, input images), then the opener of the response: `<img>` for an
        image, `<break>` for text. The model continues with the response and `</doc>`; training puts the loss
        on that continuation only.

        The prompt is part of the main document, so a generator's copy head (ramm.model.copy_head) points
        only at retrieved documents, not at the input image. Putting the prompt before `<sep>` as a source
        was measured worse on val at equal time (docs/sft.md)."""
        if response not in ("image", "text"):
            raise ValueError(f"response must be 'image' or 'text', not {response!r}")
        ids = [*self._prefix(retrieved), self.vocab.doc]
        ids += [t for _, c in self.segment_chunks(Document("prompt", list(prompt))) for t in c]
        return ids + [self.vocab.img if response == "image" else self.vocab.brk]

    def encode_instruction(self, prompt: Seq, response, retrieved: Seq[Document] = ()) -> Sequence:
        """(prompt segments, response segment) -> ids with weight 0 on the retrieved documents and the prompt
        (`instruction_prompt`) and 1 on the response and the closing `</doc>`."""
        if isinstance(response, TextSegment):
            if not response.text:
                raise ValueError("instruction response text is empty")
            head, rest = self.instruction_prompt(prompt, "text", retrieved), self.text.encode(response.text)
        else:
            head = self.instruction_prompt(prompt, "image", retrieved)
            rest = self.encode_image_codes(self.image_codes(response))[1:]
        rest = [*rest, self.vocab.doc_end]
        return Sequence(head + rest, [0.0] * len(head) + [1.0] * len(rest))

    # ------------------------------------------------------------------ parsing
    def main_part(self, ids: Seq[int]) -> list[int]:
        """The main document's tokens: what follows the last <sep> (retrieved documents come before it)."""
        ids = list(ids)
        if self.vocab.sep in ids:
            ids = ids[len(ids) - ids[::-1].index(self.vocab.sep):]
        return ids

    def parse(self, ids: Seq[int], decode_images: bool = True, doc_id: str = "generated") -> Document:
        """Tokens -> Document; malformed streams give the longest valid prefix and a warning, never an exception."""
        v = self.vocab
        toks = self.unmask(self.main_part([int(t) for t in ids]))
        if toks and toks[0] == v.doc:
            toks = toks[1:]
        segments: list = []
        text: list[int] = []
        problem = None

        def flush_text():
            if text:
                segments.append(TextSegment(self.text.decode(list(text))))
                text.clear()

        i = 0
        while i < len(toks):
            t = toks[i]
            if t == v.doc_end:
                break
            if t == v.brk:
                flush_text()
            elif t == v.img:
                flush_text()
                j = i + 1
                while j < len(toks) and v.is_image(toks[j]) and j - i - 1 < self.tokens_per_image:
                    j += 1
                codes = toks[i + 1:j]
                if len(codes) != self.tokens_per_image or j >= len(toks) or toks[j] != v.img_end:
                    problem = f"image at position {i} has {len(codes)} of {self.tokens_per_image} codes or no </img>"
                    break
                segments.append(self._image_segment(np.asarray(v.code(np.asarray(codes)), dtype=np.int64), decode_images))
                i = j
            elif v.is_text(t):
                text.append(t)
            else:
                problem = f"unexpected token {v.token_name(t)} at position {i}"
                break
            i += 1
        else:
            if toks:
                problem = "no </doc>"
        flush_text()
        if problem:
            log.warning("malformed sequence (%s); kept the longest valid prefix (%d segments)", problem, len(segments))
        return Document(id=doc_id, segments=segments, source="generated")

    def _image_segment(self, codes: np.ndarray, decode: bool) -> ImageSegment:
        if decode and self.image_tokenizer is not None:
            # lazy: torch, only to decode image codes to pixels
            from ramm.tokenizers.image_tokenizer import decode_pixels
            return ImageSegment(pixels=decode_pixels(self.image_tokenizer, codes[None])[0], tokens=codes)
        return ImageSegment(tokens=codes)
