"""EmojiBench: the built-in corpus (protocol in docs/emojibench.md).

One document per (concept, style): "<style> emoji: <name>" then the emoji image (64x64 RGBA PNG from the
npm packages emoji-datasource-<style>@16.0.0, composited on white, resized with LANCZOS). Each skin-tone
variant (emoji.json `skin_variations`: 323 entries, 1,875 variants) is a document of its own, named with
its tones: "twitter emoji: waving hand, dark skin tone"; a two-person variant always names both tones, in
the entry's order, equal or not ("..., light skin tone, light skin tone"), so a tone list has one word
per person. Metadata: `concept` (the document's own unified code), `base` (its default entry's code;
`concept` itself for the default), `tone` ("" or "dark" or "light, dark"), `has_tones` (the base has
variants: the "variants" track, else "cross-style"). Splits are by base concept (ramm.corpus.splits),
so every variant shares its base's split. The alpha channel, resized the same way, is kept as the
foreground mask, KEY.mask.png beside KEY.png (`load_masks`). The output is webdataset-style tar shards
plus manifest.jsonl and meta.json, written shard by shard atomically; manifest and meta come last, so a
half-built folder is never trusted (the reader reports it as incomplete), and a rerun rewrites only
what is missing or differs.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment, decode_image_bytes, encode_png
from ramm.corpus.skips import SkipCounter
from ramm.corpus.splits import DEFAULT_FRACTIONS, SPLITS, assign_splits
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, default_cache_dir

log = logging.getLogger(__name__)

VERSION = "16.0.0"
# sha256 of the npm tarballs, pinned: a changed upstream package must not silently change the benchmark.
TARBALL_SHA256 = {
    "google": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "twitter": "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
}
STYLES = tuple(TARBALL_SHA256)
MIN_HELDOUT_FLAGS = 25
SHARD_SIZE = 1000
FORMAT = 3  # bump when the documents change, so that reruns rebuild older outputs (3: tone variants, masks)
MANIFEST, META = "manifest.jsonl", "meta.json"
DOC_KEYS = ("concept", "base", "tone", "has_tones", "style", "split", "name", "short_names", "category",
            "subcategory")
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}
MATCH_KEY = "concept"  # documents of one concept (its other style) are one answer: CorpusHooks.match_key
TRACKS = ("variants", "cross-style")  # documents of concepts with skin tones (default tone included) / all others
_SHARD_RE = re.compile(r"^\d{5}\.tar$")
_DOC_JSON_RE = re.compile(rb"^[a-z]+-[0-9a-f]+(-[0-9a-f]+)*\.json$")
NPM_REGISTRY = "https://registry.npmjs.org"  # where npm itself fetches the pinned tarballs from
NPM_HINT = "it needs network access to registry.npmjs.org (or Node.js + npm as a fallback)"
FETCH_TRIES = 3


class FetchError(RuntimeError):
    """The npm packages could not be fetched or failed their checksum."""


class IncompleteEmojiBench(FileNotFoundError):
    """The folder holds part of an EmojiBench build (shards without manifest.jsonl + meta.json)."""


@dataclass(frozen=True)
class EmojiBenchConfig:
    """What a build depends on; saved in meta.json so that a rerun can tell whether the output is current."""

    size: int = 32  # output image side in pixels (sources are 64x64)
    styles: tuple[str, ...] = STYLES  # artwork sets, each one document per concept
    seed: int = 0  # seed of the concept-level splits
    skin_tones: bool = True  # add each skin-tone variant as a document (sharing its base concept's split)

    def __post_init__(self):
        if not 8 <= self.size <= 64:
            raise ValueError(f"size must be in [8, 64] pixels, got {self.size}")
        bad = [s for s in self.styles if s not in STYLES]
        if bad or not self.styles:
            raise ValueError(f"unknown style(s) {bad or self.styles}; choose from {', '.join(STYLES)}")
        if len(set(self.styles)) != len(self.styles):
            raise ValueError(f"duplicate style in {self.styles}")

    def to_dict(self) -> dict:
        return {"size": self.size, "styles": list(self.styles), "seed": self.seed, "skin_tones": self.skin_tones}


# ---------------------------------------------------------------------------------------------- fetch
def fetch_package(style: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the verified emoji-datasource-<style> tarball in the cache: downloaded over HTTPS from
    the npm registry (Python only), else with `npm pack`; either way checked against the pinned sha256."""
    if style not in TARBALL_SHA256:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    dest_dir = Path(cache_dir or default_cache_dir()) / "npm"
    name = f"emoji-datasource-{style}-{VERSION}.tgz"
    dest = dest_dir / name
    if dest.exists() and _sha256_file(dest) == TARBALL_SHA256[style]:
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    url = f"{NPM_REGISTRY}/emoji-datasource-{style}/-/{name}"
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        got = Path(tmp) / name
        try:
            _download(url, got)
        except OSError as e:  # URLError, timeouts, resets: offline or blocked
            log.warning("downloading %s failed (%s); trying npm pack", url, e)
            _npm_pack(f"emoji-datasource-{style}@{VERSION}", Path(tmp), got, http_error=f"{url}: {e}")
        digest = _sha256_file(got)
        if digest != TARBALL_SHA256[style]:
            raise FetchError(f"{name}: sha256 {digest} does not match the pinned {TARBALL_SHA256[style]}")
        got.replace(dest)
    return dest


