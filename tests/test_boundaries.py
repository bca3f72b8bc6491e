"""The folder tree is the architecture: lifecycle and HTTP know backends only through
their interfaces (cachesrv.store.ChunkStore, cachesrv.catalog.CatalogBackend)."""

from __future__ import annotations

import ast
from pathlib import Path

import cachesrv

PACKAGE = Path(cachesrv.__file__).parent
FORBIDDEN = ("sqlite3", "cachesrv.store.local", "cachesrv.catalog.sqlite", "cachesrv.db")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                package = path.relative_to(PACKAGE.parent).parent.parts
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _offending(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_lifecycle_and_http_import_no_backend() -> None:
    checked = 0
    for folder in ("lifecycle", "http"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            checked += 1
            bad = sorted(n for n in _imports(path) if _offending(n))
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
    assert checked >= 10  # the check looked at the real tree


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    sample = PACKAGE / "lifecycle" / "gc.py"
    assert "cachesrv.store.ChunkStore" in _imports(sample)
    assert _offending("cachesrv.store.local.packs") and _offending("sqlite3")
    assert not _offending("cachesrv.store") and not _offending("cachesrv.storelocal")
