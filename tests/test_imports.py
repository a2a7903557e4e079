"""How the library's modules import each other, and what they need from the platform.

- No import cycle inside hlb_utils, lazy imports (inside functions) included: a cycle makes the
  import order matter and hides which module owns what (issue 25).
- The library imports and trains where POSIX-only modules are missing (Windows has no `resource`
  or `fcntl`, and no SIGHUP; a learner there runs local Jupyter), checked in a subprocess that
  makes them unimportable.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hlb_utils

PACKAGE = Path(hlb_utils.__file__).parent
REPO = PACKAGE.parent


def our_imports(path: Path) -> set[str]:
    """The hlb_utils modules that `path` imports anywhere in its code (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 1:          # from .x import y / from . import x
                names = [base] if base else [alias.name for alias in node.names]
            elif base == "hlb_utils":    # from hlb_utils import x
                names = [alias.name for alias in node.names]
            elif base.startswith("hlb_utils."):
                names = [base.split(".")[1]]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("hlb_utils.")]
        else:
            continue
        found |= {name for name in names if (PACKAGE / f"{name}.py").exists()}
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: our_imports(path) for path in sorted(PACKAGE.glob("*.py"))
            if path.stem not in ("__init__", "__main__")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_sees_lazy_imports(tmp_path):
    lazy = tmp_path / "a.py"
    lazy.write_text("def f():\n    from .b import g\n    from hlb_utils import data\n")
    assert {"data"} <= our_imports(lazy) or not (PACKAGE / "data.py").exists()
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_hlb_utils():
    graph = import_graph()
    assert {"train", "data", "imagefolder", "runs", "cluster"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_config_and_the_dataset_type_import_none_of_our_modules():
    graph = import_graph()
    assert graph["config"] == set() and graph["dataset"] == set()


_WITHOUT_POSIX = """
import importlib, pkgutil, signal, sys
for name in ("resource", "fcntl"):
    sys.modules[name] = None            # as on Windows: `import resource` raises ImportError
import numpy, pandas, torch, torchvision  # noqa: E401  (their own imports read signal.SIGTERM)
for name in ("SIGTERM", "SIGHUP"):      # from here on, our code must not need them
    if hasattr(signal, name):
        delattr(signal, name)
import hlb_utils
for module in pkgutil.iter_modules(hlb_utils.__path__):
    importlib.import_module(f"hlb_utils.{module.name}")
sys.path.insert(0, "tests")
from synthetic import synthetic_dataset
from hlb_utils.config import get_profile
from hlb_utils.train import train
cfg = get_profile("quick", widths=(8, 8, 8), batch_size=100, epochs=1, train_subset=100, test_subset=100,
                  device="cpu", eval_every=1)
result = train(cfg, synthetic_dataset(n_train=100, n_test=100), verbose=False)
assert len(result.history) == 1 and 0 <= result.test_accuracy <= 1, result
print("peak memory:", result.peak_memory_mb)
"""


def test_the_library_imports_and_trains_without_posix_only_modules():
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_POSIX], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the one figure that needs `resource` is reported as unknown, not as a crash
    assert "peak memory: None" in proc.stdout
