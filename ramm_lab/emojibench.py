"""EmojiBench: the built-in corpus (protocol in docs/emojibench.md) as the lab reads it.

A built folder holds webdataset-style tar shards plus manifest.jsonl and meta.json (`ramm_lab.emojibench_build`
makes it). One document per (concept, style): "<style> emoji: <name>" then the emoji image; each skin-tone
variant is a document of its own. Metadata: `concept` (the document's own unified code), `base` (its default
entry's code; `concept` itself for the default), `tone` ("" or "dark" or "light, dark"), `has_tones` (the
base has variants: the "variants" track, else "cross-style"). Splits are by base concept, so every variant
shares its base's split. The foreground mask is KEY.mask.png beside KEY.png (`load_masks`). Besides the
reader, what the lab knows of the corpus' names: captions, name queries, pseudo-names, skin-tone siblings,
SFT pairings.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ramm.config import SPLITS
from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment, decode_image_bytes

log = logging.getLogger(__name__)

STYLES = ("google", "twitter")  # the art sets (emojibench_build.TARBALL_SHA256 pins their npm packages)
FORMAT = 3  # bump when the documents change, so that reruns rebuild older outputs (3: tone variants, masks)
MANIFEST, META = "manifest.jsonl", "meta.json"
DOC_KEYS = ("concept", "base", "tone", "has_tones", "style", "split", "name", "short_names", "category",
            "subcategory")
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
MATCH_KEY = "concept"  # documents of one concept (its other style) are one answer: CorpusHooks.match_key
TRACKS = ("variants", "cross-style")  # documents of concepts with skin tones (default tone included) / all others
_SHARD_RE = re.compile(r"^\d{5}\.tar$")
_DOC_JSON_RE = re.compile(rb"^[a-z]+-[0-9a-f]+(-[0-9a-f]+)*\.json$")


class IncompleteEmojiBench(FileNotFoundError):
    """The folder holds part of an EmojiBench build (shards without manifest.jsonl + meta.json)."""


def track(metadata: dict) -> str:
    """The evaluation track of an EmojiBench document: "variants" when its base concept has skin tones
    (same-style siblings are in the memory), else "cross-style" (only the other style is)."""
    return TRACKS[0] if metadata.get("has_tones") else TRACKS[1]


def caption(style: str, name: str) -> str:
    """The document text; a variant's name already carries its tones (`variant_name`)."""
    return f"{style} emoji: {name.lower()}"


_STYLE_PREFIX = re.compile(r"^\s*\w+\s+emoji\s*:\s*", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]")  # a character the caption metrics keep (ramm.evaluation.captioning.tokenize)


def strip_style_prefix(text: str) -> str:
    """"twitter emoji: japan flag" -> "japan flag": EmojiBench references are names, not document texts."""
    return _STYLE_PREFIX.sub("", text, count=1)


def name_of(doc: Document) -> str:
    """The concept's name without the style: metadata 'name', else the caption after its first ': '."""
    name = doc.metadata.get("name")
    return str(name).lower() if name else doc.text.split(": ", 1)[-1]


def name_query(doc: Document) -> str:
    """The style-free text view "emoji: <name>" that the lab's retriever also trains on."""
    return f"emoji: {name_of(doc)}"


def emoji_references(metadata: dict) -> list[str]:
    """Caption references of a document: its name and its short names (docs/emojibench.md)."""
    refs = [metadata.get("name", "")] + list(metadata.get("short_names", []))
    refs = [r for r in refs if _WORD.search(r.lower())]
    if not refs:
        raise ValueError(f"no caption reference (name or short_names) in metadata {metadata}")
    return refs


def pseudo_queries(doc: Document) -> list[str]:
    """Extra retrieval queries: the name without the style and the short names ("flag_jp" -> "flag jp")."""
    meta = doc.metadata or {}
    out = [meta["name"].lower()] if meta.get("name") else []
    out += [s.replace("_", " ").replace("-", " ") for s in meta.get("short_names", [])]
    return list(dict.fromkeys(q for q in out if q.strip() and q != doc.text))


