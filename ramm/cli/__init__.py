"""The `ramm` command line: each module here adds its sub-commands through `register(cli)`.

Sub-commands map to plain typed functions in the library; this package owns printing and
progress bars. Modules are discovered, so adding a command touches only its own module; installed packages
add theirs through the `ramm.cli` entry points (`ramm.plugins`: the EmojiBench lab's `ramm demo`, `ramm demo-sft`,
`ramm eval --run`, `ramm data emojibench`).

`ramm --help` imports every command module, so they import the configs (`ramm.config`, `ramm.jobs`) at their top
and the library (torch, numpy) inside the function that runs the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import pkgutil
import typing
from pathlib import Path
from typing import Callable

from ramm.config import DecodeConfig, _dataclass_of, _hints, check_keys, field_docs
from ramm.plugins import load_plugins

# a job's DecodeConfig section takes its fields' bare names too: `--method cfg` is `--decode.method cfg` (the
# flags `ramm generate` had before the decoding settings became one type)
SHORT_SECTION = "decode"


class CLI:
    """Holds the top-level parser and lazily created command groups (`ramm train ...`)."""

    GROUP_HELP = {
        "data": "build and inspect corpora",
        "train": "train a component (tokenizer, text-tokenizer, retriever, generator, grace)",
        "memory": "build and query the retrieval memory",
        "generate": "generate images, captions, infills",
        "grace": "generative cross-modal retrieval",
        "eval": "evaluate a run and render its report",
    }

    def __init__(self):
        self.parser = argparse.ArgumentParser(prog="ramm", description="retrieval-augmented multimodal models")
        self.top = self.parser.add_subparsers(dest="command", metavar="COMMAND")
        self._groups: dict[str, argparse._SubParsersAction] = {}
        self._group_parsers: dict[str, argparse.ArgumentParser] = {}

    def group(self, name: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            p = self.top.add_parser(name, help=self.GROUP_HELP.get(name, name))
            p.set_defaults(func=lambda args, p=p: p.print_help() or 2)
            self._group_parsers[name] = p
            self._groups[name] = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
        return self._groups[name]

    def group_parser(self, name: str) -> argparse.ArgumentParser:
        """The group's own parser, for options of the bare group command (`ramm eval --run DIR`)."""
        self.group(name)
        return self._group_parsers[name]

    def command(self, name: str, help: str, group: str | None = None, **kwargs) -> argparse.ArgumentParser:
        subs = self.group(group) if group else self.top
        return subs.add_parser(name, help=help, description=help, **kwargs)

    def config_command(self, name: str, help: str, cls, run, group: str | None = None,
                       positional: tuple[str, ...] = (), defaults: Callable[[dict], dict] | None = None) -> None:
        """A sub-command whose flags and `--config FILE` are the fields of the dataclass `cls` (nested ones
        as `--trainer.steps`), parsed by jsonargparse; the fields in `positional` are positional arguments
        instead; `defaults(parsed)` may replace field defaults from what the command line names (a bundle's
        decoding settings), under the file and the flags; `run(cfg)` does the work, after `--threads` has
        set torch's CPU threads."""
        p = self.command(name, help, group=group, add_help=False)
        prog = f"ramm {group} {name}" if group else f"ramm {name}"
        def call(args):
            cfg, threads = parse_config(cls, args.extra, prog, help, positional, defaults)
            if threads:
                # lazy: torch, not for `ramm --help`
                import torch
                torch.set_num_threads(threads)
            return run(cfg)
        p.set_defaults(func=call, takes_extra=True)


def _normalized(arg: str, bools: set[str], short: dict[str, str]) -> str:
    """`--batch-size=3` -> `--batch_size=3` (flags take either spelling of a field's name); `-k` -> `--k`;
    `--from` -> `--pretrained` (`ramm train sft --from DIR`); `--method` -> `--decode.method` (`short`);
    `--no-rerank` -> `--rerank=false` for a boolean field."""
    if arg == "-k":
        return "--k"
    if arg == "--from" or arg.startswith("--from="):  # `from` is a Python keyword: the field is `pretrained`
        return "--pretrained" + arg[6:]
    if not arg.startswith("--"):
        return arg
    flag, eq, value = arg.partition("=")
    flag = flag.replace("-", "_").replace("__", "--", 1)
    flag = short.get(flag, flag)
    if not eq and flag.startswith("--no_") and flag[5:] in bools:
        return f"--{flag[5:]}=false"
    return flag + eq + value


