"""The layer rule of house-style.md: imports inside vdisk_tool only point down.

errors < formats < image < fs < ipva < cli. The import graph is read with ast (nothing is
imported), so a forbidden import fails here even if it sits in a function body.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = "vdisk_tool"
SRC = Path(__file__).resolve().parent.parent / "src" / PKG
ORDER = ["errors", "formats", "image", "fs", "ipva", "cli"]
RANK = {name: i for i, name in enumerate(ORDER)}


def layer_of_module(dotted: str) -> str | None:
    """'vdisk_tool.image.disk' -> 'image'; top-level helpers (__init__, __main__) -> None."""
    parts = dotted.split(".")
    if parts[0] != PKG or len(parts) < 2:
        return None
    return parts[1] if parts[1] in RANK else None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # `from .. import image` names a sub-package through the alias
            for alias in node.names:
                out.append((node.lineno, f"{target}.{alias.name}"))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        src_layer = layer_of_module(module_name(path))
        if src_layer is None:
            continue
        for line, target in imported_modules(path):
            dst_layer = layer_of_module(target)
            if dst_layer is None:
                continue
            if RANK[dst_layer] > RANK[src_layer]:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {src_layer} imports {target}")
    return bad


def test_source_tree_found():
    assert (SRC / "errors.py").is_file()
    assert len(list(SRC.rglob("*.py"))) > 5


def test_imports_point_down():
    assert violations() == []


def test_formats_do_no_io_or_printing():
    """formats/ holds schemas only: no typer/rich, no open(), no print()."""
    bad = []
    for path in sorted((SRC / "formats").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("open", "print"):
                bad.append(f"{path.name}:{node.lineno}: {node.func.id}()")
        for line, target in imported_modules(path):
            if target.split(".")[0] in ("typer", "rich", "click"):
                bad.append(f"{path.name}:{line}: imports {target}")
    assert bad == []


def test_only_cli_prints():
    """Only cli/ talks to the terminal (house-style: the ONLY layer that prints)."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        layer = layer_of_module(module_name(path))
        if layer in (None, "cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id == "print":
                bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: print()")
        for line, target in imported_modules(path):
            if target.split(".")[0] in ("typer", "rich", "click"):
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: imports {target}")
    assert bad == []


@pytest.mark.parametrize("src, target, expect_bad", [
    ("vdisk_tool/formats/x.py", "from ..image import disk", True),
    ("vdisk_tool/formats/x.py", "from ..errors import FormatError", False),
    ("vdisk_tool/image/x.py", "from .. import cli", True),
    ("vdisk_tool/image/x.py", "import vdisk_tool.fs.fat", True),
    ("vdisk_tool/cli/x.py", "from ..image.disk import open_image", False),
    ("vdisk_tool/errors.py", "from .formats import vmdk_sparse", True),
    ("vdisk_tool/fs/x.py", "from ..ipva import bundle", True),
])
def test_checker_catches_upward_imports(tmp_path, monkeypatch, src, target, expect_bad):
    """The walker itself: a fake tree with one import, judged the way the real tree is."""
    root = tmp_path / "src" / PKG
    f = root / src.split("/", 1)[1]
    f.parent.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    f.write_text(target + "\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", root)
    assert bool(violations()) == expect_bad


def test_vmdk_finding_codes_are_in_the_spec():
    """house-style: every Finding code is listed in its specs/ file."""
    import re

    spec = (SRC.parent.parent / "specs" / "vmdk.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(vmdk\.[a-z0-9-]+)`", spec))
    used = set()
    for path in SRC.rglob("*.py"):
        used |= set(re.findall(r"""["'](vmdk\.[a-z0-9-]+)["']""", path.read_text(encoding="utf-8")))
    assert used, "no vmdk.* finding codes found in the source"
    assert sorted(used - listed) == []
