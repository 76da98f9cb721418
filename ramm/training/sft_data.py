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
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.model.batch import pad_batch
from ramm.tokenizers.cm3_format import CM3Format

# Nine wordings per task; the last ones of each list are the held-out templates (`split_templates`). Four
# wordings per task left the held-out one answered as a caption (0% against 62% on category questions): more
# variety in training is what makes an unseen wording read as the same task. These are the tasks every corpus
# has (its captions, images and masks); the wordings of a corpus' own tasks (its edits, style transfer and
# questions, whose pairs `CorpusHooks.sft_tasks` gives) come with them as `CorpusHooks.sft_templates`
# (EmojiBench: ramm_lab.sft_tasks) and are merged over these (`with_templates`).
Templates = Mapping[str, tuple[str, ...]]
TEMPLATES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("draw {caption}", "an image of {caption}", "generate a picture: {caption}",
                      "show me {caption}", "please draw {caption}", "make an image of {caption}",
                      "i want a picture of {caption}", "sketch {caption}", "picture this: {caption}"),
    "caption": ("describe this image", "write a caption for this picture", "caption:", "what does this show?",
                "what is this?", "describe it", "name what you see", "give this image a caption",
                "say what is in the picture"),
    "controlled": ("draw {caption} in this silhouette", "fill this shape: {caption}",
                   "{caption}, with this outline", "make {caption} that fits the mask",
                   "this shape as {caption}", "silhouette -> {caption}", "draw {caption} inside this mask",
                   "{caption} in exactly this shape", "use this silhouette to draw {caption}"),
    "segment": ("segment the foreground", "give the mask of this image", "silhouette of this",
                "which pixels are the object?", "foreground mask", "mask it", "draw its outline filled black",
                "segment this object", "cut out the foreground"),
    "infill": ("",),  # CM3's own format: the masked span is the instruction
}
TASKS = ("text_to_image", "caption", "edit", "style", "controlled", "segment", "infill")  # builders here; plus vqa_<kind> questions
IMAGE_TASKS = ("text_to_image", "edit", "style", "controlled", "segment", "infill")  # the response is an image
TEXT_QUERY_TASKS = ("text_to_image", "controlled", "infill")  # retrieval (when on) is by the caption, else by the input image


def with_templates(corpus: Templates | None) -> dict[str, tuple[str, ...]]:
    """The library's wordings with a corpus' own merged over them (a task both name takes the corpus')."""
    return {**TEMPLATES, **(corpus or {})}


def wordings(templates: Templates, task: str) -> tuple[str, ...]:
    """The task's wordings; a task without any is an error naming it (its corpus gives none)."""
    if task not in templates:
        raise ValueError(f"no instruction templates for SFT task {task!r} (known: {', '.join(templates)}); a "
                         f"corpus' own tasks bring theirs as CorpusHooks.sft_templates")
    return templates[task]


def split_templates(task: str, heldout: int, templates: Templates = TEMPLATES) -> tuple[list[int], list[int]]:
    """(training template indices, held-out ones): the last `heldout` of the task's list are held out
    (a task with a single template keeps it for training)."""
    n = len(wordings(templates, task))
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

    def render(self, template: int, templates: Templates = TEMPLATES) -> tuple[list, object]:
        """(prompt segments, response segment) under the task's template number `template`."""
        text = wordings(templates, self.task)[template].format(**self.slots)
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
    if not task.startswith("vqa_"):
        raise ValueError(f"a question task is named vqa_<kind>, got {task!r}")
    return Item(task, {}, (_image(doc),), TextSegment(answer), doc.id)


def infilling(doc: Document) -> Item:
    """CM3 infilling of a (text, image) document's image: the masked image is the response."""
    return Item("infill", {"caption": doc.text}, (), _image(doc), doc.id)


def build_items(docs: dict[str, Document], pairings: dict[str, list], silhouettes: dict[str, ImageSegment],
                tasks: Sequence[str] | None = None) -> dict[str, list[Item]]:
    """Every task's items over `docs` (id -> Document with an image). `pairings`: "edit" / "style" ->
    [(source id, target id, slots)], "vqa_<kind>" -> [(id, answer)]; pairs naming a document outside
    `docs` are skipped (they belong to another split). `silhouettes`: id -> mask ImageSegment. `tasks`
    (None: TASKS and every vqa_<kind> of `pairings`) picks the tasks built."""
    if tasks is None:
        tasks = (*TASKS, *(t for t in pairings if t.startswith("vqa_")))
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


def encode_item(fmt: CM3Format, item: Item, template: int, retrieved: Sequence[Document] = (),
                templates: Templates = TEMPLATES):
    """An item as the token sequence the generator trains on: (ids, weights), weights 0 on the prompt and
    on the `retrieved` documents prepended to it (RA-CM3's format: documents, <sep>, the example)."""
    if item.task == "infill":
        doc = Document(item.source, [TextSegment(item.slots["caption"]), item.response])
        head, _ = fmt.infill_prompt(doc, [1], retrieved)
        rest = fmt.encode_image_codes(fmt.image_codes(item.response)) + [fmt.vocab.eos]
        return head + rest, [0.0] * len(head) + [1.0] * len(rest)
    prompt, response = item.render(template, templates)
    seq = fmt.encode_instruction(prompt, response, retrieved)
    return seq.ids, seq.weights


Retrieve = Callable[[Item], Sequence[Document]]


def encode_within(fmt: CM3Format, item: Item, template: int, retrieved: Sequence[Document] = (),
                  max_len: int | None = None, templates: Templates = TEMPLATES):
    """`encode_item` within the model's context: retrieved documents are dropped from the last until the
    example fits (as in pretraining); an example too long without any is an error naming it."""
    retrieved = list(retrieved)
    while True:
        ids, weights = encode_item(fmt, item, template, retrieved, templates)
        if max_len is None or len(ids) <= max_len:
            return ids, weights
        if not retrieved:
            raise ValueError(f"{item.task} example of {item.source} has {len(ids)} tokens, over the model's {max_len}")
        retrieved.pop()


class SFTDataset(torch.utils.data.Dataset):
    """Samples a task by the mixture weights, an item of it and one of its training templates, per index."""

    def __init__(self, items: dict[str, list[Item]], mixture: dict[str, float], fmt: CM3Format, heldout: int = 1,
                 seed: int = 0, max_len: int | None = None, retrieve: Retrieve | None = None,
                 replay=None, replay_weight: float = 0.0, templates: Templates = TEMPLATES):
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
        self.wordings = templates
        self.templates = {t: split_templates(t, heldout, templates)[0] for t in self.tasks}
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
        return encode_within(self.fmt, item, template, self.retrieve(item) if self.retrieve else (), self.max_len,
                             self.wordings)

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
