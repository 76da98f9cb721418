"""The run report: the headline experiment's numbers and samples as report.md and report.html.

A run directory holds `results.json`, written by the demo (`save_results`) and read back by
`ramm eval --run DIR` (`load_results`) to re-render the report without recomputing anything.
Images are PNG files under `DIR/report_files/` (`save_image`); report.md links them by relative
path, report.html embeds them (base64) so that it is one self-contained file.

results.json (schema 1)::

    {
      "schema": 1,
      "run": "demo",                                 # run name, the report title
      "created": "2026-11-23T12:00:00+00:00",        # when the results were computed (ISO 8601)
      "fid_features": "FID on ramm-evaluator features", # FID.name: which features FID used; printed with it
      "clip_features": "ramm dual encoder",          # which encoder CLIPScore used (and recognition, before
                                                     # recognition_features existed)
      "recognition_features": "ramm evaluator (exact)", # which network and rule recognition used (optional)
      "scores": {                                    # split -> system -> SystemScores
        "heldout": {"RA": {"n": 382, "fid": 0.41, "clip_score": 27.3, "recognition": 0.62,
                           "exact": 0.4, "cider": 1.10, "bleu4": 0.31, "fid_retriever": 0.12, "recognition_retriever": 0.8},
                    "vanilla": {...}, "retrieval-only": {...}},
        "heldout variants": {...}, "heldout cross-style": {...}, "heldout flags": {...}, "test": {...}
      },
      "retrieval": {"text->image heldout": {"R@1": 0.52, "R@5": 0.81, "R@10": 0.90}, ...},
      "usage": {"heldout variants · image": {"none": 3.08, "retrieved": 2.54, "partner": 3.04, "random": 3.11,
                                             "own image": 1.20},   # RA loss on the main document's image
                "heldout variants · caption": {...}},            # or caption tokens by retrieved context (optional)
      "ceilings": {"train (128 documents, trained on): RA": {"all": 0.05, "flags": 0.04}},  # recognition (optional)
      "notes": ["free text lines shown under the tables"],
      "config": {...},                               # the demo config, shown folded
      "examples": [                                  # the image grid, one Example per row
        {"doc_id": "twitter-1f1ef-1f1f5", "split": "heldout", "prompt": "twitter emoji: japan flag",
         "flag": true, "reference": "report_files/ref-twitter-1f1ef-1f1f5.png",
         "retrieved": [{"doc_id": "google-1f1ef-1f1f5", "text": "google emoji: japan flag",
                        "image": "report_files/...png", "score": 0.93}],
         "samples": {"RA": "report_files/...png", "vanilla": "...", "retrieval-only": "..."},
         "captions": {"RA": "japan flag", "vanilla": "white flag"},
         "references": ["Japan Flag", "flag-jp", "jp"], "track": "cross-style"}
      ]
    }

Metrics missing for a system (captioning for retrieval-only) are null and shown as a dash.
`fid_retriever` and `recognition_retriever` are the measures used before the evaluation network
(the retriever's image tower; recognition among the requested style only): shown once in the
headline table beside the new ones, left out of the comparison, and hidden when no score has them.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ramm.corpus.document import Document, encode_png
from ramm_lab.emojibench import emoji_references, is_flag
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

SCHEMA = 1
# the headline experiment's systems, in display order; "retrieval-only (tokenized)" is the top retrieved image
# encoded and decoded by the image tokenizer, so that its blur is not charged to the generator
SYSTEMS = ("RA", "vanilla", "retrieval-only", "retrieval-only (tokenized)")
FILES_DIR = "report_files"
# metric key -> (column title, format); FID is lower-is-better, the others higher-is-better
METRICS = {
    "fid": ("FID", "{:.4f}"),
    "clip_score": ("CLIPScore", "{:.2f}"),
    "recognition": ("recognition", "{:.1%}"),
    "exact": ("exact caption", "{:.1%}"),
    "cider": ("CIDEr", "{:.3f}"),
    "bleu4": ("BLEU-4", "{:.3f}"),
    "fid_retriever": ("FID on ramm-encoder features (retriever, old)", "{:.4f}"),
    "recognition_retriever": ("recognition (retriever, same style only, old)", "{:.1%}"),
}
OLD_METRICS = ("fid_retriever", "recognition_retriever")  # headline table only, for comparison with older reports


@dataclass
class SystemScores:
    """One system's metrics on one split; None where not measured."""

    n: int = 0  # documents scored
    fid: float | None = None  # FID of generated vs reference images, on `Results.fid_features`
    clip_score: float | None = None  # mean 100 * max(cos(image, prompt), 0)
    recognition: float | None = None  # fraction of images recognised as the requested document
    exact: float | None = None  # fraction of captions that are exactly the document's name (tone included)
    cider: float | None = None  # captioning CIDEr (pycocoevalcap, Python tokenisation)
    bleu4: float | None = None  # captioning BLEU-4
    fid_retriever: float | None = None  # old measure: FID on the retriever's image features
    recognition_retriever: float | None = None  # old measure: recognition by the retriever, same style only

    def __post_init__(self):
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        for k in METRICS:
            v = getattr(self, k)
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(f"score {k} must be a number or null, got {v!r}")