RECOGNITION_KEYS = {"label_key": "concept", "group_key": "style"}  # ramm.evaluation.recognition.Recognizer's


def is_flag(doc: Document) -> bool:
    """A flag concept (the rare entities the heldout split is built around)."""
    return doc.metadata.get("category") == "Flags"



# ---------------------------------------------------------------------------------------------- RA training
# What the generator recipe is given when its corpus is EmojiBench (ramm.training.ra_data takes them as
# callables): the same-style siblings the diversity rule must keep, and the pseudo-names.
_TONE_SUFFIX = re.compile(r"(, [a-z-]+ skin tone)+$")


def sibling_key(doc: Document):
    """(base concept, style): a document's other skin tones in its own art style share it (None: no base)."""
    base = doc.metadata.get("base")
    return None if base is None else (base, doc.metadata.get("style"))


def base_of(doc: Document):
    """The document's base concept (its default skin tone), else its concept (None if neither)."""
    return doc.metadata.get("base", doc.metadata.get("concept"))


def base_name(name: str) -> str:
    """"waving hand sign, dark skin tone" -> "waving hand sign": the part of a name its skin-tone
    variants share (a name without a tone suffix is returned as is)."""
    return _TONE_SUFFIX.sub("", name)


def name_words(docs: Iterable[Document]) -> list[str]:
    """Every word of the documents' concept names (`metadata['name']`), once per concept, sorted: the
    pseudo-name pool, where a word is as frequent as among real names ("face", "flag", "with" often)."""
    names = {(d.metadata.get("base", d.metadata.get("concept", d.id)), base_name(str(d.metadata.get("name", ""))))
             for d in docs}
    return sorted(w for _, name in names for w in name.split())


def rename_concept(main: Document, retrieved: list[Document], words: list[str],
                   rng: np.random.Generator) -> tuple[Document, list[Document]]:
    """Give the main document's concept a made-up name of as many words, drawn from `words`, in the main
    document and in every retrieved document of the same concept or base concept (its leave-one-out
    partner, its other skin tones); tone words are kept, only the shared base name changes.

    Why: on training concepts the memorised name predicts the image, so plain RA training never pays the
    model for reading its retrieved documents; a heldout concept is a name never trained on whose image
    is only in the retrieved documents. A renamed concept is exactly that: new words (each a known word,
    in a new combination, as a heldout name is), shared by main and relatives, and only their images
    tell what to draw (and only their text can give the name to a caption). Our addition, not in the
    papers. Made-up spellings ("vanoteli", rare BPE pieces like a heldout name's) instead of train-name
    words for half the words did not help (val exact cross-style captions 16% vs 20%), so names stay
    train-name words. Returned unchanged: a document without its name in its text, or one that retrieved
    no relative."""
    name, base = main.metadata.get("name"), base_of(main)
    if not name or not words or name not in main.text or base is None or not any(base_of(r) == base for r in retrieved):
        return main, list(retrieved)
    old = base_name(name)
    pseudo = " ".join(words[int(rng.integers(len(words)))] for _ in old.split())

    def rename(d: Document) -> Document:
        segs = [TextSegment(s.text.replace(old, pseudo)) if isinstance(s, TextSegment) else s for s in d.segments]
        new_name = str(d.metadata.get("name", "")).replace(old, pseudo)
        return Document(id=d.id, segments=segs, source=d.source, metadata={**d.metadata, "name": new_name})

    return rename(main), [rename(r) if base_of(r) == base else r for r in retrieved]


def pseudo_namer(docs: Iterable[Document]) -> Callable[[Document, list[Document], np.random.Generator],
                                                       tuple[Document, list[Document]]]:
    """`rename_concept` with the names of `docs` (the training documents) as its word pool."""
    words = name_words(docs)
    return lambda main, retrieved, rng: rename_concept(main, retrieved, words, rng)


