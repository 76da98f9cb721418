"""Loaders for users' own corpora: COCO captions JSON, JSONL/CSV + image folder, webdataset tar shards.

Every loader streams (images are read one item at a time, so a 10M-pair corpus never sits in memory)
and never crashes half way on bad input: a corrupt or missing image, an empty or non-UTF-8 caption, a
malformed row or an image over the pixel limit is skipped and counted by reason (`Corpus.skips`);
with `strict=True` the first one raises `BadItem` naming the item's id and path.
"""
from __future__ import annotations

import csv
import json
import logging
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment, decode_image_bytes
from ramm.corpus.skips import SkipCounter

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_path", "file_name", "filename", "filepath", "path")
CAPTION_KEYS = ("caption", "text")
ID_KEYS = ("id", "key")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")

Reader = Callable[[SkipCounter], Iterator[Document]]


class Corpus:
    """A re-iterable stream of Documents; each pass counts its good and bad items in `skips`."""

    def __init__(self, kind: str, path: Path, reader: Reader, strict: bool = False):
        self.kind, self.path, self.strict = kind, path, strict
        self._reader = reader
        self.skips = SkipCounter(strict)

    def __iter__(self) -> Iterator[Document]:
        self.skips = skips = SkipCounter(self.strict)
        for doc in self._reader(skips):
            skips.ok()
            yield doc
        log.info("%s (%s): %s", self.path, self.kind, skips.summary())

    def __repr__(self) -> str:
        return f"Corpus({self.kind!r}, {str(self.path)!r})"


def open_corpus(path: str | Path, strict: bool = False, images: str | Path | None = None,
                image_size: int | None = None) -> Corpus:
    """Pick the loader from the path.

    An EmojiBench folder (manifest.jsonl + meta.json); a folder of .tar shards or one .tar/.tar.gz/.tgz
    (webdataset / img2dataset layout); a .json COCO captions file; a .jsonl, .csv or .tsv file.
    images: folder that relative image paths start from (default: the file's folder).
    image_size: resize every image to this square side (default: keep each image's size).
    """
    from ramm.corpus.emojibench import is_emojibench_dir, iter_emojibench

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(images) if images is not None else (path if path.is_dir() else path.parent)
    if path.is_dir():
        if is_emojibench_dir(path):
            return Corpus("emojibench", path, lambda skips: iter_emojibench(path), strict)
        shards = sorted(p for p in path.iterdir() if p.name.endswith(TAR_SUFFIXES))
        if not shards:
            raise ValueError(f"{path}: folder holds neither EmojiBench (manifest.jsonl + meta.json) nor .tar shards")
        return Corpus("webdataset", path, lambda skips: read_webdataset(shards, skips, image_size), strict)
    name = path.name.lower()
    if name.endswith(TAR_SUFFIXES):
        return Corpus("webdataset", path, lambda skips: read_webdataset([path], skips, image_size), strict)
    if name.endswith(".jsonl"):
        return Corpus("jsonl", path, lambda skips: read_jsonl(path, root, skips, image_size), strict)
    if name.endswith((".csv", ".tsv")):
        return Corpus("csv", path, lambda skips: read_csv(path, root, skips, image_size), strict)
    if name.endswith(".json"):
        return Corpus("coco", path, lambda skips: read_coco(path, root, skips, image_size), strict)
    raise ValueError(f"{path}: unknown corpus format; expected an EmojiBench folder, .tar shards, COCO .json, "
                     f".jsonl, .csv or .tsv")