@dataclass
class Retrieved:
    doc_id: str  # memory document id
    text: str  # its text
    image: str | None = None  # its image, a path relative to the run directory
    score: float | None = None  # retrieval similarity


@dataclass
class Example:
    """One row of the image grid."""

    doc_id: str  # the target document (concept, style)
    split: str  # "test" or "heldout"
    prompt: str  # the text -> image prompt
    reference: str  # the real target-style image, relative path
    flag: bool = False  # a flag concept (the rare entities the heldout split is built around)
    retrieved: list[Retrieved] = field(default_factory=list)  # what the RA model saw, best first
    samples: dict[str, str] = field(default_factory=dict)  # system -> generated image, relative path
    captions: dict[str, str] = field(default_factory=dict)  # system -> caption of the reference image
    references: list[str] = field(default_factory=list)  # caption references (name + short names)
    track: str = ""  # evaluation track of the document ("variants" / "cross-style" on EmojiBench; "" if none)

    def __post_init__(self):
        self.retrieved = [r if isinstance(r, Retrieved) else Retrieved(**r) for r in self.retrieved]

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"bad example {d.get('doc_id', '?')}: {e}") from None

    def image_paths(self) -> list[str]:
        return [self.reference, *(r.image for r in self.retrieved if r.image), *self.samples.values()]


