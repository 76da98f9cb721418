"""Scoring the headline experiment: RA vs vanilla vs retrieval-only on test and heldout documents.

For each document (concept c, style s) of a reported split (docs/emojibench.md):
- text -> image: prompt "<s> emoji: <name>"; RA sees k documents retrieved by that text (the document
  itself left out, so the other style of c is the knowledge to use); vanilla sees none; retrieval-only
  returns the top-1 retrieved image. Scored by FID and exact recognition on the evaluation network
  (ramm_lab.evaluation_network: trained on every document to tell (concept, style) apart, never used by
  the system) and CLIPScore; FID and style-restricted recognition on the retriever's image tower (the
  measures before the evaluation network, which the other style's image passes) are kept as extra columns.
- image -> text: caption the document's image by CM3 infilling; RA sees k documents retrieved by the
  image. Scored by CIDEr and BLEU-4 against name + short names.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ramm.corpus.document import Document
from ramm.decoding.decoder import generate_batched
from ramm.decoding.rerank import rank
from ramm.evaluation.captioning import bleu4, cider, exact_match
from ramm.evaluation.clipscore import clip_score, clip_scores
from ramm.evaluation.fid import FID
from ramm.evaluation.recognition import Recognizer
from ramm.evaluation.retrieval_usage import retrieval_usage
from ramm.model.bundle import load_generator
from ramm.retrieval.memory import Memory
from ramm.tokenizers.code_cache import encode_images_cached, with_codes
from ramm.tokenizers.image_tokenizer import decode_pixels
from ramm.training.ra_data import partner_ids, precompute_neighbours, relative_ids
from ramm_lab.emojibench import RECOGNITION_KEYS, emoji_references, is_flag, sibling_key, strip_style_prefix, track
from ramm_lab.evaluation_network import FID_NAME, load_evaluator
from ramm_lab.report import SYSTEMS, Results, SystemScores, make_example, pick_examples, save_results, write_report

log = logging.getLogger(__name__)


def _subset(docs: list[Document], limit: int) -> list[Document]:
    """A fixed, hash-ordered subset (all documents when limit is 0)."""
    if not limit or limit >= len(docs):
        return docs
    return sorted(docs, key=lambda d: hashlib.sha1(d.id.encode()).hexdigest())[:limit]


def decode_in_batches(model, fmt, prompts: Sequence[list[int]], *, desc: str, **kw) -> list[list[int]]:
    """`generate_batched` (the facade's batched decoding) with a progress bar."""
    with tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False) as bar:
        return generate_batched(model, fmt.vocab, prompts, tokens_per_image=fmt.tokens_per_image,
                                progress=lambda done: bar.update(done - bar.n), **kw)


def generate_images(model, fmt, captions: list[str], retrieved: list[list[Document]], ecfg, encoder,
                    desc: str) -> np.ndarray:
    """One image per caption (uint8 (N, H, W, 3)): the best of n_samples by image-text similarity."""
    n = ecfg.n_samples
    prompts = [fmt.image_prompt(c, r) for c, r in zip(captions, retrieved) for _ in range(n)]
    dcfg = ecfg.image
    uncond = [fmt.unconditional_image_prompt()] * len(prompts) if dcfg.needs_uncond else None
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(ecfg.seed)
    tpi = fmt.tokens_per_image
    rows = decode_in_batches(model, fmt, prompts, uncond_prompts=uncond, config=dcfg, batch_size=ecfg.batch_size,
                             generator=gen, desc=desc, max_new_tokens=tpi + 1, stop_after_image=True)
    codes = torch.tensor([[fmt.vocab.code(t) for t in r[:tpi]] for r in rows], dtype=torch.long)
    images = decode_pixels(fmt.image_tokenizer, codes)
    images = images.reshape(len(captions), n, *images.shape[1:])
    if n == 1:
        return images[:, 0]
    sims = clip_scores(encoder, images.reshape(-1, *images.shape[2:]), [c for c in captions for _ in range(n)])
    best = [rank(row)[0] for row in sims.reshape(len(captions), n)]  # the facade's best-of-n rule, by CLIPScore
    return images[np.arange(len(captions)), best]


