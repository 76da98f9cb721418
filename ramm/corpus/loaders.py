"""Loaders for users' own corpora: COCO captions JSON, JSONL/CSV + image folder, webdataset tar shards;
other formats (EmojiBench) come from installed packages through `ramm.corpus.formats`.

Every loader streams (images are read one item at a time, so a 10M-pair corpus never sits in memory)
and never crashes half way on bad input: a corrupt or missing image, an empty or non-UTF-8 caption, a
malformed row or an image over the pixel limit is skipped and counted by reason (`Corpus.skips`);
with `strict=True` the first one raises `BadItem` naming the item's id and path.
"""
from __future__ import annotations

import csv
import json
import logging
import re
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment, decode_image_bytes, read_image_file
from ramm.corpus.formats import find_format, formats
from ramm.corpus.hooks import NEUTRAL, CorpusHooks
from ramm.corpus.skips import SkipCounter

log = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "image_path", "file_name", "filename", "filepath", "path")
CAPTION_KEYS = ("caption", "text")
ID_KEYS = ("id", "key")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_CAPTION_CHARS = 10_000  # a longer caption is a skip: a 1 MB one stalls BPE training for minutes
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a larger tar member is a skip, decided before a byte of it is read
MAX_RECORD_LINES = 64  # a CSV record (a quoted caption may hold newlines) spans at most this many lines
_WDS_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: folder kept, basename split at its first dot

Reader = Callable[[SkipCounter], Iterator[Document]]


