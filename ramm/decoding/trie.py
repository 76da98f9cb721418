"""Prefix trie over identifier token sequences, for constrained decoding (GENRE's `genre/trie.py` idea).

A node is a dict {token: child}; a child is another dict, or, at the end of a sequence, the int value
stored for it. Sequences must be prefix-free (GRACE identifiers all end in `</doc>`), so an end never
has children and leaves cost no dict: 100k identifiers fit in a few tens of MB and a lookup is
O(prefix length), independent of the number of identifiers.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence


class PrefixTrie:
    """Maps prefix-free token sequences to int values; `children(prefix)` lists the allowed next tokens."""

    def __init__(self, sequences: Iterable[Sequence[int]] = (), values: Iterable[int] | None = None):
        self.root: dict = {}
        self._len = self._depth = 0
        sequences = list(sequences)
        values = range(len(sequences)) if values is None else list(values)
        if len(values) != len(sequences):
            raise ValueError(f"{len(sequences)} sequences but {len(values)} values")
        for seq, value in zip(sequences, values):
            self.add(seq, value)

    def add(self, seq: Sequence[int], value: int) -> None:
        """Insert one sequence (adding an image = inserting its identifier)."""
        seq = [int(t) for t in seq]
        if not seq:
            raise ValueError("cannot add an empty sequence to the trie")
        node = self.root
        for i, t in enumerate(seq[:-1]):
            child = node.get(t)
            if child is None:
                child = node[t] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"sequence {seq} extends the stored sequence {seq[:i + 1]} (must be prefix-free)")
            node = child
        last = seq[-1]
        if last in node:
            what = "is already stored" if not isinstance(node[last], dict) else "is a prefix of a stored sequence"
            raise ValueError(f"sequence {seq} {what} (identifiers must be unique and prefix-free)")
        node[last] = int(value)
        self._len += 1
        self._depth = max(self._depth, len(seq))

    def _walk(self, prefix: Sequence[int]):
        node = self.root
        for t in prefix:
            if not isinstance(node, dict):
                return None
            node = node.get(int(t))
            if node is None:
                return None
        return node

    def children(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that continue `prefix` towards some stored sequence ([] past an end or off the trie)."""
        node = self._walk(prefix)
        return list(node) if isinstance(node, dict) else []

    def get(self, seq: Sequence[int]) -> int | None:
        """The value of a complete stored sequence, else None."""
        node = self._walk(seq)
        return None if node is None or isinstance(node, dict) else node

    def __contains__(self, seq) -> bool:
        return self.get(seq) is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], int]]:
        """(sequence, value) pairs, depth first."""
        stack: list[tuple[tuple[int, ...], dict]] = [((), self.root)]
        while stack:
            prefix, node = stack.pop()
            for t, child in node.items():
                if isinstance(child, dict):
                    stack.append(((*prefix, t), child))
                else:
                    yield (*prefix, t), child

    def depth(self) -> int:
        """Length of the longest stored sequence (bounds the decoding steps)."""
        return self._depth
