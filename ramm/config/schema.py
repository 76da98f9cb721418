"""Configs in and out: JSON to a typed dataclass (nested sections included) and back, each unknown key a
ValueError naming the dotted field and the file, and each field's help read from its `# comment`.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize
import types
import typing
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from ramm.utils import atomic_write_json


def require(cfg, names, label: str | None = None, spell=str) -> None:
    """ValueError listing the fields of `names` that are empty (paths a run needs but that default to "", so
    that a demo or a config file can fill them); `spell` turns a field name into what the user types."""
    missing = [spell(n) for n in names if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"{label or type(cfg).__name__}: set {', '.join(missing)}")



def dataclass_of(tp) -> type | None:
    """The dataclass in an annotation (`X`, `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


@cache
def type_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, where: str = "config", prefix: str = ""):
    """Build `cls` from JSON data, nested dataclasses included. An unknown or misspelt key raises a
    ValueError naming the field (dotted, `trainer.stepz`) and `where` (the file)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {prefix.rstrip('.') or cls.__name__} must be an object, got {type(data).__name__}")
    check_keys(cls, data, where, prefix)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints, kwargs = type_hints(cls), {}
    for key, value in data.items():
        sub = dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, _with_default(names[key], value), where, f"{prefix}{key}.")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ValueError(f"{where}: {prefix}{e}") from None


def check_keys(cls, data: dict, where: str = "config", prefix: str = "") -> None:
    """Raise a ValueError naming the first unknown key (dotted) and `where`, nested sections included."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field {', '.join(prefix + k for k in unknown)} "
                         f"({cls.__name__} has {', '.join(sorted(names))})")
    hints = type_hints(cls)
    for key, value in data.items():
        sub = dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            check_keys(sub, value, where, f"{prefix}{key}.")


def _with_default(f: dataclasses.Field, value: dict) -> dict:
    """A nested section's keys on top of the field's own default (a generator's trainer keeps its defaults)."""
    if f.default_factory is dataclasses.MISSING or not dataclasses.is_dataclass(default := f.default_factory()):
        return value
    return {**{g.name: getattr(default, g.name) for g in dataclasses.fields(default) if g.init}, **value}


def read_config(path: str | Path):
    """The JSON in a config file; a missing file or one that is not JSON is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config {path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config {path} is not valid JSON: {e}") from None


def load_config(cls, path: str | Path):
    """Read a config saved with `save_config` (or written by hand)."""
    return from_dict(cls, read_config(path), str(path))


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples as lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def save_config(cfg, path: str | Path) -> None:
    """Write `cfg` as JSON (atomically); `load_config(type(cfg), path)` reads it back."""
    atomic_write_json(path, to_dict(cfg))


@cache
def field_docs(cls) -> dict[str, str]:
    """Field name -> the `# comment` on its line in the class body (the CLI's help text); a subclass's
    comment wins over its base's."""
    docs = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    try:
        classes, lines = _module_layout(inspect.getsourcefile(cls))
    except (OSError, TypeError, SyntaxError):
        return {}
    if cls.__qualname__ not in classes:  # a class made in a function
        return {}
    (first, last), indent = classes[cls.__qualname__]
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: comment for line, (col, name, comment) in lines.items()
            if first <= line <= last and col == indent and name in names and comment}


@cache
def _module_layout(filename: str) -> tuple[dict, dict]:
    """A module read once for `field_docs` (`ramm --help` reads some 30 classes): qualified class name ->
    ((first, last line), its body's indent), and line -> (column, first name, its `# comment`)."""
    source = Path(filename).read_text()
    classes = {}
    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                classes[prefix + child.name] = ((child.lineno, child.end_lineno), child.col_offset + 4)
                visit(child, f"{prefix}{child.name}.")
    visit(ast.parse(source), "")
    lines: dict[int, tuple[int, str, str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[0] not in lines:
            lines[tok.start[0]] = (tok.start[1], tok.string, "")
        elif tok.type == tokenize.COMMENT and tok.start[0] in lines:
            col, name, _ = lines[tok.start[0]]
            lines[tok.start[0]] = (col, name, tok.string.lstrip("#").strip())
    return classes, lines
