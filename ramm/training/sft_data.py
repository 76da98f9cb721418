"""Instruction-tuning data (CM3Leon sec. 4, its second stage): interleaved (prompt, response) examples
built from any corpus's documents, with the loss on the response only.

Tasks (CM3Leon's names): text -> image, captioning, text-guided image editing, style transfer
(image-to-image grounded generation), silhouette-controlled generation, segmentation, questions about
an image (VQA-style), and CM3 infilling. The builders here are generic: the caller supplies which
documents pair up (an edit's source and target, a question's answer) and the foreground masks; the
EmojiBench pairings live in the lab (`ramm_lab.emojibench.sft_pairings`, reached through `CorpusHooks.sft_tasks`).

An item holds no wording: a template is drawn per example, from the task's training templates only.
The last `heldout` templates of every task never reach training (`SFTDataset`), so evaluation can
measure wording the model never saw. Examples are deterministic in (seed, epoch, index), so resume is exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.model.batch import pad_batch
from ramm.tokenizers.cm3_format import CM3Format

# Nine wordings per task; the last ones of each list are the held-out templates (`split_templates`). Four
# wordings per task left the held-out one answered as a caption (0% against 62% on category questions): more
# variety in training is what makes an unseen wording read as the same task.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("draw {caption}", "an image of {caption}", "generate a picture: {caption}",
                      "show me {caption}", "please draw {caption}", "make an image of {caption}",
                      "i want a picture of {caption}", "sketch {caption}", "picture this: {caption}"),
    "caption": ("describe this image", "write a caption for this picture", "caption:", "what does this show?",
                "what is this?", "describe it", "name what you see", "give this image a caption",
                "say what is in the picture"),
    "edit": ("make the skin tone {tone}", "change the skin tone to {tone}", "use a {tone} skin tone",
             "edit: skin tone {tone}", "recolour the skin {tone}", "skin tone: {tone}",
             "same emoji, {tone} skin tone", "switch to the {tone} skin tone", "give it the {tone} skin tone"),
    "style": ("draw it in the {style} style", "redraw this as a {style} emoji", "convert to {style} style",
              "the {style} version of this", "{style} style, please", "same emoji in {style} art",
              "restyle this: {style}", "how would {style} draw this?", "render this like {style} does"),
    "controlled": ("draw {caption} in this silhouette", "fill this shape: {caption}",
                   "{caption}, with this outline", "make {caption} that fits the mask",
                   "this shape as {caption}", "silhouette -> {caption}", "draw {caption} inside this mask",
                   "{caption} in exactly this shape", "use this silhouette to draw {caption}"),
    "segment": ("segment the foreground", "give the mask of this image", "silhouette of this",
                "which pixels are the object?", "foreground mask", "mask it", "draw its outline filled black",
                "segment this emoji", "cut out the foreground"),
    "vqa_category": ("what category is this?", "which category does this belong to?", "category?",
                     "name the category of this image", "what is the category of this emoji?",
                     "emoji category:", "which group is this emoji in?", "tell me its category",
                     "what kind of thing is this?"),
    "vqa_tone": ("what skin tone is this?", "which skin tone is shown?", "skin tone?",
                 "tell me the skin tone", "what is the skin colour?", "skin tone of this emoji:",
                 "which tone is the skin?", "name the skin tone", "how dark is the skin?"),
    "vqa_country": ("which country is this flag?", "whose flag is this?", "country?",
                    "name the country of this flag", "what country is this?", "flag of which country?",
                    "which nation does this flag stand for?", "tell me the country",
                    "this flag belongs to which country?"),
    "infill": ("",),  # CM3's own format: the masked span is the instruction
}
TASKS = tuple(TEMPLATES)
IMAGE_TASKS = ("text_to_image", "edit", "style", "controlled", "segment", "infill")  # the response is an image
TEXT_QUERY_TASKS = ("text_to_image", "controlled", "infill")  # retrieval (when on) is by the caption, else by the input image


def split_templates(task: str, heldout: int) -> tuple[list[int], list[int]]:
    """(training template indices, held-out ones): the last `heldout` of the task's list are held out
    (a task with a single template keeps it for training)."""
    n = len(TEMPLATES[task])
    cut = n - heldout if n > heldout else n
    return list(range(cut)), list(range(cut, n))


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A foreground mask (uint8 (H, W), 255 = opaque) -> uint8 (H, W, 3) black silhouette on white: the
    image the VQ tokenizer encodes for segmentation and silhouette-controlled generation."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    return np.repeat(np.where(mask >= 128, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def image_to_mask(pixels: np.ndarray) -> np.ndarray:
    """A generated silhouette (uint8 (H, W, 3)) -> bool (H, W) foreground: dark pixels."""
    return np.asarray(pixels, dtype=np.float32).mean(axis=2) < 128


def mask_iou(pred: np.ndarray, mask: np.ndarray) -> float:
    """IoU of a bool prediction with a uint8 mask (>= 128 = foreground); 1.0 when both are empty."""
    true = np.asarray(mask) >= 128
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


@dataclass(frozen=True)
class Item:
    """One instruction example before its wording: template slots, input images, the response."""

    task: str
    slots: dict = field(default_factory=dict)  # template fields ({caption}, {tone}, {style})
    images: tuple = ()  # input ImageSegments, after the instruction text
    response: object = None  # TextSegment or ImageSegment
    source: str = ""  # the id of the document the example is about (named in errors)
    target: str = ""  # the id of the response's document when it is another one (edit, style): never retrieved

    def render(self, template: int) -> tuple[list, object]:
        """(prompt segments, response segment) under the task's template number `template`."""
        text = TEMPLATES[self.task][template].format(**self.slots)
        return ([TextSegment(text)] if text else []) + list(self.images), self.response


