"""`ramm generate image|caption|infill`: run the generator and write what people look at.

Each command writes its samples (PNG), a grid PNG for images, `result.json`, and an `index.html`
showing the query, the retrieved documents (image + text) and the samples side by side.
"""
from __future__ import annotations

from ramm.cli import add_runtime_args

import html
import json
from pathlib import Path

METHODS = ("sample", "greedy", "cfg", "cd", "mix")  # mix: images only (half sample, half cd)
GRID_SCALE = 4  # emoji are 32x32: the grid and the page show them 4x larger, pixelated


def _common(p, n_default: int) -> None:
    p.add_argument("--model", required=True, help="generator bundle dir (config.json, model.safetensors, generator.json)")
    p.add_argument("--memory", default=None, help="memory dir to retrieve from (default: the bundle's, if any)")
    p.add_argument("--out", required=True, help="output dir for samples, grid.png, result.json, index.html")
    p.add_argument("--n", type=int, default=n_default, help="samples to draw")
    p.add_argument("-k", type=int, default=2, help="documents to retrieve (RA-CM3 uses 2)")
    p.add_argument("--no-retrieve", action="store_true", help="generate without retrieved documents")
    p.add_argument("--exclude", nargs="*", default=(), help="memory ids never to retrieve (leave-one-out)")
    p.add_argument("--method", choices=METHODS, default="sample", help="decoding method")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = all)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="CFG weight (method cfg)")
    p.add_argument("--cd-alpha", type=float, default=0.1, help="CD-K candidate threshold alpha (method cd)")
    p.add_argument("--cd-k", type=int, default=8, help="CD-K rank K setting the threshold (method cd)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples)")
    p.add_argument("--batch-size", type=int, default=8, help="samples decoded together")
    add_runtime_args(p)


def register(cli) -> None:
    p = cli.command("image", "text -> image: sample images for a caption", group="generate")
    p.add_argument("caption", help='e.g. "twitter emoji: japan flag"')
    _common(p, n_default=8)
    p.add_argument("--no-rerank", action="store_true", help="keep sample order (default: best CLIP-style score first)")
    p.set_defaults(func=_image)

    p = cli.command("caption", "image -> text: caption an image file", group="generate")
    p.add_argument("image", help="PNG/JPEG file")
    _common(p, n_default=8)
    p.add_argument("--max-tokens", type=int, default=32, help="longest caption in tokens")
    p.add_argument("--no-rerank", action="store_true", help="keep sample order (default: lowest perplexity first)")
    p.set_defaults(func=_caption)

    p = cli.command("infill", "regenerate the caption or the image of a (caption, image) document",
                    group="generate")
    p.add_argument("--caption", default="", help="the document's caption (required unless --mask caption)")
    p.add_argument("--image", default=None, help="the document's image file (required unless --mask image)")
    p.add_argument("--mask", choices=("image", "caption"), required=True, help="which segment to regenerate")
    _common(p, n_default=4)
    p.add_argument("--max-tokens", type=int, default=32, help="longest text span in tokens")
    p.set_defaults(func=_infill)


# ---------------------------------------------------------------------------------------------- commands
def _load(args):
    import torch

    from ramm.pipeline import RAMM
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    return RAMM.load(args.model, memory_dir=args.memory, device=args.device)


def _kwargs(args) -> dict:
    return dict(retrieve=not args.no_retrieve, k=args.k, exclude_ids=args.exclude, method=args.method,
                seed=args.seed, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                guidance_scale=args.guidance_scale, cd_alpha=args.cd_alpha, cd_k=args.cd_k)


def _image(args) -> int:
    from tqdm import tqdm
    if not args.caption.strip():
        raise ValueError("caption is empty")
    ramm = _load(args)
    with tqdm(total=args.n, desc="images", unit="sample") as bar:
        res = ramm.generate_image(args.caption, n=args.n, rerank=not args.no_rerank, batch_size=args.batch_size,
                                  progress=lambda done: bar.update(done - bar.n), **_kwargs(args))
    out = Path(args.out)
    names = [_save_png(out / f"sample_{i:02d}.png", im) for i, im in enumerate(res.outputs)]
    _save_png(out / "grid.png", grid(res.outputs))
    samples = [(name, f"score {s:.3f}" if res.scores else "") for name, s in zip(names, res.scores or [0] * len(names))]
    _write_report(out, args, "text → image", html.escape(args.caption), res.retrieved, samples, ramm)
    _print_retrieved(res.retrieved)
    print(f"wrote {len(names)} samples, grid.png and index.html to {out}")
    return 0


