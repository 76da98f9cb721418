"""Caption metrics: CIDEr (Vedantam et al. 2015) and BLEU-4 from pycocoevalcap, without Java.

RA-CM3 (section 4.3) scores captions with CIDEr from the COCO toolkit. That toolkit tokenises with
Stanford's PTBTokenizer, a Java program; we tokenise in Python instead and call the toolkit's
`Cider` and `Bleu` scorers directly: lowercase, every character that is neither a letter nor a digit
becomes a space (so "flag-jp" and "smiling_face" split into words, and punctuation disappears),
then split on whitespace. On short, plain captions (EmojiBench's names) this matches what PTB does up to the
splitting of hyphenated and underscored words, which only makes short names comparable to names.

CIDEr's idf comes from the references of the scored set itself, so it needs several items: with a
single item every n-gram has idf 0 and the score is 0.
"""
from __future__ import annotations

import re

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

_NON_WORD = re.compile(r"[^\w]|_")


def tokenize(text: str) -> str:
    """The documented stand-in for PTBTokenizer: lowercase words joined by single spaces."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _prepare(candidates: dict[str, str], references: dict[str, list[str]]):
    if set(candidates) != set(references):
        missing = sorted(set(candidates) ^ set(references))
        raise ValueError(f"candidates and references must have the same ids; differing: {missing[:5]}")
    if not candidates:
        raise ValueError("no captions to score")
    res, gts = {}, {}
    for key, cand in candidates.items():
        if not isinstance(cand, str):
            raise ValueError(f"caption of {key} must be a string, got {type(cand).__name__}")
        refs = [tokenize(r) for r in references[key] if tokenize(r)]
        if not refs:
            raise ValueError(f"item {key} has no non-empty reference")
        res[key], gts[key] = [tokenize(cand)], refs
    return gts, res


def cider(candidates: dict[str, str], references: dict[str, list[str]]) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr (the toolkit's CIDEr-D, x1 scale: COCO papers print 100x) and the per-item scores."""
    gts, res = _prepare(candidates, references)
    score, scores = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(gts, scores)}


def bleu4(candidates: dict[str, str], references: dict[str, list[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] (closest reference length for the brevity penalty, as the toolkit)."""
    gts, res = _prepare(candidates, references)
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(score[3])


def exact_match(candidates: dict[str, str], names: dict[str, str]) -> float:
    """Fraction of items whose caption, tokenised, is exactly the reference name (the caller strips any
    template around captions; on EmojiBench the name carries the skin tone: "waving hand sign, dark skin
    tone"). CIDEr rewards a caption for sharing most words with a name; this asks whether it *is* the
    name, which is what copying a retrieved name gives and what the headline's variants track (one word of
    tone apart) needs."""
    if set(candidates) != set(names):
        raise ValueError(f"candidates and names must have the same ids; differing: {sorted(set(candidates) ^ set(names))[:5]}")
    if not candidates:
        raise ValueError("no captions to score")
    return sum(tokenize(c) == tokenize(names[k]) for k, c in candidates.items()) / len(candidates)
