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
from pathlib import Path
from typing import Callable

from ramm.config import DecodeConfig, _dataclass_of, _hints, check_keys, field_docs, from_dict
from ramm.plugins import load_plugins

SHORT_SECTION = "decode"  # a job's DecodeConfig section, whose fields take their bare names too (`add_fields`)
# flag spellings users typed before the flags were the field names: `ramm generate image -k 3`, `ramm train sft --from DIR`
ALIASES = {"k": ("-k",), "pretrained": ("--from",)}


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
        set torch's CPU threads. The parsed arguments' `parse(argv, defaults=None)` parses without
        reading a bundle or running (tests/cli/test_documented_commands.py)."""
        p = self.command(name, help, group=group, add_help=False)
        prog = f"ramm {group} {name}" if group else f"ramm {name}"
        def parse(argv: list[str], defaults=defaults):
            return parse_config(cls, argv, prog, help, positional, defaults)

        def call(args):
            cfg, threads = parse(args.extra)
            if threads:
                # lazy: torch, not for `ramm --help`
                import torch
                torch.set_num_threads(threads)
            return run(cfg)
        p.set_defaults(func=call, parse=parse, takes_extra=True)




def parse_config(cls, argv: list[str], prog: str, description: str, positional: tuple[str, ...] = (),
                 defaults: Callable[[dict], dict] | None = None):
    """(config, threads) from `--config FILE` and flags; flags override the file, the file the defaults
    (`defaults(first parse)`: field -> value, over the class's). An unknown key in the file is a ValueError
    naming the field and the file."""
    # lazy: jsonargparse (0.1 s) only when a command parses its flags, not for `ramm --help`
    from jsonargparse import ActionConfigFile, ArgumentParser

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
    argv = bare_booleans(argv, add_fields(p, cls, positional))
    ns = p.parse_args(argv)
    if defaults is not None and (changed := defaults(ns)):
        p.set_defaults(changed)
        ns = p.parse_args(argv)
    values = ns.as_dict()
    threads = values.pop("threads")
    values.pop("config", None)
    return from_dict(cls, values, prog), threads


def add_fields(parser, cls, positional: tuple[str, ...] = (), prefix: str = "", defaults=None,
               bare: frozenset[str] = frozenset()) -> set[str]:
    """One flag per field of the dataclass `cls` (nested ones as `--trainer.steps`, in a help group titled by
    the field and its class's docstring), its help the field's comment. Each flag also takes its dashed
    spelling (`--batch-size`), a boolean one `--no-x`, a job's DecodeConfig section its bare names
    (`--method cfg` is `--decode.method cfg`: the flags `ramm generate` had before the decoding settings were
    one type; `bare`: those names, less the job's own fields) and ALIASES theirs; the fields in `positional`
    are positional arguments instead (one whose default is None may be left out). `defaults`: the section's
    default instance (a generator's trainer keeps its own defaults)."""
    # lazy: jsonargparse (0.1 s) only when a command parses its flags, not for `ramm --help`
    from jsonargparse import ActionYesNo

    docs, hints = field_docs(cls), _hints(cls)
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").rstrip(".")
    title = f"--{prefix}*" if prefix else cls.__name__
    group = parser.add_argument_group(f"{title}: {doc}" if doc else title)
    own = {f.name for f in dataclasses.fields(cls)}
    sections = []  # nested dataclasses: their groups after this one's
    booleans = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        hint, name = hints[f.name], prefix + f.name
        if _dataclass_of(hint) is not None:
            sections.append((f, default))
            continue
        if f.name in positional:
            group.add_argument(f.name, type=hint, help=docs.get(f.name),
                               **(dict(nargs="?", default=None) if default is None else {}))
            continue
        kwargs = dict(help=docs.get(f.name))
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if not prefix:
            flags += ALIASES.get(f.name, ())
        elif f.name in bare:
            flags += [flag.replace(f"--{prefix}", "--") for flag in flags]
        if hint in (bool, bool | None):
            booleans.update(flags)
        if not prefix and hint in (bool, bool | None):
            # `--no-` + the first flag: the dashed one (`--no-skin-tones`)
            action = group.add_argument(*reversed(flags), action=ActionYesNo(yes_prefix="", no_prefix="no-"), nargs="?",
                                        dest=name, **kwargs)
            booleans.update(action.option_strings)
        elif hint in (bool, bool | None):
            group.add_argument(*flags, type=hint, nargs="?", const=True, **kwargs)
        else:
            group.add_argument(*flags, type=hint, required=default is dataclasses.MISSING, **kwargs)
    for f, default in sections:
        sub = _dataclass_of(hints[f.name])
        short = frozenset(g.name for g in dataclasses.fields(sub)) - own if not prefix and f.name == SHORT_SECTION \
            and sub is DecodeConfig else frozenset()
        booleans |= add_fields(parser, sub, (), f"{prefix}{f.name}.", default if dataclasses.is_dataclass(default)
                               else None, short)
    return booleans


def bare_booleans(argv: list[str], booleans: set[str]) -> list[str]:
    """`--verify` -> `--verify=true` where no `true` / `false` follows, so that a bare boolean flag sets it
    without taking the next argument as its value (`ramm data stats --verify DIR`); `--verify false` stays."""
    words = ("true", "false", "yes", "no")
    return [f"{a}=true" if a in booleans and (i + 1 == len(argv) or argv[i + 1].lower() not in words) else a
            for i, a in enumerate(argv)]


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