def generate_captions(model, fmt, codes: list[np.ndarray], retrieved: list[list[Document]], ecfg, desc: str) -> list[str]:
    """Image -> text by infilling the masked caption (greedy or sampled)."""
    prompts = [fmt.caption_prompt(c, r) for c, r in zip(codes, retrieved)]
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(ecfg.seed)
    rows = decode_in_batches(model, fmt, prompts, config=ecfg.caption,
                             batch_size=ecfg.batch_size, generator=gen, desc=desc,
                             max_new_tokens=ecfg.max_caption_tokens, stop_tokens=(fmt.vocab.eos,), allow_images=False)
    return [fmt.caption_text(r) for r in rows]


def evaluate_headline(run: Path, by_split: dict[str, list[Document]], docs: list[Document], cfg, recall: dict,
                      stages: dict, report: Callable[[str], None]) -> dict:
    """Generate, score, write results.json + report.md/html under `run`; returns the scores."""
    ecfg = cfg.evaluation
    models = {name: load_generator(run / f"generator_{d}") for name, d in (("RA", "ra"), ("vanilla", "vanilla"))}
    fmt = models["RA"][1]
    memory = Memory.load(run / "memory")
    encoder = memory.encoder
    pool = {d.id: d for d in docs}
    codes = encode_images_cached(fmt.image_tokenizer, run / "tokenizer", list(pool.values()))
    lookup = {i: with_codes(d, codes) for i, d in pool.items()}
    everyone, group = list(pool.values()), cfg.generator.ra.group_by
    partners = partner_ids(everyone, everyone, group)  # the other style: the usage probe's 'partner'
    relatives = relative_ids(everyone, everyone, group, sibling_key)  # exempt from the diversity rule, as in training
    ra_cfg = replace(cfg.generator.ra, n_candidates=ecfg.k)
    evaluator = load_evaluator(run / "evaluator")
    fid = FID.from_encoder(evaluator, name=FID_NAME)
    # exact: the nearest of ALL real images must be the document itself
    recognizer = Recognizer(evaluator, docs, mode="exact", **RECOGNITION_KEYS)
    # the measures before the evaluator (the retriever's image tower, which maps both styles together)
    fid_retriever = FID.from_encoder(encoder)
    recognizer_retriever = Recognizer(encoder, docs, mode="group", **RECOGNITION_KEYS)

    scores: dict[str, dict[str, SystemScores]] = {}
    usage: dict[str, dict[str, float]] = {}
    outputs: dict[str, dict] = {}
    for split in ecfg.splits:
        eval_docs = [lookup[d.id] for d in _subset(by_split.get(split, []), ecfg.limit)]
        if not eval_docs:
            continue
        got = retrieve(memory, eval_docs, ra_cfg, relatives, lookup, ecfg.k)
        by_text, by_image = got["text"], got["image"]
        captions = [d.text for d in eval_docs]
        images = {
            "RA": generate_images(models["RA"][0], fmt, captions, by_text, ecfg, encoder, f"{split} RA images"),
            "vanilla": generate_images(models["vanilla"][0], fmt, captions, [[] for _ in eval_docs], ecfg, encoder,
                                       f"{split} vanilla images"),
            "retrieval-only": np.stack([r[0].image for r in by_text]),
            # the tokenizer's blur is not the generator's fault: the baseline a perfect copier would match
            "retrieval-only (tokenized)": decode_pixels(fmt.image_tokenizer, torch.tensor(
                np.stack([np.asarray(r[0].images[0].tokens) for r in by_text]), dtype=torch.long)),
        }
        own = [np.asarray(d.images[0].tokens) for d in eval_docs]
        texts = {
            "RA": generate_captions(models["RA"][0], fmt, own, by_image, ecfg, f"{split} RA captions"),
            "vanilla": generate_captions(models["vanilla"][0], fmt, own, [[] for _ in eval_docs], ecfg,
                                         f"{split} vanilla captions"),
            "retrieval-only": [r[0].text for r in by_image],
        }
        texts["retrieval-only (tokenized)"] = texts["retrieval-only"]
        outputs[split] = {"docs": eval_docs, "images": images, "captions": texts, "retrieved": by_text}
        mates = {d.id: [lookup[p] for p in sorted(partners.get(d.id, ()))] for d in eval_docs}
        tracks = np.array([track(d.metadata) for d in eval_docs])
        subsets = {split: np.ones(len(eval_docs), bool)}
        for t in dict.fromkeys(tracks):
            subsets[f"{split} {t}"] = tracks == t
        flags = np.array([is_flag(d) for d in eval_docs])
        if flags.sum() >= 2:
            subsets[f"{split} flags"] = flags
        for t in dict.fromkeys(tracks):  # the usage probe per track and per modality
            idx = [i for i, x in enumerate(tracks) if x == t and mates[eval_docs[i].id]]
            if ecfg.usage_limit:
                keep = {d.id for d in _subset([eval_docs[i] for i in idx], ecfg.usage_limit)}
                idx = [i for i in idx if eval_docs[i].id in keep]
            if not idx:
                continue
            sel_docs = [eval_docs[i] for i in idx]
            for modality, got_kind in (("image", by_text), ("caption", by_image)):
                label = f"{split} {t} · {modality}"
                usage[label] = retrieval_usage(models["RA"][0], fmt, sel_docs, [got_kind[i] for i in idx], mates,
                                               modality=modality, group_by=group)
                report(f"[evaluate] RA {label}-token loss by retrieved context: "
                       + ", ".join(f"{c} {v:.3f}" for c, v in usage[label].items()))
        for name, sel in subsets.items():
            sub = [d for d, s in zip(eval_docs, sel) if s]
            real = np.stack([d.image for d in sub])
            refs = {d.id: emoji_references(d.metadata) for d in sub}
            scores[name] = {}
            for system in SYSTEMS:
                gen = images[system][sel]
                with _threads(1):  # torchmetrics' eigvals is far slower multi-threaded on small matrices
                    f, f_old = fid(real, gen), fid_retriever(real, gen)
                asked = [d.metadata["concept"] for d in sub], [d.metadata["style"] for d in sub]
                rec, rec_old = recognizer(gen, *asked), recognizer_retriever(gen, *asked)
                cands = {d.id: strip_style_prefix(c) for d, c, s in zip(eval_docs, texts[system], sel) if s}
                scores[name][system] = SystemScores(
                    n=len(sub), fid=f, clip_score=clip_score(encoder, gen, [d.text for d in sub]),
                    recognition=rec.rate, exact=exact_match(cands, {d.id: d.metadata.get("name", "") for d in sub}),
                    cider=cider(cands, refs)[0], bleu4=bleu4(cands, refs),
                    fid_retriever=f_old, recognition_retriever=rec_old.rate)
            report(f"[evaluate] {name}: " + "; ".join(
                f"{s} FID {v.fid:.4f} rec {v.recognition:.1%} (retriever: FID {v.fid_retriever:.4f} "
                f"rec {v.recognition_retriever:.1%}) exact {v.exact:.1%} CIDEr {v.cider:.3f}"
                for s, v in scores[name].items()))

    ceilings = recognition_ceilings(fmt, outputs, recognizer)
    holds = memory_holds(models, fmt, outputs, by_split.get("train", []), lookup, memory, ra_cfg, relatives,
                         recognizer, ecfg)
    for label, row in {**holds, **ceilings}.items():
        report(f"[evaluate] recognition, {label}: " + ", ".join(f"{k} {v:.1%}" for k, v in row.items()))

    examples = []
    for d in pick_examples([x for o in outputs.values() for x in o["docs"]], ecfg.examples_per_split,
                           ecfg.example_flags, ecfg.splits, group=lambda d: track(d.metadata)):
        o = outputs[d.metadata["split"]]
        i = [x.id for x in o["docs"]].index(d.id)
        q = encoder.embed_text([d.text])
        retrieved = [(r, float((q @ encoder.embed_documents([r]).T).item())) for r in o["retrieved"][i]]
        examples.append(make_example(run, d, retrieved, {s: o["images"][s][i] for s in SYSTEMS},
                                     {s: o["captions"][s][i] for s in SYSTEMS}, track=track(d.metadata)))

    notes = [
        f"FID and recognition use the evaluation network ({run / 'evaluator'}): a small CNN trained on every "
        f"EmojiBench document to tell documents (concept, style) apart, never used by the system "
        f"({stages.get('evaluator', {}).get('steps', '?')} steps, {stages.get('evaluator', {}).get('train_seconds', '?')} s). "
        "It is not Inception: compare values only within this report. Recognition is exact: the nearest of all "
        "real images (every style) must be the requested document, so the other style's image is a miss. The "
        "columns marked 'retriever, old' are the earlier measures, on the retriever's image tower (trained to map "
        "both styles of a concept together; recognition among the requested style only).",
        f"Generators: same preset, data order and {stages['generator_ra'].get('steps')} steps; RA trained "
        f"{stages['generator_ra'].get('minutes', 0):.1f} min, vanilla {stages['generator_vanilla'].get('minutes', 0):.1f} min.",
        f"Validation image-token loss on heldout with k={cfg.evaluation.k}: RA "
        f"{_get(stages['generator_ra'], 'heldout_image_loss_k2')}, vanilla {_get(stages['generator_vanilla'], 'heldout_image_loss_k0')}.",
        f"Image tokenizer on test: PSNR {_get(stages['tokenizer'], 'psnr')} dB, codebook usage {_get(stages['tokenizer'], 'usage')}.",
        f"Decoding: images {ecfg.image.method} (top-p {ecfg.image.top_p}, T {ecfg.image.temperature}, best of {ecfg.n_samples}); "
        f"captions {ecfg.caption.method}. Retrieval: k={ecfg.k}, leave-one-out by document.",
    ]
    if usage:
        notes.append("Retrieved contexts: 'retrieved' = what the task retrieves (the memory's top documents for the "
                     "caption when drawing the image, for the image when writing the caption); 'partner' = only the same "
                     "concept's other style; 'random' = a document of another concept; 'own image' = the target "
                     "document itself, an oracle no training input contains (how much copying could give).")
    notes.append("Tracks: 'variants' = documents of concepts with skin tones (their other tones in the same style are "
                 "in the memory); 'cross-style' = all others (only the other style is). 'exact caption' = the caption is "
                 "the document's name, tone included; retrieval-only's caption is its top image-retrieved document's.")
    results = Results(run=cfg.name, fid_features=fid.name, scores=scores, retrieval=recall, notes=notes,
                      config=asdict(cfg), usage=usage, ceilings=ceilings, memory_holds=holds,
                      recognition_features="ramm evaluator (exact: nearest of all real images)")
    save_results(run, results, examples)
    md, html = write_report(run, results, examples)
    return {"report": str(md), "html": str(html), "usage": usage,
            "scores": {s: {k: v.__dict__ for k, v in d.items()} for s, d in scores.items()}}