def sft_pairings(docs: Iterable[Document]) -> dict[str, list[tuple]]:
    """EmojiBench's instruction-tuning pairs (ramm.training.sft_data.build_items): "edit" -> every ordered
    pair of skin-tone variants of one base concept in one style, (source, target, {"tone": target's tone
    or "default"}); "style" -> (one style's document, the other style's of the same concept,
    {"style": target style}); "vqa_category" / "vqa_tone" / "vqa_country" -> (id, answer): the category,
    the tone ("default" for the default of a concept with tones), a country flag's country."""
    docs = list(docs)
    groups: dict[tuple, list[Document]] = {}
    concepts: dict[str, list[Document]] = {}
    for d in docs:
        m = d.metadata
        if m.get("has_tones"):
            groups.setdefault((m["base"], m["style"]), []).append(d)
        concepts.setdefault(m.get("concept", d.id), []).append(d)
    tone = lambda d: d.metadata.get("tone") or "default"  # noqa: E731
    out: dict[str, list[tuple]] = {
        "edit": [(a.id, b.id, {"tone": tone(b)}) for g in groups.values() for a in g for b in g if tone(a) != tone(b)],
        "style": [(a.id, b.id, {"style": b.metadata["style"]}) for g in concepts.values() for a in g for b in g
                  if a.metadata.get("style") != b.metadata.get("style")],
        "vqa_category": [(d.id, d.metadata["category"].lower()) for d in docs if d.metadata.get("category")],
        "vqa_tone": [(d.id, tone(d)) for d in docs if d.metadata.get("has_tones")],
        "vqa_country": [(d.id, name_of(d).removesuffix(" flag")) for d in docs
                        if d.metadata.get("subcategory") == "country-flag"],
    }
    return out


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------------- read
def read_manifest(root: str | Path) -> list[dict]:
    """The manifest rows of a complete build; IncompleteEmojiBench for a half-built folder (shards, or a
    manifest, without meta.json: a build was interrupted or is running), FileNotFoundError for no build."""
    root = Path(root)
    path = root / MANIFEST
    if not (path.is_file() and (root / META).is_file()):
        shards = _shards(root)
        have = [n for n in (MANIFEST, META) if (root / n).is_file()] + ([f"{len(shards)} shard(s)"] if shards else [])
        if have:
            lacks = " + ".join(n for n in (MANIFEST, META) if not (root / n).is_file())
            raise IncompleteEmojiBench(f"{root} is an incomplete EmojiBench build (has {', '.join(have)}, lacks "
                                       f"{lacks}): the build was interrupted or is still running; finish it with "
                                       f"`ramm data emojibench --out {root}`")
        raise FileNotFoundError(f"{path} not found: build EmojiBench with `ramm data emojibench --out {root}`")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _shards(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if _SHARD_RE.match(p.name)) if root.is_dir() else []


def _check(values, allowed, what) -> set[str] | None:
    if values is None:
        return None
    values = (values,) if isinstance(values, str) else tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {', '.join(allowed)}")
    return set(values)


def iter_emojibench(root: str | Path, splits: Iterable[str] | str | None = None,
                    styles: Iterable[str] | str | None = None, verify: bool = True) -> Iterator[Document]:
    """Stream the documents of the chosen splits/styles in manifest order; each image checked against its sha256."""
    root = Path(root)
    want_splits, want_styles = _check(splits, SPLITS, "split(s)"), _check(styles, STYLES, "style(s)")
    shard, data = None, b""
    for r in read_manifest(root):
        if (want_splits and r["split"] not in want_splits) or (want_styles and r["style"] not in want_styles):
            continue
        if r["shard"] != shard:
            shard, data = r["shard"], _read_shard(root / r["shard"])
        png = _image_bytes(data, r, verify)
        if png is None:
            raise BadItem("checksum_mismatch", r["key"], f"{root / shard}; rebuild with `ramm data emojibench`")
        meta = {k: r[k] for k in DOC_KEYS if k in r}
        yield Document(id=r["key"], segments=[TextSegment(r["caption"]),
                                              ImageSegment(pixels=decode_image_bytes(png, r["key"]))],
                       source="emojibench", metadata=meta)


