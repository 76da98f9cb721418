"""Plugins reach ramm through installed entry points only (ramm.plugins): a package's corpus format and
commands are found from its metadata; a plugin that is missing or broken is an error naming it."""
import importlib
import json
import sys
import tomllib
from pathlib import Path

import pytest

import ramm.corpus.formats as formats
from ramm.__main__ import main
from ramm.corpus import CorpusHooks, open_corpus
from ramm.plugins import PluginError, load_plugins

ROOT = Path(__file__).resolve().parents[1]

FAKE_FORMAT = '''
from dataclasses import dataclass

from ramm.corpus.document import Document, TextSegment
from ramm.corpus.formats import CorpusFormat
from ramm.corpus.hooks import CorpusHooks

FORMAT = CorpusFormat(name="fakefmt", detect=lambda p: (p / "FAKE").is_file(),
                      read=lambda p, skips: iter([Document("a", [TextSegment("a caption")], metadata={"g": 1})]),
                      hooks=lambda p: CorpusHooks(match_key="g"))
NOT_A_FORMAT = 42


@dataclass
class FakeJob:
    """`ramm fake-command`"""

    words: str = "fake ran"  # what it prints


def register(cli):
    cli.config_command("fake-command", "a command from a plugin", FakeJob, lambda job: print(job.words) or 0)
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """install(group, name, target): a distribution on sys.path whose metadata declares one entry point, as
    `pip install` writes it; the corpus format registry starts empty."""
    (tmp_path / "fake_plugin_mod.py").write_text(FAKE_FORMAT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(formats, "_registered", {})
    monkeypatch.setattr(formats, "_loaded", False)
    monkeypatch.setattr("ramm.plugins.entry_points", lambda group: _only(tmp_path, group))

    def install(group: str, name: str, target: str):
        dist = tmp_path / "fakeplug-1.0.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
        with open(dist / "entry_points.txt", "a") as f:
            f.write(f"[{group}]\n{name} = {target}\n")
        importlib.invalidate_caches()
    yield install
    sys.modules.pop("fake_plugin_mod", None)


def _only(root: Path, group: str):
    """The entry points of the fake distribution alone (the real installed ones left out)."""
    from importlib.metadata import distributions
    return [ep for d in distributions(path=[str(root)]) for ep in d.entry_points if ep.group == group]


def test_a_format_installed_through_an_entry_point_opens_its_folders_with_its_hooks(installed, tmp_path):
    installed("ramm.corpus_formats", "fakefmt", "fake_plugin_mod:FORMAT")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "FAKE").write_text("")
    corpus = open_corpus(folder)
    assert corpus.kind == "fakefmt" and corpus.hooks.match_key == "g"
    assert [d.text for d in corpus] == ["a caption"]


def test_a_broken_plugin_is_an_error_naming_it(installed, tmp_path):
    installed("ramm.corpus_formats", "broken", "no_such_module_xyz:FORMAT")
    with pytest.raises(PluginError, match=r"plugin 'broken' of ramm.corpus_formats = 'no_such_module_xyz:FORMAT' "
                                          r"\(package fakeplug\) failed to load: ModuleNotFoundError"):
        open_corpus(tmp_path)
    (tmp_path / "c.jsonl").write_text("")
    assert list(open_corpus(tmp_path / "c.jsonl")) == []  # a JSONL corpus never loads a plugin


def test_a_plugin_that_is_no_corpus_format_is_an_error_naming_it(installed, tmp_path):
    installed("ramm.corpus_formats", "odd", "fake_plugin_mod:NOT_A_FORMAT")
    with pytest.raises(ValueError, match="plugin 'odd' of ramm.corpus_formats is a int, not a"):
        open_corpus(tmp_path)


def test_cli_commands_come_from_plugins_and_a_broken_one_is_one_line(installed, capsys):
    installed("ramm.cli", "fake", "fake_plugin_mod:register")
    assert main(["fake-command"]) == 0 and "fake ran" in capsys.readouterr().out
    installed("ramm.cli", "gone", "no_such_module_xyz:register")
    assert main(["fake-command"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ramm: error: plugin 'gone' of ramm.cli" in err and "no_such_module_xyz" in err


def test_unknown_plugin_group_is_refused():
    with pytest.raises(ValueError, match="unknown plugin group 'ramm.nope'"):
        load_plugins("ramm.nope")


def test_the_lab_plugins_pyproject_declares_are_the_installed_ones():
    """After `pip install -e .` (make test does it) the installed metadata declares what pyproject.toml does, and
    each target loads: EmojiBench's CorpusFormat, the lab's `register`. Stale metadata (an install of an older
    checkout) fails here first, with what to run."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    from importlib.metadata import entry_points
    for group, eps in declared.items():
        installed = {ep.name: ep.value for ep in entry_points(group=group)}
        assert installed.items() >= eps.items(), f"reinstall (pip install -e .): {group} installed {installed}, declared {eps}"
    loaded = load_plugins("ramm.corpus_formats")["emojibench"]
    assert isinstance(loaded, formats.CorpusFormat) and loaded.name == "emojibench"
    assert callable(load_plugins("ramm.cli")["lab"])


def test_plain_corpus_has_neutral_hooks_and_emojibench_its_own_through_the_registry(tmp_path):
    (tmp_path / "c.jsonl").write_text("")
    assert open_corpus(tmp_path / "c.jsonl").hooks == CorpusHooks()
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "meta.json").write_text(json.dumps({}))  # a (half-built) EmojiBench folder
    corpus = open_corpus(bench)
    from ramm_lab import emojibench
    assert corpus.kind == "emojibench" and corpus.hooks.match_key == "concept"
    assert corpus.hooks.alt_text is emojibench.name_query and corpus.hooks.pseudo_queries is emojibench.pseudo_queries
    assert formats.formats()["emojibench"] is load_plugins("ramm.corpus_formats")["emojibench"]
