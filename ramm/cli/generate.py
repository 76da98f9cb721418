"""`ramm generate image|caption|infill|edit`: run the generator and write what people look at.

Each command writes its samples (PNG), a grid PNG for images, `result.json`, and an `index.html`
showing the query, the retrieved documents (image + text) and the samples side by side. Flags and
`--config FILE` are the fields of `ramm.config.GenerateImageConfig` / `GenerateCaptionConfig` / `GenerateInfillConfig` / `GenerateEditConfig`; `--decode.*` (or the bare `--method`,
`--guidance_scale`, ...) starts from the bundle's settings for images / captions (generator.json `decode`).
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from ramm.config import GenerateCaptionConfig, GenerateEditConfig, GenerateImageConfig, GenerateInfillConfig
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

GRID_MIN_SIDE = 128  # the grid and the page show small images (32x32 emoji: 4x) at least this large, pixelated; large ones as they are


def register(cli) -> None:
    cli.config_command("image", "text -> image: sample images for a caption", GenerateImageConfig, _image, group="generate",
                       positional=("caption",), defaults=_bundle_decoding("image"))
    cli.config_command("caption", "image -> text: caption an image file", GenerateCaptionConfig, _caption, group="generate",
                       positional=("image",), defaults=_bundle_decoding("caption"))
    cli.config_command("infill", "regenerate the caption or the image of a (caption, image) document", GenerateInfillConfig,
                       _infill, group="generate")
    cli.config_command("edit", "image + instruction -> image with an instruction-tuned generator (ramm train sft)",
                       GenerateEditConfig, _edit, group="generate", positional=("image", "instruction"))


def _bundle_decoding(task: str):
    """The `decode` default of a command: the bundle's settings for `task` (image | caption)."""
    def defaults(parsed) -> dict:
        # lazy: `ramm --help` imports this module and stays free of torch and numpy
        from ramm.model.bundle import read_decode_defaults
        if not parsed["model"]:
            return {}
        settings = asdict(getattr(read_decode_defaults(parsed["model"]), task))
        return {f"decode.{name}": value for name, value in settings.items()}
    return defaults


# ---------------------------------------------------------------------------------------------- commands
def _load(cfg):
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.pipeline import RAMM
    return RAMM.load(cfg.model, memory_dir=cfg.memory, device=cfg.device)


def _kwargs(cfg) -> dict:
    return dict(retrieve=cfg.retrieve, k=cfg.k, exclude_ids=list(cfg.exclude), decode=cfg.decode, seed=cfg.seed)


