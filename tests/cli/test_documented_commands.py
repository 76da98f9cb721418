"""Every `ramm ...` command line in README.md and docs/*.md still parses: the flags users copy keep working."""
import re
import shlex
from pathlib import Path

import pytest

from ramm.cli import build_cli

ROOT = Path(__file__).resolve().parents[2]
# the shell variables docs/your-corpus.md sets before its commands
VARIABLES = {"$C": "shapes.jsonl", "$S": "--split.fractions '{\"train\":0.6,\"val\":0.1,\"test\":0.15,\"heldout\":0.15}' "
                                         "--split.group_by kind"}


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) of each `ramm ...` line in a fenced block, continuation lines joined; optional
    `[--flag value]` parts kept, lines with a `...` placeholder left out."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S):
            for line in block.splitlines():
                m = re.match(r"\s*(?:torchrun .*?-m )?(ramm \w.*)", line)
                if m and "..." not in m.group(1):
                    found.append((path.name, m.group(1)))
    return found


def test_the_docs_show_commands():
    assert len(documented_commands()) > 30


@pytest.mark.parametrize("where,line", documented_commands())
def test_a_documented_command_line_parses(where, line):
    for name, value in VARIABLES.items():
        line = line.replace(name, value)
    argv = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", line), comments=True)[1:]
    command, cfg, _ = build_cli(argv).parse(argv, bundle=False)  # as `ramm` builds it: only that command whole
    assert command is not None and cfg is not None, f"{where}: {line}"