def retrieve(memory, docs: list[Document], ra_cfg, partners: dict, lookup: dict, k: int,
             kinds: tuple[str, ...] = ("text", "image"), leave_one_out: bool = True) -> dict[str, list[list[Document]]]:
    """{query kind: the top k documents per document}: inference retrieval, leave-one-out unless told
    otherwise, no query dropout."""
    nb = precompute_neighbours(memory, docs, ra_cfg, partners, dropout=0.0, kinds=kinds, leave_one_out=leave_one_out)
    return {kind: [[lookup[i] for i in row[:k]] for row in rows] for kind, rows in nb.items()}


def train_probe(train: list[Document], n: int) -> list[Document]:
    """A fixed subset of n train documents, half of them flags (fewer when there are fewer flags)."""
    flags = [d for d in train if is_flag(d)]
    others = [d for d in train if not is_flag(d)]
    n_flags = min(len(flags), n // 2)
    # _subset(docs, 0) means "all", so an empty share is taken explicitly
    return (_subset(flags, n_flags) if n_flags else []) + (_subset(others, n - n_flags) if n > n_flags else [])


def recognition_rates(recognizer, images: np.ndarray, docs: list[Document]) -> dict[str, float]:
    """Exact recognition of `images` (one per document) over all documents, flags and each track."""
    hits = np.array(recognizer(images, [d.metadata["concept"] for d in docs], [d.metadata["style"] for d in docs]).hits)
    out = {"all": float(hits.mean())}
    for name, sel in (("flags", np.array([is_flag(d) for d in docs])),
                      *((t, np.array([track(d.metadata) == t for d in docs])) for t in ("variants", "cross-style"))):
        if sel.any():
            out[name] = float(hits[sel].mean())
    return out


def recognition_ceilings(fmt, outputs: dict, recognizer) -> dict[str, dict[str, float]]:
    """{row label: rates}: the tokenizer's reconstruction of each reported split's references, which bounds
    the recognition of every token generator."""
    out: dict[str, dict[str, float]] = {}
    for split, o in outputs.items():
        codes = torch.tensor(np.stack([np.asarray(d.images[0].tokens) for d in o["docs"]]), dtype=torch.long)
        out[f"{split}: the tokenizer's reconstruction of the references"] = recognition_rates(
            recognizer, decode_pixels(fmt.image_tokenizer, codes), o["docs"])
    return out


def memory_holds(models: dict, fmt, outputs: dict, train: list[Document], lookup: dict, memory, ra_cfg,
                 partners: dict, recognizer, ecfg) -> dict[str, dict[str, float]]:
    """{row label: rates}: asked for a document the memory holds, does RA draw it? Its own document is
    retrieved (text retrieval finds it first), as in a user's memory; the headline's heldout rows stay
    leave-one-out. Train documents (concepts both generators trained on; vanilla for comparison) and
    heldout documents whose own document is *allowed* (never the protocol's heldout rows)."""
    n = ecfg.train_probe
    if not n:
        return {}
    probes = {"train": train_probe([lookup[d.id] for d in train if d.id in lookup], n)}
    if "heldout" in outputs:
        probes["heldout"] = _subset(outputs["heldout"]["docs"], n)
    out: dict[str, dict[str, float]] = {}
    for split, docs in probes.items():
        if not docs:
            continue
        own = retrieve(memory, docs, ra_cfg, partners, lookup, ecfg.k, kinds=("text",), leave_one_out=False)["text"]
        captions = [d.text for d in docs]
        label = (f"train ({len(docs)} documents, trained on)" if split == "train" else
                 f"heldout ({len(docs)} documents) with their own document ALLOWED in the memory (not the protocol)")
        out[f"{label}: RA, own document retrieved"] = recognition_rates(recognizer, generate_images(
            models["RA"][0], fmt, captions, own, ecfg, memory.encoder, f"{split} RA images, own document"), docs)
        if split == "train":
            out[f"{label}: vanilla"] = recognition_rates(recognizer, generate_images(
                models["vanilla"][0], fmt, captions, [[] for _ in docs], ecfg, memory.encoder,
                "train vanilla images"), docs)
    return out


def _get(d: dict, k: str) -> str:
    v = d.get(k)
    return f"{v:.4f}" if isinstance(v, float) else "n/a"


class _threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
