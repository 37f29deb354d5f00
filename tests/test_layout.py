"""The house rules of /work/shared/ARCHITECTURE.md ("Modules", "Tests") as tests.

Everything here reads source files with ``ast``: nothing under apiarium/ is imported or run.
Each failure lists every offender, with the file and line where it can be seen.
"""
from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "apiarium"
TESTS = REPO / "tests"
HANDLERS = "apiarium.handlers"
# what handlers share: the base classes, and the stored-file mixin two routes serve files with
SHARED_HANDLER_MODULES = ("apiarium.handlers.base", "apiarium.handlers.files",
                          "apiarium.handlers.admission")
# the modules that may import tornado: the handlers, the wiring, and the worker processes
TORNADO_ALLOWED = ("apiarium.app", "apiarium.workers")


def module_name(path: Path) -> str:
    """apiarium/handlers/chat.py -> apiarium.handlers.chat; a package's __init__ -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import statement anywhere in the file (inside functions
    too).  ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (c may be a submodule);
    relative imports are resolved against the file's own package."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def runs_as_main(path: Path, package: str) -> bool:
    """True if the file spells ``[..., "-m", "<package>", ...]``: a test that runs the package
    as ``python -m`` covers its __main__ (which cannot be imported: it runs and exits)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b == package for a, b in itertools.pairwise(words)):
                return True
    return False


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def listing(found: dict[tuple[str, int], str]) -> str:
    """One line per import statement: ``file:line imports name`` (the shortest name the
    statement brought in that broke the rule)."""
    return "\n  ".join(f"{file}:{line} imports {name}"
                        for (file, line), name in sorted(found.items()))


def note(found: dict[tuple[str, int], str], path: Path, line: int, name: str) -> None:
    key = (rel(path), line)
    if key not in found or len(name) < len(found[key]):
        found[key] = name


SOURCES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TEST_FILES = sorted(TESTS.rglob("*.py"))


def test_the_layout_scan_sees_the_code() -> None:
    # guards the checks below against passing because they looked at nothing
    assert "apiarium.errors" in SOURCES and "apiarium" in SOURCES
    assert any(p.name.startswith("test_") for p in TEST_FILES)
    seen = {name for _line, name in imports(SRC / "handlers" / "base.py")}
    assert "apiarium.errors" in seen, sorted(seen)


def test_every_module_is_imported_by_a_test() -> None:
    """tests/ mirrors the modules: each module under apiarium/ is imported by some file under
    tests/ (``import apiarium.x.y`` or ``from apiarium.x import y``; importing a submodule
    counts for its packages)."""
    covered: set[str] = set()
    for path in TEST_FILES:
        for _line, name in imports(path):
            parts = name.split(".")
            covered.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        if runs_as_main(path, "apiarium"):
            covered.add("apiarium.__main__")
    missing = [f"{rel(path)}  ({name})" for name, path in SOURCES.items() if name not in covered]
    assert not missing, ("no test module imports these modules (tests/ mirrors the modules: "
                         "give each its tests):\n  " + "\n  ".join(missing))


def test_handlers_do_not_import_each_other() -> None:
    """Handlers never import each other; what they share lives in handlers/base.py (and
    files.py, the stored-file mixin)."""
    found: dict[tuple[str, int], str] = {}
    for name, path in SOURCES.items():
        if not name.startswith(HANDLERS + ".") or path.name == "__init__.py":
            continue        # the package's __init__ is no handler (it may gather `routes`)
        for line, target in imports(path):
            sibling = target.startswith(HANDLERS + ".") and target in SOURCES
            if sibling and target != name and target not in SHARED_HANDLER_MODULES:
                note(found, path, line, target)
    assert not found, ("handler modules import each other (share through handlers/base.py "
                       "instead):\n  " + listing(found))


def test_only_handlers_and_app_import_tornado() -> None:
    """Only handlers/ and app.py (and workers.py) import tornado; the rest of the code is
    plain asyncio and raises errors.ApiError."""
    found: dict[tuple[str, int], str] = {}
    for name, path in SOURCES.items():
        if name == HANDLERS or name.startswith(HANDLERS + ".") or name in TORNADO_ALLOWED:
            continue
        for line, target in imports(path):
            if target == "tornado" or target.startswith("tornado."):
                note(found, path, line, target)
    assert not found, "tornado imported outside handlers/ and app.py:\n  " + listing(found)


def test_only_app_imports_the_handlers() -> None:
    """Imports point downward: nothing but app.py (and handlers/ itself) imports handlers."""
    found: dict[tuple[str, int], str] = {}
    for name, path in SOURCES.items():
        if name == HANDLERS or name.startswith(HANDLERS + ".") or name == "apiarium.app":
            continue
        for line, target in imports(path):
            if target == HANDLERS or target.startswith(HANDLERS + "."):
                note(found, path, line, target)
    assert not found, ("apiarium.handlers imported from outside handlers/ and app.py (imports "
                       "point downward only):\n  " + listing(found))
