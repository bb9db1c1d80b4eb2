"""The package layout: subpackages by concern, no import cycles (function-local imports included), and library
modules never import the CLI (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gad_trl"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every gad_trl module `path` imports explicitly, anywhere in the file (top level, functions, TYPE_CHECKING)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_reads_function_local_and_relative_imports():
    graph = import_graph()
    assert "gad_trl.discriminator.model" in graph["gad_trl.trainer"]  # a top-level relative import
    assert "gad_trl.discriminator.sharding" in graph["gad_trl.discriminator.component"]
    assert "gad_trl.workflow.judge" in graph["gad_trl.workflow.evaluation"]  # `from . import judge as J`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_library_modules_never_import_the_cli():
    offenders = {
        name: sorted(t for t in targets if t.startswith("gad_trl.cli"))
        for name, targets in import_graph().items()
        if not name.startswith("gad_trl.cli")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_at_most_16_modules_at_the_top_and_one_folder_per_concern():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 16, top
    for folder in ("discriminator", "workflow", "baselines", "memory", "vllm", "cli"):
        assert (PACKAGE / folder / "__init__.py").is_file(), folder


def test_tests_mirror_the_package():
    """tests/<subpackage>/test_<module>[_<aspect>].py for gad_trl/<subpackage>/<module>.py (tests/test_<module>...py for
    a top-level module); folders for the repository's other parts (benchmarks, scripts, notebooks, recipes); helper
    scripts and workers in tests/helpers/, none at the top of a test folder."""
    tests = Path(__file__).resolve().parent
    others = {"benchmarks", "scripts", "notebooks", "recipes", "helpers"}
    misplaced = []
    for path in tests.rglob("*.py"):
        rel = path.relative_to(tests)
        if path.name in ("__init__.py", "conftest.py") or rel.parts[0] in others:
            continue
        folder = PACKAGE.joinpath(*rel.parts[:-1])
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} if folder.is_dir() else set()
        stem = path.stem.removeprefix("test_")
        if not path.name.startswith("test_") or not any(stem == m or stem.startswith(m + "_") for m in modules | {"layout"}):
            misplaced.append(str(rel))
    assert misplaced == []


def test_every_tests_module_named_in_the_tests_exists():
    """Imports of tests.* and 'tests.module:attribute' strings (import paths handed to the CLI) name files that exist:
    moving a test file must move what names it (a stale name fails only at run time, in the one test that uses it)."""
    tests = Path(__file__).resolve().parent

    def exists(dotted: str) -> bool:
        target = tests.parent.joinpath(*dotted.split("."))
        return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()

    stale = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tests":
                # `from tests.x import name`: tests.x must exist; `from tests import name`: tests.name must
                names = [node.module] if node.module != "tests" else [f"tests.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "tests"]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = re.fullmatch(r"(tests(?:\.\w+)+):\w+", node.value)
                names = [match.group(1)] if match else []
            stale += [f"{path.relative_to(tests)}: {n}" for n in names if not exists(n)]
    assert stale == []


def test_the_code_is_lint_clean():
    """pyflakes and pycodestyle rules (pyproject's [tool.ruff]) over the package, tests, benchmarks, scripts and
    notebooks: an unused import or an undefined name fails here, not in review."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: it is in the dev extra (scripts/install_env.sh installs it)"
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