def _image(doc: Document) -> ImageSegment:
    if not doc.images:
        raise ValueError(f"document {doc.id} has no image")
    return doc.images[0]


def text_to_image(doc: Document) -> Item:
    return Item("text_to_image", {"caption": doc.text}, (), _image(doc), doc.id)


def captioning(doc: Document) -> Item:
    return Item("caption", {}, (_image(doc),), TextSegment(doc.text), doc.id)


def paired(task: str, source: Document, target: Document, slots: dict) -> Item:
    """Image -> image (editing, style transfer): the source's image and an instruction -> the target's."""
    return Item(task, dict(slots), (_image(source),), _image(target), source.id, target.id)


def controlled(doc: Document, silhouette: ImageSegment) -> Item:
    return Item("controlled", {"caption": doc.text}, (silhouette,), _image(doc), doc.id)


def segmentation(doc: Document, silhouette: ImageSegment) -> Item:
    return Item("segment", {}, (_image(doc),), silhouette, doc.id)


def question(task: str, doc: Document, answer: str) -> Item:
    if task not in TEMPLATES or not task.startswith("vqa_"):
        raise ValueError(f"unknown question task {task!r}; known: {[t for t in TEMPLATES if t.startswith('vqa_')]}")
    return Item(task, {}, (_image(doc),), TextSegment(answer), doc.id)


def infilling(doc: Document) -> Item:
    """CM3 infilling of a (text, image) document's image: the masked image is the response."""
    return Item("infill", {"caption": doc.text}, (), _image(doc), doc.id)


def build_items(docs: dict[str, Document], pairings: dict[str, list], silhouettes: dict[str, ImageSegment],
                tasks: Sequence[str] = TASKS) -> dict[str, list[Item]]:
    """Every task's items over `docs` (id -> Document with an image). `pairings`: "edit" / "style" ->
    [(source id, target id, slots)], "vqa_<kind>" -> [(id, answer)]; pairs naming a document outside
    `docs` are skipped (they belong to another split). `silhouettes`: id -> mask ImageSegment."""
    out: dict[str, list[Item]] = {t: [] for t in tasks}
    for d in docs.values():
        for task, make in (("text_to_image", text_to_image), ("caption", captioning), ("infill", infilling)):
            if task in out:
                out[task].append(make(d))
        if d.id in silhouettes:
            if "controlled" in out:
                out["controlled"].append(controlled(d, silhouettes[d.id]))
            if "segment" in out:
                out["segment"].append(segmentation(d, silhouettes[d.id]))
    for task in ("edit", "style"):
        if task in out:
            out[task] = [paired(task, docs[s], docs[t], slots) for s, t, slots in pairings.get(task, [])
                         if s in docs and t in docs]
    for task in out:
        if task.startswith("vqa_"):
            out[task] = [question(task, docs[i], a) for i, a in pairings.get(task, []) if i in docs]
    return out


