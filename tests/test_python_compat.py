"""The package runs on every Python it declares (pyproject: requires-python >= 3.10).

CI runs the suite under each installed interpreter; this test also keeps names that are
newer than the lowest supported version out of the sources, so a break shows up on any
interpreter, not only on 3.10.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "vdisk_tool"

# Names added after 3.10 (What's New in Python 3.11, 3.12, 3.13).
NEWER_TYPING = {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type",
                "dataclass_transform", "Required", "NotRequired", "TypeVarTuple", "Unpack",
                "override", "TypeAliasType", "get_overloads", "clear_overloads", "ReadOnly",
                "TypeIs", "get_protocol_members", "is_protocol", "NoDefault"}
NEWER_MODULES = {"tomllib", "wsgiref.types"}
NEWER_ATTRS = {("datetime", "UTC"), ("enum", "StrEnum"), ("enum", "ReprEnum"), ("enum", "verify"),
               ("hashlib", "file_digest"), ("itertools", "batched"), ("asyncio", "TaskGroup"),
               ("asyncio", "timeout"), ("contextlib", "chdir"), ("operator", "call"),
               ("math", "cbrt"), ("math", "exp2"), ("os", "process_cpu_count"),
               ("copy", "replace"), ("warnings", "deprecated")}
NEWER_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup", "PythonFinalizationError"}


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _lowest_supported() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)"', text)
    assert m, "pyproject.toml declares no requires-python lower bound"
    return (3, int(m.group(1)))


def test_lowest_supported_is_declared_everywhere() -> None:
    low = _lowest_supported()
    text = (ROOT / "pyproject.toml").read_text()
    assert f'"Programming Language :: Python :: {low[0]}.{low[1]}"' in text
    assert f'target-version = "py{low[0]}{low[1]}"' in text
    assert f"Python {low[0]}.{low[1]}+" in (ROOT / "README.md").read_text()


def test_no_names_newer_than_the_lowest_supported_python() -> None:
    assert _lowest_supported() == (3, 10), "update the lists above when the floor moves"
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module in NEWER_MODULES:
                    bad.append(f"{where}: module {node.module}")
                for alias in node.names:
                    if node.module == "typing" and alias.name in NEWER_TYPING:
                        bad.append(f"{where}: typing.{alias.name}")
                    if (node.module, alias.name) in NEWER_ATTRS:
                        bad.append(f"{where}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                bad.extend(f"{where}: module {a.name}" for a in node.names if a.name in NEWER_MODULES)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if (node.value.id, node.attr) in NEWER_ATTRS or (
                        node.value.id == "typing" and node.attr in NEWER_TYPING):
                    bad.append(f"{where}: {node.value.id}.{node.attr}")
            elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
                bad.append(f"{where}: {node.id}")
            elif type(node).__name__ in ("TryStar", "TypeAlias", "TypeVar", "ParamSpec"):
                bad.append(f"{where}: {type(node).__name__} syntax")
    assert not bad, "newer than Python 3.10:\n" + "\n".join(bad)


def test_sources_compile_with_the_running_interpreter() -> None:
    for path in _sources():
        compile(path.read_text(), str(path), "exec")
    assert sys.version_info >= _lowest_supported()
