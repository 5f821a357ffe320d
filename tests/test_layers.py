"""The layering rules, read from the code's syntax tree (not its text): only exprof/store/
speaks SQL or holds a connection, and clients/ imports neither store/ nor scoring/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "exprof"
DB_LIBRARIES = ("sqlalchemy", "sqlite3", "psycopg", "alembic")
DB_ATTRIBUTES = {"exec_driver_sql", "execute", "executemany", "connect", "engine", "cursor"}
# A string that is a statement: a keyword and the word that must follow it somewhere.
SQL = re.compile(
    r"^\s*(select\b.+\bfrom|insert\s+into|update\s+\w+\s+set|delete\s+from|create\s+"
    r"(table|index|view|role|database)|drop\s+(table|index|view|database)|alter\s+table|"
    r"pragma\s+\w+|grant\s+\w+|with\s+\w+\s+as\s*\()",
    re.IGNORECASE | re.DOTALL,
)


def modules(*, outside: str | None = None, inside: str | None = None) -> list[Path]:
    paths = sorted(PACKAGE.rglob("*.py"))
    if outside:
        paths = [p for p in paths if p.relative_to(PACKAGE).parts[0] != outside]
    if inside:
        paths = [p for p in paths if p.relative_to(PACKAGE).parts[0] == inside]
    return paths


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string nodes that are docstrings (prose may say SELECT)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out.add(id(value))
    return out


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])


def imported(tree: ast.AST, package: str) -> list[str]:
    """Every module the file imports, anywhere (inside functions too), made absolute."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def sql_offences(source: str, where: str, package: str) -> list[str]:
    tree = ast.parse(source, where)
    skip = docstrings(tree)
    found = list(
        dict.fromkeys(
            f"{where}:{node.lineno}: imports {name.split('.')[0]}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in imported(ast.Module(body=[node], type_ignores=[]), package)
            if name.split(".")[0] in DB_LIBRARIES
        )
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in DB_ATTRIBUTES:
            found.append(f"{where}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in skip and SQL.search(node.value):
                found.append(f"{where}:{node.lineno}: SQL {node.value[:40]!r}")
    return found


def test_no_sql_outside_the_store_package():
    """Only exprof/store/ speaks SQL, imports a database library or touches a connection;
    the one exception is doctor's catching of the driver's error class."""
    offences = [
        offence
        for path in modules(outside="store")
        for offence in sql_offences(path.read_text(), str(path.relative_to(REPO)), package_of(path))
    ]
    assert offences == ["exprof/doctor.py:9: imports sqlalchemy"]


@pytest.mark.parametrize(
    "source",
    [
        'rows = conn.exec_driver_sql("SELECT 1")',
        'q = """\n  select run_id\n    from events\n"""',
        "q = 'insert into events values (1)'",
        "import sqlite3",
        "from sqlalchemy import text",
        "def f():\n    from psycopg import connect",
        "x = store.engine",
        "q = 'PRAGMA journal_mode=WAL'",
    ],
)
def test_the_guard_sees_sql_in_any_spelling(source):
    assert sql_offences(source, "probe.py", "exprof")


def test_the_guard_lets_prose_be():
    prose = '"""Select the runs from the store; update the view."""\nx = "select one"\n'
    assert sql_offences(prose, "probe.py", "exprof") == []


def test_clients_import_neither_the_store_nor_scoring():
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in modules(inside="clients")
        for name in imported(ast.parse(path.read_text()), package_of(path))
        if name.startswith(("exprof.store", "exprof.scoring", "exprof.run"))
    ]
    assert offenders == []