def _download(url: str, out: Path) -> None:
    """Stream `url` to `out`, FETCH_TRIES times with a growing pause before giving up."""
    for attempt in range(FETCH_TRIES):
        try:
            log.info("fetching %s", url)
            with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
            return
        except OSError:
            if attempt == FETCH_TRIES - 1:
                raise
            time.sleep(2 ** attempt)


def _npm_pack(spec: str, cwd: Path, got: Path, http_error: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"could not download {http_error}; npm (the fallback) is not installed: {NPM_HINT}")
    log.info("fetching %s with npm pack", spec)
    r = subprocess.run([npm, "pack", spec], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0 or not got.exists():
        log.debug("npm pack stderr:\n%s", r.stderr)
        codes = re.findall(r"code:? '?([A-Z][A-Z0-9_]+)", r.stderr)
        reason = codes[0] if codes else (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"could not download {http_error}, and `npm pack {spec}` failed ({reason}): {NPM_HINT}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- concepts
def read_concepts(tgz: Path, skin_tones: bool = True) -> list[dict]:
    """Concept records from the package's emoji.json, in the package's sort order, each default entry
    followed by its skin-tone variants (light to dark; pairs by first tone, then second) when `skin_tones`."""
    with tarfile.open(tgz) as tf:
        entries = json.load(tf.extractfile("package/emoji.json"))
    entries.sort(key=lambda e: e["sort_order"])
    out = []
    for e in entries:
        base = e["unified"].lower()
        variations = e.get("skin_variations") or {}
        common = {"short_names": e["short_names"], "category": e["category"], "subcategory": e["subcategory"],
                  "base": base, "has_tones": bool(variations)}
        out.append(dict(common, concept=base, name=e["name"].lower(), tone="", image=e["image"],
                        has_img={s: e.get(f"has_img_{s}", True) for s in STYLES}))
        if skin_tones:
            for codes, v in sorted(variations.items()):
                tone = tone_words(codes, e["unified"])
                out.append(dict(common, concept=v["unified"].lower(), name=variant_name(e["name"], tone), tone=tone,
                                image=v["image"], has_img={s: v.get(f"has_img_{s}", True) for s in STYLES}))
    return out


def tone_words(codes: str, where: str = "?") -> str:
    """"1F3FB-1F3FF" -> "light, dark": the tone of each person, in order."""
    words = [TONES.get(c.upper()) for c in codes.split("-")]
    if None in words:
        raise ValueError(f"{where}: unknown skin tone code in {codes!r}; known: {', '.join(TONES)}")
    return ", ".join(words)


def variant_name(name: str, tone: str) -> str:
    """("Waving Hand", "dark") -> "waving hand, dark skin tone"; two tones -> "..., light skin tone, dark skin tone"."""
    return ", ".join([name.lower()] + [f"{t} skin tone" for t in tone.split(", ")])


def track(metadata: dict) -> str:
    """The evaluation track of an EmojiBench document: "variants" when its base concept has skin tones
    (same-style siblings are in the memory), else "cross-style" (only the other style is)."""
    return TRACKS[0] if metadata.get("has_tones") else TRACKS[1]


def emojibench_splits(concepts: list[dict], seed: int = 0) -> dict[str, str]:
    """concept -> split; flags are a stratum with >= 25 heldout; skin-tone variants follow their base.

    Only base concepts are drawn, so turning variants on or off never moves a base concept's split."""
    bases = {c["base"]: c["category"] for c in concepts}
    strata = {b: ("flag" if cat == "Flags" else "other") for b, cat in bases.items()}
    split = assign_splits(bases, seed=seed, fractions=DEFAULT_FRACTIONS, strata=strata,
                          min_per_stratum={("flag", "heldout"): MIN_HELDOUT_FLAGS})
    return {c["concept"]: split[c["base"]] for c in concepts}


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


def _read_art(tgz: Path, style: str, images: set[str]) -> dict[str, bytes]:
    """image file name -> 64x64 PNG bytes, in one sequential pass (random access into a .tgz re-inflates)."""
    prefix, out = f"package/img/{style}/64/", {}
    with tarfile.open(tgz, mode="r|gz") as tf:
        for m in tf:
            if m.isfile() and m.name.startswith(prefix) and m.name[len(prefix):] in images:
                out[m.name[len(prefix):]] = tf.extractfile(m).read()
    return out


def _render(png: bytes, item: str, size: int) -> tuple[bytes, bytes]:
    """64x64 RGBA source PNG -> (RGB on white, resized with LANCZOS; its alpha as an 8-bit L mask, resized
    with LANCZOS on its own), both as PNG bytes. An opaque source gives an all-255 mask."""
    pixels = decode_image_bytes(png, item)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.LANCZOS))
    with Image.open(io.BytesIO(png)) as img:  # decodable: decode_image_bytes checked it
        alpha = img.convert("RGBA").getchannel("A")
    if alpha.size != (size, size):
        alpha = alpha.resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    alpha.save(buf, format="PNG", optimize=False)
    return encode_png(pixels), buf.getvalue()