def _caption(args) -> int:
    from tqdm import tqdm

    from ramm.pipeline import read_image
    ramm = _load(args)
    pixels = read_image(args.image, ramm.format.image_tokenizer.cfg.image_size)
    with tqdm(total=args.n, desc="captions", unit="sample") as bar:
        res = ramm.caption_image(pixels, n=args.n, rerank=not args.no_rerank, max_new_tokens=args.max_tokens,
                                 batch_size=args.batch_size, progress=lambda done: bar.update(done - bar.n),
                                 **_kwargs(args))
    out = Path(args.out)
    _save_png(out / "query.png", pixels)
    scores = res.scores or [None] * len(res.outputs)
    samples = [(None, f"{html.escape(t)}" + (f" <small>(log p/token {s:.3f})</small>" if s is not None else ""))
               for t, s in zip(res.outputs, scores)]
    _write_report(out, args, "image → text", _img_tag("query.png"), res.retrieved, samples, ramm)
    _print_retrieved(res.retrieved)
    for t, s in zip(res.outputs, scores):
        print(t if s is None else f"{s:8.3f}  {t}")
    return 0


def _infill(args) -> int:
    import numpy as np

    from ramm.corpus.document import Document, ImageSegment, TextSegment
    from ramm.pipeline import read_image
    if args.method not in ("sample", "greedy"):
        raise ValueError(f"infill decodes with --method sample or greedy, not {args.method}")
    if args.mask == "image" and not args.caption.strip():
        raise ValueError("--caption is needed to infill the image")
    if args.mask == "caption" and not args.image:
        raise ValueError("--image is needed to infill the caption")
    ramm = _load(args)
    size = ramm.format.image_tokenizer.cfg.image_size
    image = ImageSegment(pixels=read_image(args.image, size)) if args.image else \
        ImageSegment(pixels=np.full((size, size, 3), 255, np.uint8))  # placeholder: masked, never read
    doc = Document("query", [TextSegment(args.caption or "<mask>"), image])
    masked = [1] if args.mask == "image" else [0]
    kw = {k: v for k, v in _kwargs(args).items() if k not in ("guidance_scale", "cd_alpha", "cd_k")}
    res = ramm.infill(doc, masked, n=args.n, max_new_tokens=args.max_tokens, **kw)
    out = Path(args.out)
    samples = []
    for i, d in enumerate(res.outputs):
        name = _save_png(out / f"sample_{i:02d}.png", d.image) if d.image is not None else None
        samples.append((name, html.escape(d.text)))
        print(f"{i}: {d.text}" + (f"  [{name}]" if name else ""))
    if args.mask == "caption":
        _save_png(out / "query.png", image.pixels)
        query = _img_tag("query.png") + "<br>caption: <i>masked</i>"
    else:
        query = f"{html.escape(args.caption)}<br>image: <i>masked</i>"
    _write_report(out, args, f"infill the {args.mask}", query, res.retrieved, samples, ramm)
    return 0


# ---------------------------------------------------------------------------------------------- output
def grid(images, columns: int = 8, pad: int = 2, scale: int = GRID_SCALE):
    """Images (uint8 (H, W, 3), same size) -> one uint8 grid image on white, upscaled `scale`x (nearest)."""
    import numpy as np
    if not len(images):
        raise ValueError("no images to put in a grid")
    h, w, _ = images[0].shape
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
    from ramm.corpus.document import encode_png
    from ramm.utils import atomic_write_bytes
    atomic_write_bytes(path, encode_png(pixels))
    return path.name


def _img_tag(src: str) -> str:
    return f'<img src="{html.escape(src)}" class="px">'


def _write_report(out: Path, args, task: str, query_html: str, retrieved, samples, ramm) -> None:
    """index.html (query | retrieved | samples) and result.json."""
    from ramm.utils import atomic_write_json, atomic_write_text
    ret_cells = []
    for i, d in enumerate(retrieved):
        img = ""
        if d.image is not None:
            img = _img_tag(_save_png(out / f"retrieved_{i}.png", d.image))
        ret_cells.append(f'<div class="card">{img}<div>{html.escape(d.text)}</div><small>{html.escape(d.id)}</small></div>')
    sample_cells = [f'<div class="card">{_img_tag(name) if name else ""}<div>{label}</div></div>'
                    for name, label in samples]
    settings = {k: v for k, v in vars(args).items() if k != "func" and not k.endswith("_command")}
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ramm: {html.escape(task)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.row {{ display: flex; gap: 2em; align-items: flex-start; }}
.col {{ flex: 0 0 auto; max-width: 46em; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .8em; }}
.card {{ width: 140px; font-size: .85em; }}
img.px {{ width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc; }}
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
                                            "samples": [{"file": n, "label": lbl} for n, lbl in samples]})
