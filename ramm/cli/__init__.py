"""The `ramm` command line: each module here adds its sub-commands through `register(cli)`.

Sub-commands map to plain typed functions in the library; this package owns printing and
progress bars. Modules are discovered, so adding a command touches only its own module.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil


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

    def command(self, name: str, help: str, group: str | None = None) -> argparse.ArgumentParser:
        subs = self.group(group) if group else self.top
        return subs.add_parser(name, help=help, description=help)


def add_runtime_args(p: argparse.ArgumentParser, resume_help: str | None = None) -> None:
    """--threads and --device for any command that runs a model; --resume for those that train."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    if resume_help:
        p.add_argument("--resume", action="store_true", help=resume_help)


def build_parser() -> argparse.ArgumentParser:
    cli = CLI()
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{mod.name}").register(cli)
    return cli.parser
