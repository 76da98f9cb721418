"""The library reads one way: no module imports a package above its own layer, and siblings on one layer
(pipeline and evaluation; experiments and serve) do not import each other.

Two checks: every `import` statement of every module (module level and inside functions, read from the
source), and what importing each module really pulls into `sys.modules` (in one fresh interpreter that
forgets every `ramm.*` module before the next import, so each is measured as if imported first).
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ramm"

# layer of each top-level piece of ramm; a package may import lower layers and itself only
LAYERS = {
    "utils": 0,
    "config": 1,  # the typed configs: only utils
    "jobs": 2, "corpus": 2,  # jobs: the CLI jobs' configs, only config
    "tokenizers": 3,
    "retrieval": 4,
    "model": 5,
    "decoding": 6,
    "grace": 7,
    "pipeline": 8, "evaluation": 8,
    "training": 9,
    "experiments": 10, "serve": 10,
    "cli": 11,
    "__main__": 12,
}


def _modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def _piece(module: str) -> str | None:
    """ramm.training.ra_data -> "training"; the root package "ramm" -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _violations(module: str, imported: set[str]) -> list[str]:
    own = _piece(module)
    if own is None:
        return [f"{module} (the root package) imports {sorted(imported)}"] if imported else []
    bad = []
    for name in sorted(imported):
        other = _piece(name)
        if other is None or other == own:
            continue
        if other not in LAYERS:
            bad.append(f"{module} imports {name}: {other!r} has no layer (add it to LAYERS)")
        elif LAYERS[other] >= LAYERS[own]:
            bad.append(f"{module} (layer {LAYERS[own]}) imports {name} (layer {LAYERS[other]})")
    return bad


def _static_imports(module: str) -> set[str]:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{module} uses a relative import; the layer check reads absolute ones")
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m == "ramm" or m.startswith("ramm.")}


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
    for m in [m for m in sys.modules if m == "ramm" or m.startswith("ramm.")]:
        del sys.modules[m]
    importlib.import_module(name)
    out[name] = sorted(m for m in sys.modules if m.startswith("ramm."))
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
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ramm")):
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
