"""Counting skipped corpus items, so that bulk reads never crash half way and never drop silently."""
from __future__ import annotations

import logging
from collections import Counter

from ramm.corpus.document import BadItem

log = logging.getLogger(__name__)


class SkipCounter:
    """Counts good items and bad ones by reason; with `strict` the first bad item is raised instead."""

    def __init__(self, strict: bool = False, log_first: int = 5):
        self.strict = strict
        self.read = 0
        self.skipped: Counter[str] = Counter()
        self.first: list[BadItem] = []  # the first few bad items, for the report
        self._log_first = log_first

    def ok(self) -> None:
        self.read += 1

    def skip(self, err: BadItem) -> None:
        """Record `err`, or raise it under `strict`."""
        if self.strict:
            raise err
        self.skipped[err.reason] += 1
        if len(self.first) < self._log_first:
            self.first.append(err)
            log.warning("skipped %s", err)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """'N read, M skipped: reason x count, ...' (reasons most frequent first)."""
        s = f"{self.read} read, {self.n_skipped} skipped"
        if self.skipped:
            s += ": " + ", ".join(f"{r} x {n}" for r, n in self.skipped.most_common())
        return s