def load_emojibench(root: str | Path, splits: Iterable[str] | str | None = None,
                    styles: Iterable[str] | str | None = None, verify: bool = True) -> list[Document]:
    """All documents of the chosen splits (None = all) and styles (None = all), in manifest order."""
    return list(iter_emojibench(root, splits, styles, verify))


def _read_shard(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild with `ramm data emojibench --out {path.parent}`")
    return path.read_bytes()


def _image_bytes(shard: bytes, row: dict, verify: bool = True, part: str = "") -> bytes | None:
    """The row's PNG (part "mask_": its mask PNG) sliced from its shard, or None when it is cut off or
    (verify) fails its sha256."""
    offset, size = row[f"{part}offset"], row[f"{part}size"]
    png = shard[offset:offset + size]
    if len(png) != size or (verify and _sha256(png) != row[f"{part}sha256"]):
        return None
    return png


def load_masks(root: str | Path, ids: Iterable[str] | None = None, verify: bool = True) -> dict[str, np.ndarray]:
    """Foreground masks (the source alpha, resized like the image): document id -> uint8 (H, W), 0 =
    transparent, 255 = opaque; `ids` None = every document. Unknown ids raise KeyError."""
    root = Path(root)
    rows = read_manifest(root)
    by_key = {r["key"]: r for r in rows}
    want = set(by_key) if ids is None else set([ids] if isinstance(ids, str) else ids)
    unknown = sorted(want - set(by_key))
    if unknown:
        raise KeyError(f"no EmojiBench document(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} in {root}")
    out, shard, data = {}, None, b""
    for r in rows:  # manifest order: each shard read once
        if r["key"] not in want:
            continue
        if "mask_offset" not in r:
            raise ValueError(f"{root} was built without masks (format < {FORMAT}); rebuild with "
                             f"`ramm data emojibench --out {root}`")
        if r["shard"] != shard:
            shard, data = r["shard"], _read_shard(root / r["shard"])
        png = _image_bytes(data, r, verify, part="mask_")
        if png is None:
            raise BadItem("checksum_mismatch", f"{r['key']}.mask.png",
                          f"{root / shard}; rebuild with `ramm data emojibench`")
        try:
            with Image.open(io.BytesIO(png)) as img:
                out[r["key"]] = np.asarray(img.convert("L"), dtype=np.uint8).copy()
        except Exception as e:  # PIL raises many types for corrupt data
            raise BadItem("corrupt_image", f"{r['key']}.mask.png", f"{type(e).__name__}: {e}") from None
    return out


def verify_emojibench(root: str | Path) -> list[str]:
    """Problems found (empty when every manifest row's image and mask is present with the right sha256)."""
    root = Path(root)
    try:
        rows = read_manifest(root)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"manifest: {e}"]
    problems, shards = [], {}
    for r in rows:
        if r["shard"] not in shards:
            path = root / r["shard"]
            shards[r["shard"]] = path.read_bytes() if path.exists() else b""
        if _image_bytes(shards[r["shard"]], r) is None:
            problems.append(f"{r['key']}: missing or changed in {r['shard']}")
        elif "mask_offset" in r and _image_bytes(shards[r["shard"]], r, part="mask_") is None:
            problems.append(f"{r['key']}.mask.png: missing or changed in {r['shard']}")
    return problems


def is_emojibench_dir(path: str | Path) -> bool:
    """An EmojiBench folder, complete or not: manifest.jsonl + meta.json, or part of a build (one of them,
    or numbered shards starting with an EmojiBench document). A half-built one is thus sent to the
    EmojiBench reader, which reports it as incomplete, instead of being read as plain webdataset shards."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / META).is_file():
        return True
    shards = _shards(path)
    if not shards:
        return False
    with open(shards[0], "rb") as f:
        name = f.read(100).rstrip(b"\0")  # the first member's name: ustar header bytes 0-99
    return bool(_DOC_JSON_RE.match(name))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