@dataclass
class Results:
    run: str  # run name, the report title
    fid_features: str  # which features FID used (FID.name), e.g. "FID on ramm-encoder features"
    clip_features: str = "ramm dual encoder"  # which encoder CLIPScore (and, without the next, recognition) used
    recognition_features: str = ""  # which network and rule recognition used ("" in older results)
    scores: dict[str, dict[str, SystemScores]] = field(default_factory=dict)  # split -> system -> scores
    retrieval: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> {"R@1": ...}
    notes: list[str] = field(default_factory=list)  # free text shown under the tables
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> context -> RA loss per token
    ceilings: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> {"all"/"flags": recognition}
    memory_holds: dict[str, dict[str, float]] = field(default_factory=dict)  # row label -> {subset: recognition}: asked for a document the memory holds
    config: dict = field(default_factory=dict)  # the run's config
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self):
        if not self.run:
            raise ValueError("results need a run name")
        self.scores = {split: {sys: s if isinstance(s, SystemScores) else SystemScores(**s) for sys, s in systems.items()}
                       for split, systems in self.scores.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Results":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as e:
            raise ValueError(f"bad results: {e}") from None


def save_image(run_dir: str | Path, name: str, pixels: np.ndarray) -> str:
    """Write uint8 (H, W, 3) pixels to run_dir/report_files/<name>.png; returns the relative path."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"image name {name!r} must be letters, digits, '.', '_' or '-'")
    rel = f"{FILES_DIR}/{name}.png"
    atomic_write_bytes(Path(run_dir) / rel, encode_png(pixels))
    return rel


def save_results(run_dir: str | Path, results: Results, examples: list[Example]) -> Path:
    path = Path(run_dir) / "results.json"
    atomic_write_json(path, {"schema": SCHEMA, **asdict(results), "examples": [asdict(e) for e in examples]})
    return path


def load_results(run_dir: str | Path) -> tuple[Results, list[Example]]:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"no results at {path} (run the demo first)")
    d = json.loads(path.read_text())
    if d.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {d.get('schema')!r}, expected {SCHEMA}")
    return Results.from_dict(d), [Example.from_dict(e) for e in d.get("examples", [])]


def pick_examples(docs: list[Document], per_split: int | dict[str, int] = 6, flags: int = 2,
                  splits: tuple[str, ...] = ("test", "heldout"), group=None) -> list[Document]:
    """A fixed set for the image grid: per split (and per `group(doc)` within it, e.g. the evaluation
    track), `flags` flag documents then others up to `per_split` (an int, or split -> int).

    Order is a hash of the document id, so the same corpus always gives the same set.
    """
    counts = per_split if isinstance(per_split, dict) else {s: per_split for s in splits}
    if any(flags > n for n in counts.values() if n):
        raise ValueError(f"flags ({flags}) cannot exceed per_split ({per_split})")
    order = sorted(docs, key=lambda d: hashlib.sha1(d.id.encode()).hexdigest())
    out = []
    for split in splits:
        pool = [d for d in order if d.metadata.get("split") == split]
        for g in dict.fromkeys(group(d) for d in pool) if group else [None]:
            sub = [d for d in pool if group is None or group(d) == g]
            chosen = [d for d in sub if is_flag(d)][:flags]
            taken = {d.id for d in chosen}
            chosen += [d for d in sub if d.id not in taken][: counts.get(split, 0) - len(chosen)]
            out += chosen
    return out


def make_example(run_dir: str | Path, doc: Document, retrieved: list[tuple[Document, float]],
                 samples: dict[str, np.ndarray], captions: dict[str, str] | None = None, track: str = "") -> Example:
    """Save one grid row's images under run_dir/report_files/ and describe it.

    doc: the target (text + real image, EmojiBench metadata); retrieved: what the RA model saw;
    samples: system -> generated uint8 (H, W, 3) image.
    """
    if doc.image is None:
        raise ValueError(f"example {doc.id} has no reference image")
    stem = _file_stem(doc.id)
    return Example(
        doc_id=doc.id, split=doc.metadata.get("split", "?"), prompt=doc.text, flag=is_flag(doc),
        reference=save_image(run_dir, f"{stem}-reference", doc.image),
        retrieved=[Retrieved(doc_id=r.id, text=r.text, score=float(score),
                             image=save_image(run_dir, f"{stem}-retrieved{i}", r.image) if r.image is not None else None)
                   for i, (r, score) in enumerate(retrieved)],
        samples={name: save_image(run_dir, f"{stem}-{_file_stem(name)}", img) for name, img in samples.items()},
        captions=dict(captions or {}), references=emoji_references(doc.metadata) if doc.metadata.get("name") else [],
        track=track)


def _file_stem(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _fmt(key: str, value: float | None) -> str:
    return "–" if value is None else METRICS[key][1].format(value)


def _ordered(systems: set[str]) -> list[str]:
    """The known systems in display order, then any others alphabetically."""
    return [s for s in SYSTEMS if s in systems] + sorted(systems - set(SYSTEMS))


def _systems(results: Results) -> list[str]:
    return _ordered({s for systems in results.scores.values() for s in systems})


def _score_keys(results: Results) -> list[str]:
    """The metrics of the headline table: all but the old measures that no score has."""
    present = {k for systems in results.scores.values() for s in systems.values() for k in OLD_METRICS
               if getattr(s, k) is not None}
    return [k for k in METRICS if k not in OLD_METRICS or k in present]


def _score_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    keys = _score_keys(results)
    header = ["split", "system", "n"] + [results.fid_features if k == "fid" else METRICS[k][0] for k in keys]
    rows = []
    for split, systems in results.scores.items():
        for name in _systems(results):
            if name in systems:
                s = systems[name]
                rows.append([split, name, str(s.n)] + [_fmt(k, getattr(s, k)) for k in keys])
    return header, rows


def _comparison_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    """RA's relative change over each baseline per metric (a lower FID is an improvement); recognition,
    a rate that is often 0 for a baseline, as a difference in percentage points."""
    keys = [k for k in METRICS if k not in OLD_METRICS]
    header = ["split", "RA vs"] + [METRICS[k][0] for k in keys]
    rows = []
    for split, systems in results.scores.items():
        if "RA" not in systems:
            continue
        for base in (s for s in _systems(results) if s != "RA" and s in systems):
            cells = []
            for k in keys:
                ra, other = getattr(systems["RA"], k), getattr(systems[base], k)
                if ra is None or other is None:
                    cells.append("–")
                elif k in ("recognition", "exact"):
                    cells.append(f"{100 * (ra - other):+.0f} pts")
                else:
                    # a relative change over a baseline that the table shows as zero is noise, not a ratio
                    shown_zero = not any(c in "123456789" for c in METRICS[k][1].format(other))
                    cells.append("–" if shown_zero else f"{(ra - other) / abs(other):+.0%}")
            rows.append([split, base] + cells)
    return header, rows


def _retrieval_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    ks = sorted({k for r in results.retrieval.values() for k in r}, key=lambda k: (len(k), k))
    return ["query -> memory"] + ks, [[name] + [f"{r[k]:.3f}" if k in r else "–" for k in ks]
                                      for name, r in results.retrieval.items()]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


def headline_table(results: Results) -> str:
    """The scores table as markdown (what `make demo` prints at the end)."""
    return _md_table(*_score_rows(results))


def _example_cells(ex: Example, systems: list[str], img, text) -> list[str]:
    """One grid row; `img(path, caption)` and `text(str)` render for the target format."""
    label = f"{ex.doc_id}{' (flag)' if ex.flag else ''}"
    retrieved = " ".join(img(r.image, f"{r.text}" + ("" if r.score is None else f" ({r.score:.2f})"))
                         for r in ex.retrieved if r.image) or text("none")
    captions = "; ".join(f"{s}: {c}" for s, c in ex.captions.items())
    refs = " / ".join(ex.references)
    return ([text(f"{label}: {ex.prompt}"), retrieved]
            + [img(ex.samples[s], s) if s in ex.samples else text("–") for s in systems]
            + [img(ex.reference, "reference"), text(captions + (f" [refs: {refs}]" if refs else ""))])


def _grid_header(systems: list[str]) -> list[str]:
    """Evidence first, then what each system drew from it, then the truth: the eye compares left to right."""
    return ["document: prompt", "evidence (retrieved, k)"] + systems + ["reference", "captions"]


def _example_groups(examples: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(f"{ex.split} {ex.track}".strip(), []).append(ex)
    return groups


def _intro(results: Results) -> str:
    caveat = ("" if "Inception" in results.fid_features else
              " These features are not Inception's: compare values only between the systems of this report.")
    if results.recognition_features:
        return (f"Computed {results.created}. FID column: {results.fid_features}.{caveat} "
                f"CLIPScore uses the {results.clip_features}; recognition uses the {results.recognition_features}.")
    return (f"Computed {results.created}. FID column: {results.fid_features}.{caveat} "
            f"CLIPScore and recognition use the {results.clip_features}.")


def _tables(results: Results, examples: list[Example], img, text) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rendered rows) in report order; `img(path, caption)` and `text(s)` render a cell."""
    plain = [("Headline", *_score_rows(results))]
    cmp_header, cmp_rows = _comparison_rows(results)
    if cmp_rows:
        plain.append(("RA against the baselines (relative change)", cmp_header, cmp_rows))
    if results.retrieval:
        plain.append(("Retrieval (Recall@K)", *_retrieval_rows(results)))
    if results.usage:
        plain.append(("Does the RA generator use what it retrieves? (its loss on the main document's image or caption "
                      "tokens, nats per token, by retrieved context)",
                      *_usage_rows(results)))
    if results.memory_holds:
        plain.append(("Asked for a document the memory holds (exact recognition of the generated image; the "
                      "document itself is retrieved)", *_recognition_rows(results.memory_holds)))
    if results.ceilings:
        plain.append(("How recognisable can an image be? (recognition of references through the tokenizer, "
                      "and of the generators' images of concepts they trained on)", *_recognition_rows(results.ceilings)))
    tables = [(title, header, [[text(c) for c in r] for r in rows]) for title, header, rows in plain]
    systems = _example_systems(examples)
    for split, group in _example_groups(examples).items():
        tables.append((f"Samples: {split}", _grid_header(systems), [_example_cells(ex, systems, img, text) for ex in group]))
    return tables


def _usage_rows(results: Results) -> tuple[list[str], list[list[str]]]:
    contexts = list(dict.fromkeys(c for row in results.usage.values() for c in row))
    rows = [[split, *(f"{row[c]:.3f}" if c in row else "-" for c in contexts)] for split, row in results.usage.items()]
    return ["documents · tokens", *contexts], rows


def _recognition_rows(table: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    cols = list(dict.fromkeys(c for row in table.values() for c in row))
    rows = [[label, *(f"{row[c]:.1%}" if c in row else "-" for c in cols)] for label, row in table.items()]
    return ["images", *cols], rows


def render_markdown(results: Results, examples: list[Example]) -> str:
    md_img = lambda path, cap: f"![{cap.replace(']', ')').replace('[', '(')}]({path})"
    out = [f"# ramm report: {results.run}", "", _intro(results), ""]
    for title, header, rows in _tables(results, examples, md_img, lambda s: s):
        out += [f"## {title}", "", _md_table(header, rows), ""]
    if results.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    if results.config:
        out += ["## Config", "", "```json", json.dumps(results.config, indent=2), "```", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:2px;text-align:center}figcaption{font-size:11px;max-width:96px}
img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ddd}.note{color:#555}"""
_NUMBER = re.compile(r"^[+-]?[\d.,]+(%| pts)?$")


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escaped text or figures); numbers are right-aligned."""
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if _NUMBER.match(c) else f"<td>{c}</td>" for c in r)
                   + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{body}</table>"


def render_html(results: Results, examples: list[Example], run_dir: Path) -> str:
    def img(path: str, cap: str) -> str:
        data = base64.b64encode(_read_image(run_dir, path)).decode()
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(cap)}">'
                f"<figcaption>{html.escape(cap)}</figcaption></figure>")

    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ramm report: {esc(results.run)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>ramm report: {esc(results.run)}</h1>",
             f"<p class='note'>{esc(_intro(results))}</p>"]
    for title, header, rows in _tables(results, examples, img, esc):
        parts += [f"<h2>{esc(title)}</h2>", _html_table(header, rows)]
    if results.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in results.notes) + "</ul>")
    if results.config:
        parts.append(f"<details><summary>Config</summary><pre>{esc(json.dumps(results.config, indent=2))}</pre></details>")
    return "\n".join(parts + ["</body></html>"])


def _example_systems(examples: list[Example]) -> list[str]:
    return _ordered({s for ex in examples for s in ex.samples})


def _read_image(run_dir: Path, rel: str) -> bytes:
    path = run_dir / rel
    if not path.is_file():
        raise FileNotFoundError(f"report image {rel} not found under {run_dir}")
    return path.read_bytes()


def write_report(run_dir: str | Path, results: Results | dict, examples: list[Example | dict]) -> tuple[Path, Path]:
    """Render report.md and report.html into run_dir; image paths in examples are relative to it."""
    run_dir = Path(run_dir)
    results = results if isinstance(results, Results) else Results.from_dict(results)
    examples = [e if isinstance(e, Example) else Example.from_dict(e) for e in examples]
    for ex in examples:
        for rel in ex.image_paths():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ValueError(f"example {ex.doc_id}: image path {rel!r} must be relative to the run directory")
            _read_image(run_dir, rel)
    md, page = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md, render_markdown(results, examples))
    atomic_write_text(page, render_html(results, examples, run_dir))
    return md, page
