"""Corpus formats beyond the built-in loaders: a registry that installed packages fill through entry points.

A format recognises its paths (`detect`), reads them as Documents (`read`) and gives their `CorpusHooks`
(`hooks`). `open_corpus` asks the registered formats about a folder (or a file of no built-in kind) before
its own loaders. Formats come from the `ramm.corpus_formats` entry points (`ramm.plugins`), so that the
library opens an EmojiBench folder without importing the lab that defines it; `register_format` adds one
in-process (tests, notebooks).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ramm.corpus.document import Document
from ramm.corpus.hooks import CorpusHooks
from ramm.corpus.skips import SkipCounter


@dataclass(frozen=True)
class CorpusFormat:
    """One kind of corpus a package adds."""

    name: str  # the Corpus.kind it reads as ("emojibench")
    detect: Callable[[Path], bool]  # is this path (file or folder) in the format
    read: Callable[[Path, SkipCounter], Iterator[Document]]  # its documents; bad items go to the counter
    hooks: Callable[[Path], CorpusHooks]  # its corpus hooks

    def __post_init__(self):
        if not self.name or not all(callable(f) for f in (self.detect, self.read, self.hooks)):
            raise ValueError(f"a CorpusFormat needs a name and callables detect, read, hooks; got {self!r}")


_registered: dict[str, CorpusFormat] = {}
_loaded = False


def register_format(fmt: CorpusFormat) -> None:
    """Add a format for this process (replacing one of the same name)."""
    if not isinstance(fmt, CorpusFormat):
        raise ValueError(f"register_format takes a CorpusFormat, got {type(fmt).__name__}")
    _registered[fmt.name] = fmt


def formats() -> dict[str, CorpusFormat]:
    """Every format: the installed entry points (loaded on first use), then those registered in-process."""
    global _loaded
    if not _loaded:
        # lazy: the plugin loader; installed formats (the lab's) import ramm.corpus themselves
        from ramm.plugins import load_plugins

        for name, fmt in load_plugins("ramm.corpus_formats").items():
            if not isinstance(fmt, CorpusFormat):
                raise ValueError(f"plugin {name!r} of ramm.corpus_formats is a {type(fmt).__name__}, "
                                 f"not a ramm.corpus.formats.CorpusFormat")
            _registered.setdefault(fmt.name, fmt)
        _loaded = True
    return dict(_registered)


def find_format(path: Path) -> CorpusFormat | None:
    """The first format (by name) that recognises `path`, or None."""
    return next((f for _, f in sorted(formats().items()) if f.detect(path)), None)
