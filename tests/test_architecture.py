"""The layering docs/architecture.md describes, checked: a change that breaks it fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "s3latent"
# Below the S3 front end: none of these may import it (nor the wiring, tools or benchmarks).
LOWER = ("s3latent.objects", "s3latent.cache", "s3latent.decode", "s3latent.models",
         "s3latent.latent", "s3latent.backends", "s3latent.errors", "s3latent.sigv4",
         "s3latent.httpdate", "s3latent.singleflight", "s3latent.config",
         "s3latent.executables", "s3latent.cluster")
UPPER = ("s3latent.s3api", "s3latent.cli", "s3latent.tools", "s3latent.bench")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports() -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere (function-level imports included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {c for c in candidates if c in mods and c != name}
    return graph


def test_nothing_below_the_front_end_imports_it() -> None:
    breaks = sorted(f"{m} -> {d}" for m, deps in _imports().items() if m.startswith(LOWER)
                    for d in deps if d.startswith(UPPER))
    assert breaks == []


def test_no_import_cycles() -> None:
    graph = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_handlers_reach_storage_only_through_the_store() -> None:
    for path in (PACKAGE / "s3api").rglob("*.py"):
        text = path.read_text()
        for forbidden in ("gw.backend", ".invalidate(", "gw.objects"):
            assert forbidden not in text, f"{path.name} uses {forbidden}"


def test_serving_loads_neither_benchmarks_nor_tools_nor_torch(tmp_path: Path) -> None:
    """Building and wiring a gateway stays light; torch loads on the first latent object."""
    code = (
        "import sys\n"
        "from s3latent.cli import build_gateway\n"
        "from s3latent.config import load_config\n"
        "from s3latent.s3api.server import make_app\n"
        f"cfg = load_config(env={{}}, backend={str('file://' + str(tmp_path))!r})\n"
        "make_app(build_gateway(cfg))\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'torch'\n"
        "          or m.startswith(('s3latent.bench', 's3latent.tools'))]\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
