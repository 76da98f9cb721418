"""Building EmojiBench (protocol in docs/emojibench.md): fetch the pinned npm tarballs, render, split, write.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ramm.corpus.document import BadItem, decode_image_bytes, encode_png
from ramm.corpus.skips import SkipCounter
from ramm.corpus.splits import DEFAULT_FRACTIONS, assign_splits
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, default_cache_dir

log = logging.getLogger(__name__)

from ramm_lab.emojibench import (FORMAT, MANIFEST, META, STYLES, TONES, TRACKS, _SHARD_RE, _read_meta, _sha256, caption,
                                  track, verify_emojibench)
VERSION = "16.0.0"
# sha256 of the npm tarballs, pinned: a changed upstream package must not silently change the benchmark.
TARBALL_SHA256 = {
    "google": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "twitter": "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
}
MIN_HELDOUT_FLAGS = 25
SHARD_SIZE = 1000

NPM_REGISTRY = "https://registry.npmjs.org"  # where npm itself fetches the pinned tarballs from
NPM_HINT = "it needs network access to registry.npmjs.org (or Node.js + npm as a fallback)"
FETCH_TRIES = 3


class FetchError(RuntimeError):
    """The npm packages could not be fetched or failed their checksum."""


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


def emojibench_splits(concepts: list[dict], seed: int = 0) -> dict[str, str]:
    """concept -> split; flags are a stratum with >= 25 heldout; skin-tone variants follow their base.

    Only base concepts are drawn, so turning variants on or off never moves a base concept's split."""
    bases = {c["base"]: c["category"] for c in concepts}
    strata = {b: ("flag" if cat == "Flags" else "other") for b, cat in bases.items()}
    split = assign_splits(bases, seed=seed, fractions=DEFAULT_FRACTIONS, strata=strata,
                          min_per_stratum={("flag", "heldout"): MIN_HELDOUT_FLAGS})
    return {c["concept"]: split[c["base"]] for c in concepts}


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
