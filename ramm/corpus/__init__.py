"""Corpora: the Document type, loaders for users' corpora, and the built-in EmojiBench."""
from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment

__all__ = ["BadItem", "Document", "ImageSegment", "TextSegment", "open_corpus"]


def open_corpus(path, **kw):
    """Pick the loader for `path` (COCO JSON, JSONL/CSV, webdataset shards, EmojiBench dir)."""
    from ramm.corpus.loaders import open_corpus as _open
    return _open(path, **kw)