def _image(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from tqdm import tqdm
    ramm = _load(cfg)
    with tqdm(total=cfg.n, desc="images", unit="sample") as bar:
        res = ramm.generate_image(cfg.caption, n=cfg.n, rerank=cfg.rerank, batch_size=cfg.batch_size,
                                  progress=lambda done: bar.update(done - bar.n), **_kwargs(cfg))
    out = Path(cfg.out)
    names = [_save_png(out / f"sample_{i:02d}.png", im) for i, im in enumerate(res.outputs)]
    _save_png(out / "grid.png", grid(res.outputs))
    samples = [(name, f"score {s:.3f}" if res.scores else "", None)
               for name, s in zip(names, res.scores or [0] * len(names))]
    _write_report(out, cfg, "text → image", html.escape(cfg.caption), res.retrieved, samples, ramm)
    _print_retrieved(res.retrieved)
    print(f"wrote {len(names)} samples, grid.png and index.html to {out}")
    return 0


def _caption(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from tqdm import tqdm

    from ramm.pipeline import image_size, read_image
    ramm = _load(cfg)
    pixels = read_image(cfg.image, image_size(ramm.format.image_tokenizer))
    with tqdm(total=cfg.n, desc="captions", unit="sample") as bar:
        res = ramm.caption_image(pixels, n=cfg.n, rerank=cfg.rerank, max_new_tokens=cfg.max_tokens,
                                 batch_size=cfg.batch_size, progress=lambda done: bar.update(done - bar.n),
                                 **_kwargs(cfg))
    out = Path(cfg.out)
    _save_png(out / "query.png", pixels)
    scores = res.scores or [None] * len(res.outputs)
    samples = [(None, f"{html.escape(t)}" + (f" <small>(log p/token {s:.3f})</small>" if s is not None else ""), t)
               for t, s in zip(res.outputs, scores)]
    _write_report(out, cfg, "image → text", _img_tag("query.png"), res.retrieved, samples, ramm)
    _print_retrieved(res.retrieved)
    for t, s in zip(res.outputs, scores):
        print(t if s is None else f"{s:8.3f}  {t}")
    return 0


def _infill(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    import numpy as np

    from ramm.corpus.document import Document, ImageSegment, TextSegment
    from ramm.pipeline import image_size, read_image
    ramm = _load(cfg)
    size = image_size(ramm.format.image_tokenizer)
    image = ImageSegment(pixels=read_image(cfg.image, size)) if cfg.image else \
        ImageSegment(pixels=np.full((size, size, 3), 255, np.uint8))  # placeholder: masked, never read
    doc = Document("query", [TextSegment(cfg.caption or "<mask>"), image])
    masked = [1] if cfg.mask == "image" else [0]
    res = ramm.infill(doc, masked, n=cfg.n, max_new_tokens=cfg.max_tokens, **_kwargs(cfg))
    out = Path(cfg.out)
    samples = []
    for i, d in enumerate(res.outputs):
        name = _save_png(out / f"sample_{i:02d}.png", d.image) if d.image is not None else None
        samples.append((name, html.escape(d.text), d.text))
        print(f"{i}: {d.text}" + (f"  [{name}]" if name else ""))
    if cfg.mask == "caption":
        _save_png(out / "query.png", image.pixels)
        query = _img_tag("query.png") + "<br>caption: <i>masked</i>"
    else:
        query = f"{html.escape(cfg.caption)}<br>image: <i>masked</i>"
    _write_report(out, cfg, f"infill the {cfg.mask}", query, res.retrieved, samples, ramm)
    return 0


def _edit(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from tqdm import tqdm

    from ramm.pipeline import image_size, read_image
    ramm = _load(cfg)
    pixels = read_image(cfg.image, image_size(ramm.format.image_tokenizer))
    with tqdm(total=cfg.n, desc="edits", unit="sample") as bar:
        res = ramm.edit_image(pixels, cfg.instruction, n=cfg.n, batch_size=cfg.batch_size,
                              progress=lambda done: bar.update(done - bar.n), **_kwargs(cfg))
    out = Path(cfg.out)
    _save_png(out / "query.png", pixels)
    names = [_save_png(out / f"sample_{i:02d}.png", im) for i, im in enumerate(res.outputs)]
    _save_png(out / "grid.png", grid(res.outputs))
    query = _img_tag("query.png") + f"<br>{html.escape(cfg.instruction)}"
    _write_report(out, cfg, "edit", query, res.retrieved, [(n, "", None) for n in names], ramm)
    _print_retrieved(res.retrieved)
    print(f"wrote {len(names)} edits, grid.png and index.html to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- output
def grid(images, columns: int = 8, pad: int = 2, scale: int | None = None):
    """Images (uint8 (H, W, 3), same size) -> one uint8 grid image on white, upscaled `scale`x (nearest; None:
    the smallest whole factor that shows an image at GRID_MIN_SIDE pixels or more, 1 for large images)."""
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    import numpy as np
    if not len(images):
        raise ValueError("no images to put in a grid")
    h, w, _ = images[0].shape
    scale = scale or max(1, -(-GRID_MIN_SIDE // max(h, w)))
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out.repeat(scale, 0).repeat(scale, 1)


def _print_retrieved(docs) -> None:
    for d in docs:
        print(f"retrieved {d.id}: {d.text}")


def _save_png(path: Path, pixels) -> str:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus.document import encode_png
    atomic_write_bytes(path, encode_png(pixels))
    return path.name


def _img_tag(src: str) -> str:
    return f'<img src="{html.escape(src)}" class="px">'


def _write_report(out: Path, cfg, task: str, query_html: str, retrieved, samples, ramm) -> None:
    """index.html (query | retrieved | samples) and result.json; samples: (PNG name, HTML label, plain text)."""
    ret_cells = []
    for i, d in enumerate(retrieved):
        img = ""
        if d.image is not None:
            img = _img_tag(_save_png(out / f"retrieved_{i}.png", d.image))
        ret_cells.append(f'<div class="card">{img}<div>{html.escape(d.text)}</div><small>{html.escape(d.id)}</small></div>')
    sample_cells = [f'<div class="card">{_img_tag(name) if name else ""}<div>{label}</div></div>'
                    for name, label, _ in samples]
    settings = asdict(cfg)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ramm: {html.escape(task)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.row {{ display: flex; gap: 2em; align-items: flex-start; }}
.col {{ flex: 0 0 auto; max-width: 46em; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .8em; }}
.card {{ width: 140px; font-size: .85em; }}
img.px {{ min-width: 128px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }}
pre {{ font-size: .75em; color: #555; }}
</style></head><body>
<h1>{html.escape(task)}</h1>
<div class="row">
<div class="col"><h2>query</h2><div class="card">{query_html}</div></div>
<div class="col"><h2>retrieved ({len(retrieved)})</h2><div class="cards">{''.join(ret_cells) or '<i>none</i>'}</div></div>
<div class="col"><h2>samples ({len(samples)}, best first)</h2><div class="cards">{''.join(sample_cells)}</div></div>
</div>
<pre>{html.escape(json.dumps(settings, indent=1, default=str))}</pre>
</body></html>
"""
    atomic_write_text(out / "index.html", page)
    atomic_write_json(out / "result.json", {"task": task, "settings": settings,
                                            "retrieved": [d.id for d in retrieved],
                                            "samples": [{"file": n, "label": lbl, **({"text": t} if t is not None else {})}
                                                        for n, lbl, t in samples]})