class Corpus:
    """A re-iterable stream of Documents; each pass counts its good and bad items in `skips`. `hooks`: what
    its format knows beyond the documents (neutral for the built-in loaders)."""

    def __init__(self, kind: str, path: Path, reader: Reader, strict: bool = False, hooks: CorpusHooks = NEUTRAL):
        self.kind, self.path, self.strict, self.hooks = kind, path, strict, hooks
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

    A folder of a registered format (`ramm.corpus.formats`: EmojiBench, when its lab is installed); a folder
    of .tar shards or one .tar/.tar.gz/.tgz (webdataset / img2dataset layout); a .json COCO captions file;
    a .jsonl, .csv or .tsv file; a file of a registered format.
    images: folder that relative image paths start from (default: the file's folder).
    image_size: resize every image to this square side (default: keep each image's size).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = Path(images) if images is not None else (path if path.is_dir() else path.parent)
    name = path.name.lower()
    builtin = not path.is_dir() and name.endswith((*TAR_SUFFIXES, ".jsonl", ".csv", ".tsv", ".json"))
    fmt = None if builtin else find_format(path)  # a JSONL file never loads a plugin
    if fmt is not None:
        return Corpus(fmt.name, path, lambda skips: fmt.read(path, skips), strict, fmt.hooks(path))
    if path.is_dir():
        shards = sorted(p for p in path.iterdir() if p.name.endswith(TAR_SUFFIXES))
        if not shards:
            raise ValueError(f"{path}: folder holds no .tar shards and is in no registered corpus format "
                             f"({', '.join(sorted(formats())) or 'none installed'})")
        return Corpus("webdataset", path, lambda skips: read_webdataset(shards, skips, image_size), strict)
    if name.endswith(TAR_SUFFIXES):
        return Corpus("webdataset", path, lambda skips: read_webdataset([path], skips, image_size), strict)
    if name.endswith(".jsonl"):
        return Corpus("jsonl", path, lambda skips: read_jsonl(path, root, skips, image_size), strict)
    if name.endswith((".csv", ".tsv")):
        return Corpus("csv", path, lambda skips: read_csv(path, root, skips, image_size), strict)
    if name.endswith(".json"):
        return Corpus("coco", path, lambda skips: read_coco(path, root, skips, image_size), strict)
    raise ValueError(f"{path}: unknown corpus format; expected .tar shards, COCO .json, .jsonl, .csv, .tsv or a "
                     f"registered format ({', '.join(sorted(formats())) or 'none installed'})")


# ---------------------------------------------------------------------------------------------- shared
def _caption(text, item: str, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadItem("empty_caption", item, where)
    if len(text) > MAX_CAPTION_CHARS:
        raise BadItem("caption_too_long", item, f"{where}: {len(text)} characters > {MAX_CAPTION_CHARS}")
    return text.strip()


def _image_file(root: Path, rel, item: str, size: int | None) -> tuple[ImageSegment, str]:
    if not isinstance(rel, str) or not rel:
        raise BadItem("malformed_row", item, f"no image path ({rel!r})")
    path = root / rel
    if not path.is_file():
        raise BadItem("missing_file", item, str(path))
    return ImageSegment(pixels=read_image_file(path, item, size)), str(path)


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


class _Lines:
    """The physical lines csv.reader pulls, numbered and kept per record, so that a malformed record
    (an unterminated quote) costs one line: its first line is skipped and the rest read again."""

    def __init__(self, f):
        self.f, self.lineno, self.again, self.record = f, 0, deque(), []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if len(self.record) >= MAX_RECORD_LINES:
            raise csv.Error(f"a record runs past {MAX_RECORD_LINES} lines (an unterminated quote?)")
        if self.again:
            n, line = self.again.popleft()
        else:
            line = next(self.f)
            self.lineno += 1
            n = self.lineno
        self.record.append((n, line))
        return line

    def start(self) -> None:
        self.record = []

    def retry_after_first(self) -> None:
        """Drop the current record's first line and read its other lines again."""
        self.again.extendleft(reversed(self.record[1:]))
        self.record = []


def read_csv(path: Path, root: Path, skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """A header row naming at least an image column and a caption column (.tsv: tab-separated).
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    # surrogateescape keeps reading past non-UTF-8 bytes so that only the bad row is skipped
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None or not set(header) & set(IMAGE_KEYS) or not set(header) & set(CAPTION_KEYS):
            raise ValueError(f"{path}: header {header} needs an image column (one of {', '.join(IMAGE_KEYS)}) "
                             f"and a caption column (one of {', '.join(CAPTION_KEYS)})")
        while True:
            lines.start()
            try:
                try:
                    fields = next(reader)
                except StopIteration:
                    if not lines.record:
                        return
                    raise csv.Error("unexpected end of data") from None
                except csv.Error as e:
                    where = f"{path}:{lines.record[0][0] if lines.record else lines.lineno}"
                    if len(lines.record) > 1:
                        lines.retry_after_first()
                    raise BadItem("malformed_row", where, str(e)) from None
                where = f"{path}:{lines.record[0][0]}"
                if not any(fields):
                    continue
                if len(fields) != len(header):
                    if len(lines.record) > 1:
                        lines.retry_after_first()
                    raise BadItem("malformed_row", where, f"{len(fields)} fields, header has {len(header)}")
                try:
                    "".join(fields).encode("utf-8")
                except UnicodeEncodeError:
                    raise BadItem("bad_encoding", where, "not UTF-8") from None
                row = dict(zip(header, fields))
                item = str(_pick(row, ID_KEYS) or f"{path.stem}-{lines.record[0][0]}")
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
            _coco_id(ann["image_id"], "image_id", f"{path}:annotations[{i}]")
            captions.setdefault(ann["image_id"], []).append(
                _caption(ann.get("caption"), f"coco-{ann['image_id']}", f"{path}:annotations[{i}]"))
        except BadItem as e:
            skips.skip(e)
    for i, im in enumerate(data.pop("images")):
        where = f"{path}:images[{i}]"
        try:
            if not isinstance(im, dict) or "id" not in im:
                raise BadItem("malformed_row", where, f"no id in {im!r:.80}")
            _coco_id(im["id"], "id", where)
            item = f"coco-{im['id']}"
            caps = captions.get(im["id"])
            if not caps:
                raise BadItem("empty_caption", item, f"{where}: no caption")
            img, img_path = _image_file(root, im.get("file_name"), item, size)
            yield Document(id=item, segments=[TextSegment(caps[0]), img], source=str(path),
                           metadata={"captions": caps, "image": img_path, "image_id": im["id"]})
        except BadItem as e:
            skips.skip(e)


def _coco_id(value, key: str, where: str) -> None:
    """COCO ids are numbers (some exports use strings); a list or object is a malformed row."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadItem("malformed_row", where, f"{key} {value!r:.60} is not a number or string")


# ---------------------------------------------------------------------------------------------- webdataset
def read_webdataset(shards: list[Path], skips: SkipCounter, size: int | None = None) -> Iterator[Document]:
    """img2dataset layout: KEY.jpg|png (+ KEY.txt caption and/or KEY.json with "caption"). A member's key is
    its path with the basename cut at its first dot, as webdataset does (`./000.png` -> `./000`,
    `laion.v2/000.jpg` -> `laion.v2/000`).

    Files of a key are grouped across the shard, not only when adjacent (webdataset's rule, which a plain
    `tar -C dir .` breaks): a sample still missing its image or caption when the next key starts waits for
    them until the shard ends (up to MAX_PENDING_BYTES of such samples; past it the oldest is read as it is)."""
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r|*") as tf:
                key, files, pending = None, {}, _Pending()
                for m in tf:
                    if not m.isfile():
                        continue
                    match = _WDS_KEY.match(m.name)
                    if match is None:  # no extension (or a dot-file): not part of a sample
                        continue
                    k, ext = match.groups()
                    if k != key:
                        if files:
                            yield from _set_aside(shard, key, files, pending, skips, size)
                        key, files = k, pending.take(k)
                    if m.size > MAX_MEMBER_BYTES or m.issparse():
                        files[ext.lower()] = _TooLarge(m.size)  # tarfile skips its bytes unread
                        continue
                    data = tf.extractfile(m).read()
                    if len(data) != m.size:  # stream mode returns short reads at a truncated end
                        raise tarfile.ReadError(f"{m.name} truncated ({len(data)} of {m.size} bytes)")
                    files[ext.lower()] = data
                # a cut-off .tar reads as a shorter valid one; its last item may be incomplete, so drop it
                if _truncated(shard):
                    raise tarfile.ReadError("no end-of-archive marker (truncated)")
                if files:
                    pending.put(key, files)
                for k, f in pending.items():  # incomplete to the end: their skips say what is missing
                    yield from _wds_sample(shard, k, f, skips, size)
        except (tarfile.TarError, EOFError, OSError) as e:
            skips.skip(BadItem("corrupt_shard", str(shard), f"{type(e).__name__}: {e}"))


MAX_PENDING_BYTES = 4 * MAX_MEMBER_BYTES  # incomplete samples held while their other files may follow


class _Pending(dict):
    """Incomplete samples of a shard, key -> files, oldest first, with the bytes they hold."""

    held = 0  # bytes of image, caption and json data kept

    def put(self, key: str, files: dict) -> None:
        self[key] = files
        self.held += sum(len(v) for v in files.values() if isinstance(v, bytes))

    def take(self, key: str) -> dict:
        files = self.pop(key, {})
        self.held -= sum(len(v) for v in files.values() if isinstance(v, bytes))
        return files


def _set_aside(shard: Path, key: str, files: dict, pending: _Pending, skips: SkipCounter,
               size: int | None) -> Iterator[Document]:
    """A key's files as its next key starts: the sample when it has an image and a caption source, else kept
    in `pending` for files of the key further on (the oldest read as it is past MAX_PENDING_BYTES)."""
    if any(e in files for e in IMAGE_EXTS) and ("txt" in files or "json" in files):
        yield from _wds_sample(shard, key, files, skips, size)
        return
    pending.put(key, files)
    while pending.held > MAX_PENDING_BYTES:
        oldest = next(iter(pending))
        yield from _wds_sample(shard, oldest, pending.take(oldest), skips, size)


class _TooLarge(int):
    """Stands for a member over MAX_MEMBER_BYTES (or sparse): its size, never its bytes."""


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
    key = key[2:] if key.startswith("./") else key
    try:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # tarfile keeps undecodable bytes as surrogates, which no JSON or SQLite takes
            raise BadItem("bad_encoding", ascii(key), f"{shard}: member name {ascii(key)} is not UTF-8") from None
        big = {e: n for e, n in files.items() if isinstance(n, _TooLarge)}
        if big:
            raise BadItem("member_too_large", key, f"{where}: " + ", ".join(
                f".{e} {'sparse' if n <= MAX_MEMBER_BYTES else f'{n} bytes'}" for e, n in big.items())
                + f" (limit {MAX_MEMBER_BYTES} bytes)")
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
