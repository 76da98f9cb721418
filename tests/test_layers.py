"""The library reads one way: no module imports a package above its own layer, and siblings on one layer
(pipeline and evaluation; serve and the lab) do not import each other.

The EmojiBench lab (`ramm_lab`) sits above the whole library: it imports ramm, ramm never imports it. The one
road from ramm to the lab is the entry-point plugins of `ramm.plugins` (PLUGINS), the single module that loads
code by an installed name. Within the lab, only `ramm_lab.cli` is a command layer.

Two checks: every `import` statement of every module (module level and inside functions, read from the
source), and what importing each module really pulls into `sys.modules` (in one fresh interpreter that
forgets every `ramm.*` and `ramm_lab.*` module before the next import, so each is measured as if imported first).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ramm", "ramm_lab")
PLUGINS = "ramm.plugins"  # the only ramm module that reaches code by an installed name (entry points)

# layer of each top-level piece of ramm, and of the lab; a piece may import lower layers and itself only
LAYERS = {
    "utils": 0, "plugins": 0,  # plugins: loads the entry points (ramm_lab's format and commands)
    "config": 1,  # every command's typed config: only utils
    "corpus": 2,
    "tokenizers": 3,
    "retrieval": 4,
    "model": 5,
    "decoding": 6,
    "grace": 7,
    "pipeline": 8, "evaluation": 8,
    "training": 9,
    "serve": 10, "ramm_lab": 10,  # the lab: any library layer below the CLI
    "cli": 11, "ramm_lab.cli": 11,  # the lab's commands may also import the library's CLI helpers
    "__main__": 12,
}


def _sources() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def _modules() -> list[str]:
    out = []
    for path in _sources():
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _piece(module: str) -> str | None:
    """ramm.training.ra_data -> "training"; ramm_lab.cli.demo -> "ramm_lab.cli"; ramm_lab.report -> "ramm_lab";
    the root package "ramm" -> None."""
    parts = module.split(".")
    if parts[0] == "ramm_lab":
        return "ramm_lab.cli" if parts[1:2] == ["cli"] else "ramm_lab"
    return parts[1] if len(parts) > 1 else None


def _violations(module: str, imported: set[str]) -> list[str]:
    own = _piece(module)
    if own is None:
        return [f"{module} (the root package) imports {sorted(imported)}"] if imported else []
    bad = []
    for name in sorted(imported):
        other = _piece(name)
        if other is None and own.startswith("ramm_lab"):
            continue  # the lab may import the root package
        if other is None or other == own:
            continue
        if other not in LAYERS:
            bad.append(f"{module} imports {name}: {other!r} has no layer (add it to LAYERS)")
        elif LAYERS[other] >= LAYERS[own]:
            bad.append(f"{module} (layer {LAYERS[own]}) imports {name} (layer {LAYERS[other]})")
    return bad


def _static_imports(module: str) -> set[str]:
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{module} uses a relative import; the layer check reads absolute ones")
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if _ours(m)}


def test_every_package_has_a_layer():
    pieces = {_piece(m) for m in _modules()} - {None}
    assert pieces <= set(LAYERS), f"add to LAYERS: {sorted(pieces - set(LAYERS))}"


def test_no_import_statement_reaches_a_higher_layer():
    """Also the imports inside functions, which importing the module would not run."""
    bad = [v for m in _modules() for v in _violations(m, _static_imports(m))]
    assert not bad, "\n".join(bad)


_PROBE = r"""
import importlib, json, sys
out = {}
for name in json.loads(sys.argv[1]):
    for m in [m for m in sys.modules if m.split(".")[0] in ("ramm", "ramm_lab")]:
        del sys.modules[m]
    importlib.import_module(name)
    out[name] = sorted(m for m in sys.modules if m.startswith(("ramm.", "ramm_lab")))
print(json.dumps(out))
"""


def test_importing_a_module_pulls_in_no_higher_layer():
    modules = [m for m in _modules() if m != "ramm.__main__"]
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(modules)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr
    pulled = json.loads(res.stdout.strip().splitlines()[-1])
    bad = [v for m, names in pulled.items() for v in _violations(m, set(names))]
    assert not bad, "\n".join(bad)


def test_every_ramm_import_names_something_that_exists():
    """Imports inside functions run only when called: a module moved or a name renamed leaves them dangling
    (an `evaluate_sft` import of the evaluator's old home failed only at the end of a 9-minute demo)."""
    import importlib

    missing = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and _ours(node.module or "")):
                continue
            try:
                module = importlib.import_module(node.module)
            except ImportError as e:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {e}")
                continue
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)


def test_ramm_never_imports_the_lab():
    """Not by an import statement (any depth), nor by importing any ramm module; the lab imports ramm."""
    library = [m for m in _modules() if m.split(".")[0] == "ramm"]
    bad = [f"{m} imports {name}" for m in library for name in sorted(_static_imports(m)) if name.startswith("ramm_lab")]
    assert not bad, "\n".join(bad)
    lab = [m for m in _modules() if m.startswith("ramm_lab")]
    assert any(name.startswith("ramm.") for m in lab for name in _static_imports(m))


def test_only_the_plugins_module_loads_code_by_an_installed_name():
    """Entry points (and importing a module by a computed name outside ramm's own packages) are the one road
    from ramm to the lab: only ramm.plugins takes it."""
    names = {"entry_points", "EntryPoint", "__import__"}
    found = []
    for path, module in zip(_sources(), _modules()):
        if module == PLUGINS or not module.startswith("ramm."):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            used = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                    else None)
            if used in names or isinstance(node, ast.alias) and node.name.split(".")[-1] in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {used or node.name}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
                arg = node.args[0] if node.args else None
                own = (isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.FormattedValue)
                       and getattr(arg.values[0].value, "id", None) == "__name__")  # a submodule of its own package
                if not own:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: import_module of {ast.unparse(arg)}")
    assert not found, "only " + PLUGINS + " may load plugins:\n" + "\n".join(found)
    assert "entry_points" in (ROOT / "ramm" / "plugins.py").read_text()
