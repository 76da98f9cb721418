"""Corpora: the Document type, loaders for users' corpora, the hooks a corpus format adds, and the registry of
formats that installed packages (the EmojiBench lab) provide."""
from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment
from ramm.corpus.hooks import CorpusHooks

__all__ = ["BadItem", "CorpusHooks", "Document", "ImageSegment", "TextSegment", "open_corpus"]


def open_corpus(path, **kw):
    """Pick the loader for `path` (COCO JSON, JSONL/CSV, webdataset shards, a registered format's
    folder); the returned Corpus carries its `hooks`."""
    from ramm.corpus.loaders import open_corpus as _open
    return _open(path, **kw)
