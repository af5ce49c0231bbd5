"""Structure counts of a depmicro checkout, as JSON: what docs/ARCHITECTURE.md quotes before and after.

    python tests/bench/structure.py [ROOT]        # ROOT: a checkout (default: this one)

Counts (package code: every .py outside tests/, .venv*, build/; tests are counted apart where said):
- imports_in_functions: import statements inside a function body; `depmicro` those importing depmicro
  itself, split into `depmicro_in_cli_handlers` (command modules, which kept `depmicro --help` fast by
  importing torch/pandas-heavy modules on use, before the COMMANDS tables) and `depmicro_elsewhere`
  (the cycle dodges; target 0).
- lazy_cli_entry_points: what replaced the in-handler imports: `Command(...)` rows whose handler is a
  "module:function" string (imported when the command runs), and the calls of importlib.import_module
  inside functions (the one loader that imports them), with where they are.
- metric_direction_definitions: literal collections of metric names holding "rmse" and "mae" but not
  "pcc" (a list of minimised metrics), with where they are.
- metric_list_definitions / baseline_list_definitions: literal collections holding all of
  pcc, cos, rmse, mae / all of mean, knn, iterative.
- files_with_mlflow_tag_names: files holding a string literal `depmicro.<tag>` (an MLflow tag key).
- longest_function: name, file and lines of the longest function or method.
- files_over_400_lines: package files (and, apart, test files) longer than 400 lines.
Only the standard library is used, so it runs against any old checkout.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

SKIP_DIRS = {".venv", ".venv-ci", "build", "dist", ".git", "__pycache__", "fixtures"}
PACKAGES = ("core", "studies", "analysis", "cluster")
TAG = re.compile(r"depmicro\.(?!core\b|studies\b|analysis\b|cluster\b|commands\b)[a-z_]+")
CLI_MODULE = re.compile(r"(^|/)(cli|cli/[a-z_]+|[a-z_]+_cli)\.py$")


def python_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if not any(part in SKIP_DIRS for part in rel.parts):
            out.append(p)
    return out


def _strings(node: ast.AST) -> list[str] | None:
    """The string elements of a literal tuple/list/set (or frozenset/set/tuple of one), else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple") \
            and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        vals = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return vals if len(vals) == len(node.elts) else None
    return None


def scan(root: Path) -> dict:
    in_fn = {"total": 0, "depmicro": 0, "depmicro_in_cli_handlers": 0, "depmicro_elsewhere": 0}
    elsewhere: list[str] = []
    direction, metric_lists, baseline_lists = [], [], []
    tag_files: set[str] = set()
    longest = {"name": None, "file": None, "lines": 0}
    big, big_tests = [], []
    lazy_rows, loaders = [], []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        is_test = rel.startswith("tests/")
        text = path.read_text(encoding="utf-8", errors="replace")
        n_lines = len(text.splitlines())
        if n_lines > 400:
            (big_tests if is_test else big).append({"file": rel, "lines": n_lines})
        if is_test or not rel.startswith(PACKAGES):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > longest["lines"]:
                    longest = {"name": node.name, "file": rel, "lines": size}
            if isinstance(node, ast.Call) and _lazy_handler(node):
                lazy_rows.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.Call) and _is_import_module(node) and _in_function(node, parents):
                loaders.append(f"{rel}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                p, inside = parents.get(node), False
                while p is not None:
                    if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        inside = True
                        break
                    p = parents.get(p)
                if inside:
                    in_fn["total"] += 1
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(m == "depmicro" or m.startswith("depmicro.") for m in mods):
                        in_fn["depmicro"] += 1
                        if CLI_MODULE.search(rel):
                            in_fn["depmicro_in_cli_handlers"] += 1
                        else:
                            in_fn["depmicro_elsewhere"] += 1
                            elsewhere.append(f"{rel}:{node.lineno}")
            vals = _strings(node)
            if vals is not None:
                s = set(vals)
                where = f"{rel}:{node.lineno}"
                if {"rmse", "mae"} <= s and "pcc" not in s:
                    direction.append(where)
                if {"pcc", "cos", "rmse", "mae"} <= s:
                    metric_lists.append(where)
                if {"mean", "knn", "iterative"} <= s:
                    baseline_lists.append(where)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and TAG.search(node.value):
                tag_files.add(rel)
    return {
        "root": str(root),
        "imports_in_functions": in_fn,
        "depmicro_imports_in_functions_outside_cli": elsewhere,
        "lazy_cli_entry_points": {"table_rows_with_handler_strings": len(lazy_rows),
                                  "import_module_calls_in_functions": sorted(loaders)},
        "metric_direction_definitions": _places(direction),
        "metric_list_definitions": _places(metric_lists),
        "baseline_list_definitions": _places(baseline_lists),
        "files_with_mlflow_tag_names": {"count": len(tag_files), "files": sorted(tag_files)},
        "longest_function": longest,
        "files_over_400_lines": {"package": big, "tests": big_tests},
    }


def _lazy_handler(call: ast.Call) -> bool:
    """A `Command(name, help, "module:function", ...)` row (handler positional or by keyword)."""
    if not (isinstance(call.func, ast.Name) and call.func.id == "Command"):
        return False
    args = list(call.args[2:3]) + [k.value for k in call.keywords if k.arg == "handler"]
    return any(isinstance(a, ast.Constant) and isinstance(a.value, str) and ":" in a.value for a in args)


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (isinstance(f, ast.Name) and f.id == "import_module") \
        or (isinstance(f, ast.Name) and f.id == "__import__")


def _in_function(node: ast.AST, parents: dict) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        p = parents.get(p)
    return False


def _places(where: list[str]) -> dict:
    at = sorted(set(where))  # frozenset({...}) is one definition, not two
    return {"count": len(at), "at": at}


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parents[2]).resolve()
    if not (root / "core").is_dir():
        print(f"structure.py: error: {root} is not a depmicro checkout (no core/)", file=sys.stderr)
        return 2
    print(json.dumps(scan(root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
