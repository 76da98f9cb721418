"""Plugins: objects other installed packages offer ramm through Python entry points.

The single place ramm reaches code it does not import. A package declares, in its pyproject.toml,

    [project.entry-points."ramm.corpus_formats"]   # a `ramm.corpus.formats.CorpusFormat`
    emojibench = "ramm_lab.corpus_format:EMOJIBENCH"
    [project.entry-points."ramm.cli"]              # a `register(cli)` adding `ramm` commands
    lab = "ramm_lab.cli:register"

and `pip install` writes them into its metadata, where `load_plugins` finds them. Data never names code:
a corpus folder is recognised by the formats installed, never by a module path written in it.
"""
from __future__ import annotations

from importlib.metadata import entry_points

GROUPS = ("ramm.corpus_formats", "ramm.cli")


class PluginError(ValueError):
    """An installed plugin that cannot be loaded; the message names the plugin, its target and its package."""


def load_plugins(group: str) -> dict[str, object]:
    """{name: loaded object} of the entry points in `group`, in name order; a plugin that fails to import
    raises PluginError naming it (reinstalling its package, or removing it, fixes it)."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; known: {', '.join(GROUPS)}")
    out = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            out[ep.name] = ep.load()
        except Exception as e:  # an ImportError, or whatever the plugin's module raised on import
            package = f" (package {ep.dist.name})" if getattr(ep, "dist", None) is not None else ""
            raise PluginError(f"plugin {ep.name!r} of {group} = {ep.value!r}{package} failed to load: "
                              f"{type(e).__name__}: {e}") from e
    return out
