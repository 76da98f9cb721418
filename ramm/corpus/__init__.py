"""Corpora: the Document type, loaders for users' corpora (`open_corpus` picks the loader for a path: COCO JSON,
JSONL/CSV, webdataset shards, a registered format's folder; the returned Corpus carries its `hooks`), the hooks a
corpus format adds, and the registry of formats that installed packages (the EmojiBench lab) provide."""
from ramm.corpus.document import BadItem, Document, ImageSegment, TextSegment
from ramm.corpus.hooks import CorpusHooks
from ramm.corpus.loaders import open_corpus

__all__ = ["BadItem", "CorpusHooks", "Document", "ImageSegment", "TextSegment", "open_corpus"]
