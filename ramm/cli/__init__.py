"""The `ramm` command line: each module here adds its sub-commands through `register(cli)`.

Sub-commands map to plain typed functions in the library; this package owns printing and
progress bars. Modules are discovered, so adding a command touches only its own module; installed packages
add theirs through the `ramm.cli` entry points (`ramm.plugins`: the EmojiBench lab's `ramm demo`, `ramm demo-sft`,
`ramm eval --run`, `ramm data emojibench`).

The whole CLI is one jsonargparse tree: groups (`ramm train`) hold sub-commands, and every command is a config
dataclass (`config_command`) whose fields are its flags, their help the fields' comments, and its `--config FILE`
a JSON of those fields. `ramm --help` builds the tree, so command modules import their configs (`ramm.config`)
at their top and the library (torch, numpy) inside the function that runs the command.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any, Callable

from ramm.config import DecodeConfig, check_keys, dataclass_of, field_docs, from_dict, read_config, type_hints
from ramm.plugins import load_plugins

SHORT_SECTION = "decode"  # a job's DecodeConfig section, whose fields take their bare names too (`add_fields`)
# flag spellings users typed before the flags were the field names (`ramm generate image -k 3`,
# `ramm train sft --from DIR`)
ALIASES = {"k": ("-k",), "pretrained": ("--from",)}
BOOLEAN_WORDS = {"true": True, "yes": True, "false": False, "no": False}  # a boolean written as a word


@dataclasses.dataclass
class Command:
    """One command of the tree: its config class, what runs it and its parser."""

    cls: type
    run: Callable
    parser: Any
    defaults: Callable[[Any], dict] | None = None
    job_file: bool = True  # takes `--config FILE`


class CLI:
    """One jsonargparse tree: groups (`ramm train`) and their sub-commands, each leaf's flags and `--config FILE`
    the fields of its config dataclass."""

    GROUP_HELP = {
        "data": "build and inspect corpora",
        "train": "train a component (tokenizer, text-tokenizer, retriever, generator, grace)",
        "memory": "build and query the retrieval memory",
        "generate": "generate images, captions, infills",
        "grace": "generative cross-modal retrieval",
        "eval": "evaluate a run and render its report",
    }

    def __init__(self, wanted: tuple[str, ...] | None = None):
        """wanted: the command path a command line names (`("train", "generator")`); only that command's flags
        are built, every other command is its name and help (None: all, e.g. to parse many command lines)."""
        # lazy: jsonargparse, not for `import ramm.cli`
        from jsonargparse import ArgumentParser
        self.wanted = wanted
        self.parser = ArgumentParser(prog="ramm", description="retrieval-augmented multimodal models")
        self.parsers: dict[tuple[str, ...], Any] = {(): self.parser}  # group -> its parser
        self.subcommands = {(): self.parser.add_subcommands(required=False, dest="command")}
        self.commands: dict[tuple[str, ...], Command] = {}
        self.switches: dict[str, Switch] = {}  # every spelling of a boolean flag -> its action (`check_switches`)

    def _group(self, name: str):
        """The sub-commands of the group `name` (`ramm train ...`), created on first use."""
        if (name,) not in self.subcommands:
            # lazy: jsonargparse, not for `import ramm.cli`
            from jsonargparse import ArgumentParser
            p = ArgumentParser(prog=f"ramm {name}", description=self.GROUP_HELP.get(name, name))
            self.subcommands[()].add_subcommand(name, p, help=self.GROUP_HELP.get(name, name))
            self.parsers[(name,)] = p
            self.subcommands[(name,)] = p.add_subcommands(required=False, dest=f"{name}_command")
        return self.subcommands[(name,)]

    def config_command(self, name: str | None, help: str, cls, run, group: str | None = None,
                       positional: tuple[str, ...] = (), defaults: Callable[[Any], dict] | None = None,
                       job_file: bool = True) -> None:
        """A command whose flags and `--config FILE` are the fields of the dataclass `cls` (nested ones as
        `--trainer.steps`); the fields in `positional` are positional arguments instead; `defaults(parsed)`
        may replace field defaults from what the command line names (a bundle's decoding settings), under
        the file and the flags; `run(cfg)` does the work, after `--threads` has set torch's CPU threads.
        `name=None`: the options of the bare group (`ramm eval --run DIR`), beside its sub-commands;
        `job_file=False`: no `--config FILE` (`ramm demo`, whose `--config` is a field: the demo's config)."""
        if name is None:
            self._group(group)
            path, p = (group,), self.parsers[(group,)]
            self.switches |= add_fields(p, cls, positional)
        else:
            path = (group, name) if group else (name,)
            if self.wanted is None or self.wanted[:len(path)] == path:
                p = config_parser(cls, "ramm " + " ".join(path), help, positional, job_file, self.switches)
            else:  # a command this command line does not run: its name and help (building all 22 costs 0.2 s)
                from jsonargparse import ArgumentParser
                p = ArgumentParser(prog="ramm " + " ".join(path), description=help)
            (self._group(group) if group else self.subcommands[()]).add_subcommand(name, p, help=help)
        self.commands[path] = Command(cls, run, p, defaults, job_file and name is not None)

    def parse(self, argv: list[str], bundle: bool = True):
        """(command, config, threads) for a command line, or (None, the group's parser, None) for a bare group
        (`ramm train`: its help); `bundle=False`: no `defaults` hook (nothing read from disk: a dry parse)."""
        named = command_path(argv)
        for n in (2, 1):
            if named[:n] in self.commands and self.commands[named[:n]].job_file:
                check_config_files(self.commands[named[:n]].cls, argv)
                break
        check_switches(argv, self.switches)
        ns = self.parser.parse_args(argv)
        path, leaf = _chosen(ns)
        command = self.commands.get(path)
        if command is None or path == (path[0],) and path in self.parsers and not _set(leaf, command.cls):
            return None, self.parsers.get(path, self.parser), None
        if bundle and command.defaults is not None and (changed := command.defaults(leaf)):
            command.parser.set_defaults(changed)
            path, leaf = _chosen(self.parser.parse_args(argv))
        return (command, *config_from(command.cls, leaf, "ramm " + " ".join(path)))


def _chosen(ns) -> tuple[tuple[str, ...], Any]:
    """The sub-command path a parse chose (`("train", "generator")`) and that command's namespace."""
    path = []
    while (dest := "command" if not path else f"{path[-1]}_command") in ns and ns[dest]:
        path.append(ns[dest])
        ns = ns[ns[dest]]
    return tuple(path), ns


def _set(ns, cls) -> bool:
    """Whether a bare group's options were given (`ramm eval --run DIR`, not `ramm eval`)."""
    return any(ns.get(f.name) not in (None, False, "") for f in dataclasses.fields(cls) if f.init)


def config_parser(cls, prog: str, description: str, positional: tuple[str, ...] = (), job_file: bool = True,
                  switches: dict | None = None):
    """The parser of one command: `--config FILE` (`job_file`), `--threads` and the fields of `cls`
    (`add_fields`); `switches` collects its boolean flags' spellings."""
    # lazy: jsonargparse (0.1 s) when the tree is built, not for `import ramm.cli`
    from jsonargparse import ActionConfigFile, ArgumentParser
    p = ArgumentParser(prog=prog, description=description)
    if job_file:
        p.add_argument("--config", action=ActionConfigFile,
                       help="JSON file of this command's fields (flags override it)")
    p.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's choice)")
    found = add_fields(p, cls, positional)
    if switches is not None:
        switches |= found
    return p


def check_config_files(cls, argv: list[str]) -> None:
    """An unknown key in a `--config FILE` is a ValueError naming the field (dotted) and the file."""
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a[9:] if a.startswith("--config=") else None
        if path:
            check_keys(cls, read_config(path), f"config {path}")


def config_from(cls, ns, where: str) -> tuple[Any, int | None]:
    """(config, threads) from a command's parsed namespace; `where` names the command in an error."""
    values = ns.as_dict()
    threads = values.pop("threads", None)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return from_dict(cls, {k: v for k, v in values.items() if k in names}, where), threads


def add_fields(parser, cls, positional: tuple[str, ...] = (), prefix: str = "", defaults=None,
               bare: frozenset[str] = frozenset()) -> dict[str, Switch]:
    """One flag per field of the dataclass `cls`, spelled as the field (nested ones as `--trainer.batch_size`, in a
    help group titled by the field and its class's docstring), its help the field's comment; a boolean one takes
    no value (`Switch`: `--verify`, `--no-verify`). Each flag also takes, hidden from the help (`Alias`), its
    dashed spelling (`--trainer.batch-size`), ALIASES theirs, and a job's DecodeConfig section its bare names
    (`--method cfg` is `--decode.method cfg`: the flags `ramm generate` had before the decoding settings were one
    type; `bare`: those names, less the job's own fields); the fields in `positional` are positional arguments
    instead (one whose default is None may be left out). `defaults`: the section's default instance (a
    generator's trainer keeps its own defaults). Returns every spelling of its boolean flags -> their Switch."""
    docs, hints = field_docs(cls), type_hints(cls)
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ").rstrip(".")
    title = f"--{prefix}*" if prefix else cls.__name__
    group = parser.add_argument_group(f"{title}: {doc}" if doc else title)
    own = {f.name for f in dataclasses.fields(cls)}
    sections = []  # nested dataclasses: their groups after this one's
    switches: dict[str, Switch] = {}
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
        if dataclass_of(hint) is not None:
            sections.append((f, default))
            continue
        if f.name in positional:
            group.add_argument(f.name, type=hint, help=docs.get(f.name),
                               **(dict(nargs="?", default=None) if default is None else {}))
            continue
        kwargs = dict(help=docs.get(f.name))
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
        flag = f"--{name}"
        if hint in (bool, bool | None):
            action = group.add_argument(flag, action=Switch, dest=name, optional=hint is not bool, **kwargs)
        else:
            action = group.add_argument(flag, type=hint, required=default is dataclasses.MISSING, **kwargs)
        others = [f"--{name.replace('_', '-')}"] if "_" in name else []
        if not prefix:
            others += ALIASES.get(f.name, ())
        elif f.name in bare:
            others += [other.replace(f"--{prefix}", "--") for other in [flag, *others]]
        if others:
            group.add_argument(*others, action=Alias, target=action)
        if isinstance(action, Switch):
            switches |= dict.fromkeys([*action.option_strings, *others], action)
    for f, default in sections:
        sub = dataclass_of(hints[f.name])
        short = frozenset(g.name for g in dataclasses.fields(sub)) - own if not prefix and f.name == SHORT_SECTION \
            and sub is DecodeConfig else frozenset()
        switches |= add_fields(parser, sub, (), f"{prefix}{f.name}.", default if dataclasses.is_dataclass(default)
                               else None, short)
    return switches


def check_switches(argv: list[str], switches: dict[str, "Switch"]) -> None:
    """A boolean flag spelled as before it became a switch is a ValueError naming the spelling now: negated with
    an underscore (`--no_skin_tones`, jsonargparse's spelling, is `--no-skin-tones`), or given a value
    (`--trainer.resume false`, `--strict=true`: not argparse's "unrecognized arguments: false")."""
    for i, a in enumerate(argv):
        flag, eq, _ = a.partition("=")
        if flag.startswith("--no_") and (negated := switches.get("--" + flag[5:])) is not None:
            raise ValueError(f"{flag} is spelled {negated.option_strings[1]} now")
        if flag in switches and (eq or i + 1 < len(argv) and argv[i + 1].lower() in BOOLEAN_WORDS):
            on, off = switches[flag].option_strings
            raise ValueError(f"{flag} takes no value now ({a if eq else a + ' ' + argv[i + 1]}): "
                             f"{on} sets it, {off} clears it")


class Switch(argparse.Action):
    """A boolean field's flag, taking no value: `--verify` sets the field and `--no-verify` clears it, so that a
    positional argument after it stays one (`ramm data stats --verify DIR`). The negation is no- and the flag
    dashed, as before (`--no-skin-tones`; nested: `--no-trainer.amp-cpu`), where argparse's BooleanOptionalAction
    and jsonargparse's ActionYesNo spell it from the flag as written (`--no-skin_tones`). `optional`: a
    `bool | None` field, whose `--config FILE` value may be null."""

    def __init__(self, option_strings: list[str], dest: str, optional: bool = False, **kwargs):
        (flag,) = option_strings
        super().__init__([flag, "--no-" + flag[2:].replace("_", "-")], dest, nargs=0, type=BooleanValue(optional),
                         **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string != self.option_strings[1])


class BooleanValue:
    """A Switch's type: it reads the field's value in a `--config FILE` (true / false, or "true" / "yes" / "false"
    / "no"; null where `optional`) and names the type in the help."""

    def __init__(self, optional: bool):
        self.optional = optional

    def __call__(self, value):
        if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
            return BOOLEAN_WORDS[value.lower()]
        if isinstance(value, bool) or value is None and self.optional:
            return value
        raise TypeError(f"expected {self}, got {value!r}")

    def __repr__(self) -> str:
        return "bool | None" if self.optional else "bool"


class Alias(argparse.Action):
    """Other spellings of a flag, hidden from the help: what one is given goes to the flag's own action as if the
    flag were written, so values, errors, `--config FILE` and `--print_config` are the flag's. (A second argument
    with the flag's dest and help=SUPPRESS parses alike, but jsonargparse leaves a suppressed argument's dest out
    of `--print_config`, dropping the flag's value with it.)"""

    def __init__(self, option_strings: list[str], dest: str, target: argparse.Action, **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=target.nargs, default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        self.target(parser, namespace, values, self.target.option_strings[0])


def corpus_documents(corpus: str, split, splits=None, image_size: int | None = None, strict: bool = False):
    """Stream the documents of `splits` (None: all) of any corpus `open_corpus` reads; `split` (a
    SplitConfig) places the rows that carry no `split` field."""
    # lazy: numpy and PIL, not for `ramm --help`
    from ramm.corpus import open_corpus
    docs = open_corpus(corpus, image_size=image_size, strict=strict)
    return iter(docs) if splits is None else split.select(docs, splits)


def command_path(argv: list[str]) -> tuple[str, ...]:
    """The command a command line names: its first words before any flag (`("train", "generator")`)."""
    return tuple(a for a in argv[:2] if not a.startswith("-"))


def build_cli(argv: list[str] | None = None) -> CLI:
    """The command tree; given the command line it will parse, only the command it names is built whole."""
    cli = CLI(None if argv is None else command_path(argv))
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{mod.name}").register(cli)
    for register in load_plugins("ramm.cli").values():
        register(cli)
    return cli