# ---------------------------------------------------------------------------------------------- build
def build_emojibench(out: str | Path, config: EmojiBenchConfig = EmojiBenchConfig(),
                     cache_dir: str | Path | None = None, shard_size: int = SHARD_SIZE,
                     progress: Callable[[Iterable], Iterable] | None = None, skips: SkipCounter | None = None) -> dict:
    """Build (or complete) EmojiBench in `out`; returns the meta dict. A current, valid output is left as is.

    progress: wraps an iterable to show progress (the CLI passes tqdm); skips counts entries without art
    (reason "missing_image", the file named; the build goes on without them, listed in meta "missing_images").
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out)
    meta_path = out / META
    meta = _read_meta(meta_path)
    if (meta.get("format"), meta.get("config"), meta.get("shard_size")) == (FORMAT, config.to_dict(), shard_size) \
            and not verify_emojibench(out):
        log.info("%s is complete and current; nothing to do", out)
        return meta
    skips = skips or SkipCounter()
    tarballs = {s: fetch_package(s, cache_dir) for s in config.styles}
    concepts = read_concepts(tarballs[config.styles[0]], config.skin_tones)
    split_of = emojibench_splits(concepts, config.seed)

    pngs: dict[str, dict[str, tuple[bytes, bytes]]] = {}  # concept -> style -> rendered (PNG, mask PNG)
    missing = []
    for style in config.styles:
        art = _read_art(tarballs[style], style, {c["image"] for c in concepts})
        for c in (progress(concepts) if progress else concepts):
            key = f"{style}-{c['concept']}"
            try:
                if not c["has_img"][style] or c["image"] not in art:
                    why = "has_img false in emoji.json" if not c["has_img"][style] else "not in the package"
                    missing.append(f"img/{style}/64/{c['image']}")
                    raise BadItem("missing_image", key,
                                  f"no art img/{style}/64/{c['image']} ({why}; {tarballs[style].name})")
                pngs.setdefault(c["concept"], {})[style] = _render(art[c["image"]], key, config.size)
                skips.ok()
            except BadItem as e:
                skips.skip(e)
    items = []  # (manifest row, PNG bytes, mask PNG bytes, KEY.json bytes) in concept order, styles interleaved
    for c in concepts:
        for style, (png, mask) in sorted(pngs.get(c["concept"], {}).items(),
                                         key=lambda kv: config.styles.index(kv[0])):
            key = f"{style}-{c['concept']}"
            meta_doc = {"concept": c["concept"], "base": c["base"], "tone": c["tone"], "has_tones": c["has_tones"],
                        "style": style, "split": split_of[c["concept"]], "name": c["name"],
                        "short_names": c["short_names"], "category": c["category"], "subcategory": c["subcategory"]}
            text = caption(style, c["name"])
            doc_json = json.dumps({"id": key, "text": text, "metadata": meta_doc}, ensure_ascii=False, sort_keys=True)
            items.append((dict(key=key, caption=text, sha256=_sha256(png), mask_sha256=_sha256(mask), **meta_doc),
                          png, mask, doc_json.encode("utf-8")))

    # A half-rebuilt folder must not be trusted: drop manifest and meta before touching any shard.
    out.mkdir(parents=True, exist_ok=True)
    for p in (meta_path, out / MANIFEST):
        p.unlink(missing_ok=True)
    n_shards = (len(items) + shard_size - 1) // shard_size
    rows = []
    for i in range(n_shards):
        name = f"{i:05d}.tar"
        chunk = items[i * shard_size:(i + 1) * shard_size]
        data, offsets = _tar_bytes(chunk)
        if not (out / name).exists() or (out / name).read_bytes() != data:
            atomic_write_bytes(out / name, data)
        rows += [dict(r, shard=name, offset=offsets[r["key"]][0], size=len(png), mask_offset=offsets[r["key"]][1],
                      mask_size=len(mask)) for r, png, mask, _ in chunk]
    for p in out.iterdir():
        if _SHARD_RE.match(p.name) and int(p.name[:5]) >= n_shards:
            p.unlink()
    manifest = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(out / MANIFEST, manifest)
    meta = {"format": FORMAT, "config": config.to_dict(), "shard_size": shard_size, "n_documents": len(rows),
            "n_concepts": len({r["concept"] for r in rows}), "n_base_concepts": len({r["base"] for r in rows}),
            "n_tone_documents": sum(bool(r["tone"]) for r in rows),
            "tracks": {t: sum(track(r) == t for r in rows) for t in TRACKS}, "source": {
                s: {"package": f"emoji-datasource-{s}@{VERSION}", "sha256": TARBALL_SHA256[s]} for s in config.styles},
            "manifest_sha256": _sha256(manifest.encode("utf-8")), "skipped": dict(skips.skipped),
            "missing_images": missing}
    atomic_write_json(meta_path, meta)
    log.info("built %s: %d documents in %d shards (%s)", out, len(rows), n_shards, skips.summary())
    return meta


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _tar_bytes(chunk: list[tuple[dict, bytes, bytes, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A deterministic tar (mtime 0) holding KEY.json, KEY.png and KEY.mask.png adjacent, as webdataset
    expects, and the byte offsets of each KEY.png and KEY.mask.png in it, so that readers slice images out
    without parsing tar headers."""
    buf, offsets = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tf:
        for row, png, mask, js in chunk:
            at = []
            for ext, data in (("json", js), ("png", png), ("mask.png", mask)):
                info = tarfile.TarInfo(f"{row['key']}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                at.append(tf.offset + len(info.tobuf(tarfile.USTAR_FORMAT, "utf-8")))
                tf.addfile(info, io.BytesIO(data))
            offsets[row["key"]] = (at[1], at[2])
    return buf.getvalue(), offsets


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