def encode_item(fmt: CM3Format, item: Item, template: int, retrieved: Sequence[Document] = ()):
    """An item as the token sequence the generator trains on: (ids, weights), weights 0 on the prompt and
    on the `retrieved` documents prepended to it (RA-CM3's format: documents, <sep>, the example)."""
    if item.task == "infill":
        doc = Document(item.source, [TextSegment(item.slots["caption"]), item.response])
        head, _ = fmt.infill_prompt(doc, [1], retrieved)
        rest = fmt.encode_image_codes(fmt.image_codes(item.response)) + [fmt.vocab.eos]
        return head + rest, [0.0] * len(head) + [1.0] * len(rest)
    prompt, response = item.render(template)
    seq = fmt.encode_instruction(prompt, response, retrieved)
    return seq.ids, seq.weights


Retrieve = Callable[[Item], Sequence[Document]]


def encode_within(fmt: CM3Format, item: Item, template: int, retrieved: Sequence[Document] = (),
                  max_len: int | None = None):
    """`encode_item` within the model's context: retrieved documents are dropped from the last until the
    example fits (as in pretraining); an example too long without any is an error naming it."""
    retrieved = list(retrieved)
    while True:
        ids, weights = encode_item(fmt, item, template, retrieved)
        if max_len is None or len(ids) <= max_len:
            return ids, weights
        if not retrieved:
            raise ValueError(f"{item.task} example of {item.source} has {len(ids)} tokens, over the model's {max_len}")
        retrieved.pop()


class SFTDataset(torch.utils.data.Dataset):
    """Samples a task by the mixture weights, an item of it and one of its training templates, per index."""

    def __init__(self, items: dict[str, list[Item]], mixture: dict[str, float], fmt: CM3Format, heldout: int = 1,
                 seed: int = 0, max_len: int | None = None, retrieve: Retrieve | None = None,
                 replay=None, replay_weight: float = 0.0):
        self.tasks = [t for t, w in mixture.items() if w > 0 and items.get(t)]
        if not self.tasks:
            raise ValueError(f"no task has both a positive mixture weight and items: "
                             f"{ {t: (w, len(items.get(t, []))) for t, w in mixture.items()} }")
        w = np.array([mixture[t] for t in self.tasks], dtype=np.float64)
        self.p = w / w.sum()
        # pretraining replay (`replay`: a ramm.training.ra_data.RADataset): whole micro-batches of it, so its
        # long retrieval-augmented sequences never pad the short instruction ones
        self.replay = replay if replay is not None and replay_weight > 0 else None
        self.p_replay = replay_weight / (replay_weight + w.sum()) if self.replay is not None else 0.0
        self.items, self.fmt, self.seed, self.max_len, self.retrieve = items, fmt, seed, max_len, retrieve
        self.templates = {t: split_templates(t, heldout)[0] for t in self.tasks}
        self.size = sum(len(items[t]) for t in self.tasks)
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self, index: int, epoch: int | None = None) -> tuple[Item, int]:
        """The (item, template) of sample `index` in `epoch`: a pure function of (seed, epoch, index)."""
        rng = np.random.default_rng((self.seed, self.epoch if epoch is None else epoch, index))
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.p))]
        item = self.items[task][int(rng.integers(len(self.items[task])))]
        return item, self.templates[task][int(rng.integers(len(self.templates[task])))]

    def __getitem__(self, index: int):
        return self.example(index)

    def example(self, index: int, epoch: int | None = None):
        item, template = self.draw(index, epoch)
        return encode_within(self.fmt, item, template, self.retrieve(item) if self.retrieve else (), self.max_len)

    def batch_items(self, samples: Sequence[tuple[int, int]]) -> list:
        """A micro-batch of (epoch, index) samples: with chance p_replay all of them pretraining replay, else
        instruction examples; the draw is a function of the samples, so resume is exact."""
        if self.replay is not None and np.random.default_rng((self.seed, 2, *samples[0])).random() < self.p_replay:
            return self.replay.batch_items([(e, i % len(self.replay)) for e, i in samples])
        return [self.example(i, e) for e, i in samples]

    def collate(self, items) -> dict[str, torch.Tensor]:
        """Instruction examples: loss on the response only, the prompt's targets ignored (weights 0 / 1 select).
        Replay batches keep pretraining's per-token weights (alpha on retrieved documents)."""
        weighted = any(w not in (0.0, 1.0) for _, ws in items for w in ws)
        return pad_batch(items, self.fmt.vocab.pad, loss_weights=weighted)