# ---------------------------------------------------------------------------------------------- shared
def _caption(text, item: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadItem("empty_caption", item, where)
    return text.strip()


def _image_file(root: Path, rel, item: str, size: int | None) -> tuple[ImageSegment, str]:
    if not isinstance(rel, str) or not rel:
        raise BadItem("malformed_row", item, f"no image path ({rel!r})")
    path = root / rel
    if not path.is_file():
        raise BadItem("missing_file", item, str(path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadItem("unreadable_file", item, f"{path}: {e.strerror}") from None
    return ImageSegment(pixels=decode_image_bytes(data, f"{item} ({path})", size)), str(path)


def _pick(row: dict, keys: tuple[str, ...]):
    return next((row[k] for k in keys if k in row), None)


def _pair(row: dict, root: Path, item: str, where: str, source: str, size: int | None) -> Document:
    """A JSONL/CSV row -> Document(caption, image); `item` is the row's id."""
    text = _caption(_pick(row, CAPTION_KEYS), item, where)
    img, img_path = _image_file(root, _pick(row, IMAGE_KEYS), item, size)
    meta = {k: v for k, v in row.items() if k not in CAPTION_KEYS + IMAGE_KEYS + ID_KEYS}
    return Document(id=item, segments=[TextSegment(text), img], source=source, metadata=dict(meta, image=img_path))


# ---------------------------------------------------------------------------------------------- JSONL / CSV
def read_jsonl(path: Path, root: Path, skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """One JSON object per line: {"image": relative path, "caption": str, "id": optional}."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise BadItem("bad_encoding", where, f"not UTF-8: {e.reason}") from None
                except json.JSONDecodeError as e:
                    raise BadItem("malformed_row", where, f"bad JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise BadItem("malformed_row", where, f"expected an object, got {type(row).__name__}")
                item = str(_pick(row, ID_KEYS) or f"{path.stem}-{lineno}")
                yield _pair(row, root, item, where, str(path), size)
            except BadItem as e:
                skips.skip(e)


def read_csv(path: Path, root: Path, skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """A header row naming at least an image column and a caption column (.tsv: tab-separated)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # surrogateescape keeps reading past non-UTF-8 bytes so that only the bad row is skipped
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None or not set(header) & set(IMAGE_KEYS) or not set(header) & set(CAPTION_KEYS):
            raise ValueError(f"{path}: header {header} needs an image column (one of {', '.join(IMAGE_KEYS)}) "
                             f"and a caption column (one of {', '.join(CAPTION_KEYS)})")
        while True:
            where = f"{path}:{reader.line_num + 1}"
            try:
                try:
                    fields = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise BadItem("malformed_row", where, str(e)) from None
                if not any(fields):
                    continue
                if len(fields) != len(header):
                    raise BadItem("malformed_row", where, f"{len(fields)} fields, header has {len(header)}")
                try:
                    "".join(fields).encode("utf-8")
                except UnicodeEncodeError:
                    raise BadItem("bad_encoding", where, "not UTF-8") from None
                row = dict(zip(header, fields))
                item = str(_pick(row, ID_KEYS) or f"{path.stem}-{reader.line_num}")
                yield _pair(row, root, item, where, str(path), size)
            except BadItem as e:
                skips.skip(e)


# ---------------------------------------------------------------------------------------------- COCO
def read_coco(path: Path, root: Path, skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """COCO captions (captions_train2017.json): one document per image, text = its first caption.

    All captions go to metadata["captions"] (references for CIDEr). The JSON index itself is loaded
    whole (COCO is one JSON document); images stream from `root`/file_name.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable COCO captions JSON ({e})") from None
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"{path}: not COCO captions JSON (needs 'images' and 'annotations' lists)")
    captions: dict = {}
    for i, ann in enumerate(data["annotations"]):
        try:
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise BadItem("malformed_row", f"{path}:annotations[{i}]", f"no image_id in {ann!r:.80}")
            captions.setdefault(ann["image_id"], []).append(
                _caption(ann.get("caption"), f"coco-{ann['image_id']}", f"{path}:annotations[{i}]"))
        except BadItem as e:
            skips.skip(e)
    for i, im in enumerate(data.pop("images")):
        where = f"{path}:images[{i}]"
        try:
            if not isinstance(im, dict) or "id" not in im:
                raise BadItem("malformed_row", where, f"no id in {im!r:.80}")
            item = f"coco-{im['id']}"
            caps = captions.get(im["id"])
            if not caps:
                raise BadItem("empty_caption", item, f"{where}: no caption")
            img, img_path = _image_file(root, im.get("file_name"), item, size)
            yield Document(id=item, segments=[TextSegment(caps[0]), img], source=str(path),
                           metadata={"captions": caps, "image": img_path, "image_id": im["id"]})
        except BadItem as e:
            skips.skip(e)


# ---------------------------------------------------------------------------------------------- webdataset
def read_webdataset(shards: list[Path], skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """img2dataset layout: KEY.jpg|png (+ KEY.txt caption and/or KEY.json with "caption"), files of a key adjacent."""
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r|*") as tf:
                key, files = None, {}
                for m in tf:
                    if not m.isfile():
                        continue
                    k, _, ext = m.name.partition(".")
                    if k != key and files:
                        yield from _wds_sample(shard, key, files, skips, size)
                        files = {}
                    key = k
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:  # stream mode returns short reads at a truncated end
                        raise tarfile.ReadError(f"{m.name} truncated ({len(data)} of {m.size} bytes)")
                    files[ext.lower()] = data
                # a cut-off .tar reads as a shorter valid one; its last item may be incomplete, so drop it
                if _truncated(shard):
                    raise tarfile.ReadError("no end-of-archive marker (truncated)")
                if files:
                    yield from _wds_sample(shard, key, files, skips, size)
        except (tarfile.TarError, EOFError, OSError) as e:
            skips.skip(BadItem("corrupt_shard", str(shard), f"{type(e).__name__}: {e}"))


def _truncated(shard: Path) -> bool:
    """An uncompressed tar ends with two zero blocks; compressed ones fail on read instead."""
    if not shard.name.lower().endswith(".tar"):
        return False
    n = shard.stat().st_size
    if n < 1024 or n % 512:
        return True
    with open(shard, "rb") as f:
        f.seek(n - 1024)
        return any(f.read())


def _wds_sample(shard: Path, key: str, files: dict[str, bytes], skips: SkipCounter,
                size: int | None) -> Iterator[Document]:
    where = f"{shard}:{key}"
    try:
        meta = {}
        if "json" in files:
            try:
                meta = json.loads(files["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise BadItem("malformed_row", key, f"{where}.json: {e}") from None
            if not isinstance(meta, dict):
                raise BadItem("malformed_row", key, f"{where}.json is not an object")
        if "txt" in files:
            try:
                text = files["txt"].decode("utf-8")
            except UnicodeDecodeError:
                raise BadItem("bad_encoding", key, f"{where}.txt is not UTF-8") from None
        else:
            text = meta.get("caption")
        text = _caption(text, key, where)
        ext = next((e for e in IMAGE_EXTS if e in files), None)
        if ext is None:
            raise BadItem("missing_file", key, f"{where}: no image ({'/'.join(IMAGE_EXTS)}) among {sorted(files)}")
        pixels = decode_image_bytes(files[ext], f"{key} ({where}.{ext})", size)
        meta.pop("caption", None)
        yield Document(id=str(meta.pop("key", None) or key), segments=[TextSegment(text), ImageSegment(pixels=pixels)],
                       source=str(shard), metadata=meta)
    except BadItem as e:
        skips.skip(e)