def parse_config(cls, argv: list[str], prog: str, description: str, positional: tuple[str, ...] = (),
                 defaults: Callable[[dict], dict] | None = None):
    """(config, threads) from `--config FILE` and flags; flags override the file, the file the defaults
    (`defaults(first parse)`: field -> value, over the class's). An unknown key in the file is a ValueError
    naming the field and the file."""
    # lazy: jsonargparse (0.2 s) only when a command parses its flags, not for `ramm --help`
    from jsonargparse import ActionConfigFile, ArgumentParser

    bools = {f.name for f in dataclasses.fields(cls)  # bool and bool | None (None: "as the bundle says")
             if _hints(cls)[f.name] is bool or set(typing.get_args(_hints(cls)[f.name])) == {bool, type(None)}}
    own = {f.name for f in dataclasses.fields(cls)}
    short = {f"--{g.name}": f"--{SHORT_SECTION}.{g.name}" for g in dataclasses.fields(DecodeConfig) if g.name not in own
             and _dataclass_of(_hints(cls).get(SHORT_SECTION)) is DecodeConfig}
    argv = [_normalized(a, bools, short) for a in argv]
    argv = [f"{a}=true" if a[2:] in bools and a.startswith("--") and
            (i + 1 == len(argv) or argv[i + 1].lower() not in ("true", "false")) else a
            for i, a in enumerate(argv)]  # a bare boolean flag (`--verify`) sets it
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a[9:] if a.startswith("--config=") else None
        if path:
            try:
                data = json.loads(Path(path).read_text())
            except FileNotFoundError:
                raise FileNotFoundError(f"config {path} not found") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"config {path} is not valid JSON: {e}") from None
            check_keys(cls, data, f"config {path}")
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", action=ActionConfigFile, help="JSON file of this command's fields (flags override it)")
    p.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's choice)")
    docs = field_docs(cls)
    optional = {f.name for f in dataclasses.fields(cls) if f.default is None}
    for name in positional:  # one whose default is None may be left out
        extra = dict(nargs="?", default=None) if name in optional else {}
        p.add_argument(name, type=_hints(cls)[name], help=docs.get(name), **extra)
    p.add_class_arguments(cls, None, skip=set(positional) or None)
    _field_help(p, cls)
    _group_titles(p, cls)
    ns = p.parse_args(argv)
    if defaults is not None and (changed := defaults(ns)):
        p.set_defaults(changed)
        ns = p.parse_args(argv)
    ns = p.instantiate(ns) if hasattr(p, "instantiate") else p.instantiate_classes(ns)
    kwargs = {f.name: ns[f.name] for f in dataclasses.fields(cls) if f.init}
    return cls(**kwargs), ns["threads"]


def _field_help(parser, cls, prefix: str = "") -> None:
    """Each flag's help is its field's comment in the config class."""
    docs, hints = field_docs(cls), _hints(cls)
    for action in parser._actions:
        for f in dataclasses.fields(cls):
            if action.dest == prefix + f.name and f.name in docs:
                action.help = docs[f.name]
    for f in dataclasses.fields(cls):
        sub = _dataclass_of(hints[f.name])
        if sub is not None:
            _field_help(parser, sub, f"{prefix}{f.name}.")


def _group_titles(parser, cls) -> None:
    """Help groups titled by the field and its class's docstring (`decode: how the next token is chosen ...`)
    instead of jsonargparse's `<class 'ramm.config.DecodeConfig'>`."""
    for key, group in getattr(parser, "groups", {}).items():
        sub = cls
        for part in key.split(".") if key != cls.__name__ else ():
            sub = _dataclass_of(_hints(sub).get(part)) if sub is not None else None
        doc = (inspect.getdoc(sub) or "").split("\n\n")[0].replace("\n", " ").rstrip(".") if sub is not None else ""
        name = cls.__name__ if key == cls.__name__ else f"--{key}.*"
        group.title = f"{name}: {doc}" if doc else name


def corpus_documents(corpus: str, split, splits=None, image_size: int | None = None, strict: bool = False):
    """Stream the documents of `splits` (None: all) of any corpus `open_corpus` reads; `split` (a
    SplitConfig) places the rows that carry no `split` field."""
    # lazy: numpy and PIL, not for `ramm --help`
    from ramm.corpus import open_corpus
    docs = open_corpus(corpus, image_size=image_size, strict=strict)
    return iter(docs) if splits is None else split.select(docs, splits)


def build_parser() -> argparse.ArgumentParser:
    cli = CLI()
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{mod.name}").register(cli)
    for register in load_plugins("ramm.cli").values():
        register(cli)
    return cli.parser
