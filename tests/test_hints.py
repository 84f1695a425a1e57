"""Hints are true: every `--option` a hint or fix line names exists on the command it tells
the user to run.

The hints are collected from the source (hint=/fix= arguments, messages that say
"pass --...", and the doctor's `ctx.command(...)` fix lines), not from a list kept by hand.
A hint that names a command (`vdisk dump init`, 'vdisk verify X') is checked against that
command; an option named outside such a quote belongs to the command that prints the
hint: the command itself (cli/), the commands that call the helper that raises it
(cli/), or, for the layers below, the commands listed in PRINTERS (a new library hint
that names an option fails here until it is listed).
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main

from vdisk_tool.cli.app import app

SRC = Path(__file__).resolve().parents[1] / "src" / "vdisk_tool"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*[a-z]")
QUOTED = re.compile(r"[`'](vdisk [^`']*)[`']")


def _commands() -> dict[tuple[str, ...], object]:
    out: dict[tuple[str, ...], object] = {}

    def walk(cmd, path: tuple[str, ...]) -> None:
        out[path] = cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + (name,))
    walk(typer.main.get_command(app), ())
    return out


COMMANDS = _commands()
ROOT_OPTIONS = {o for p in COMMANDS[()].params for o in p.opts}      # --debug, --version
BY_FUNCTION = {(inspect.unwrap(c.callback).__module__, inspect.unwrap(c.callback).__name__): path
               for path, c in COMMANDS.items() if getattr(c, "callback", None)}


def options_of(path: tuple[str, ...]) -> set[str]:
    return {o for p in COMMANDS[path].params for o in (*p.opts, *p.secondary_opts)} | ROOT_OPTIONS


def resolve(words: list[str]) -> tuple[str, ...]:
    """The longest command path the words start with."""
    path: tuple[str, ...] = ()
    for w in words:
        if path + (w,) in COMMANDS:
            path += (w,)
        else:
            break
    return path


def _with(*groups: str, also: tuple[tuple[str, ...], ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the groups ('' = the top-level ones that take an image)."""
    picked = [p for p in COMMANDS if len(p) == 2 and p[0] in groups]
    if "" in groups:
        picked += [(n,) for n in ("info", "map", "compare", "check", "convert", "grow", "verify")]
    return picked + list(also)


WRITERS = [("fs", n) for n in ("put", "rm", "mkdir", "mv", "label", "format", "check")] + [
    ("check",), ("grow",), ("create",), ("convert",), ("boot", "restore"), ("flash", "reset"),
    ("flash", "restore"), ("dump", "write"), ("dump", "clear"), ("dump", "init"),
    ("cf", "format"), ("cf", "grow"), ("bundle", "check"), ("bundle", "set-mac")]
ROLE_WRITERS = [("dump", "init"), ("dump", "clear"), ("dump", "write"), ("flash", "reset"),
                ("flash", "restore"), ("cf", "format"), ("cf", "grow"), ("boot", "restore"),
                ("fs", "format")]
BACKUP_TAKERS = [p for p in COMMANDS if p and "--backup" in options_of(p)]
# (module under src/vdisk_tool, function) -> the commands that can print its hint
PRINTERS: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("image/disk.py", "_resolve"): _with("fs", "cf", "dump", "flash", "",
                                         also=(("boot", "restore"),)),
    ("image/safe.py", "check_unlocked"): WRITERS,
    ("image/backup.py", "check_backup_target"): BACKUP_TAKERS,
    ("ipva/role.py", "require_role"): ROLE_WRITERS,
    ("ipva/dump.py", "read_payload"): [("dump", "extract")],
    ("ipva/flash.py", "plan_reset"): [("flash", "reset")],
    ("ipva/cf.py", "plan_cf"): [("cf", "grow")],
    ("ipva/golden.py", "plan_clone"): [("bundle", "clone")],
    ("ipva/appliance.py", "refuse_running"): [("bundle", "clone"), ("bundle", "convert")],
    ("ipva/convert.py", "plan_convert"): [("bundle", "convert")],
    ("ipva/bundle.py", "validate_static_mac"): [("bundle", "set-mac")],
    ("fs/format.py", "plan_volume"): [("fs", "format")],
    ("fs/transfer.py", "_create"): [("fs", "get")],
    ("image/create.py", "create_image"): [("create",), ("convert",)],
    ("ipva/boot_restore.py", "create_boot_disk"): [("boot", "create")],
}


@dataclass(frozen=True)
class Hint:
    where: str                  # module:line
    module: str                 # path under src/vdisk_tool
    function: str
    text: str


def _texts(node: ast.AST, names: dict[str, str] | None = None) -> list[str]:
    """The string(s) an expression can be; values shown as …, except the module's own
    string constants (`OVERRIDE = "--any-disk"`)."""
    names = names or {}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in names:
        return [names[node.id]]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else
                        (_texts(v.value, names) or ["…"])[0] if isinstance(v, ast.FormattedValue)
                        else "…" for v in node.values)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _texts(node.left, names) for b in _texts(node.right, names)]
    if isinstance(node, ast.IfExp):
        return _texts(node.body, names) + _texts(node.orelse, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "command":
        words = [a.value if isinstance(a, ast.Constant) else "…" for a in node.args]
        return ["`vdisk " + " ".join(str(w) for w in words) + "`"]
    return []


def _collect() -> list[Hint]:
    hints = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                  for t in n.targets if isinstance(t, ast.Name)}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            parts = {id(v) for j in ast.walk(fn) if isinstance(j, ast.JoinedStr) for v in j.values}
            for node in ast.walk(fn):
                found: list[str] = []
                if id(node) in parts:
                    continue
                if isinstance(node, ast.keyword) and node.arg in ("hint", "fix"):
                    found = _texts(node.value, consts)
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "command" and rel.startswith("ipva/doctor"):
                    found = _texts(node)
                elif isinstance(node, (ast.Constant, ast.JoinedStr)):
                    found = [t for t in _texts(node) if "pass --" in t]
                hints += [Hint(f"{rel}:{node.lineno}", rel, fn.name, t)  # type: ignore[attr-defined]
                          for t in found if "--" in t or "vdisk " in t]
    return list(dict.fromkeys(hints))


HINTS = _collect()


def _callers(module: str, function: str) -> set[tuple[str, ...]]:
    """The commands that call `function`, directly or through the helpers of their own
    module (a cli/common.py helper: from any cli module)."""
    out = set()
    for p in (SRC / "cli").glob("*.py"):
        if module not in ("cli/common.py", f"cli/{p.name}"):
            continue
        fns = [n for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef)]
        names = {function}
        for _ in range(4):
            for fn in fns:
                called = {n.func.id for n in ast.walk(fn)
                          if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
                if fn.name in names or called & names:
                    names.add(fn.name)
        out |= {BY_FUNCTION[k] for k in ((f"vdisk_tool.cli.{p.stem}", n) for n in names)
                if k in BY_FUNCTION}
    return out


def _printers(h: Hint) -> list[tuple[str, ...]]:
    if h.module.startswith("cli/"):
        return sorted(_callers(h.module, h.function))
    return PRINTERS.get((h.module, h.function), [])


def test_hints_are_found():
    """The collector sees the hints this test is about (a broken collector passes nothing)."""
    texts = " | ".join(h.text for h in HINTS)
    for expected in ("pass --allow-outside", "pass --salvage", "pass --overwrite", "--any-disk",
                     "pass --yes", "`vdisk dump init`", "--random", "choose a free name"):
        assert expected in texts, expected


@pytest.mark.parametrize("hint", HINTS, ids=[h.where for h in HINTS])
def test_every_option_a_hint_names_exists(hint: Hint):
    rest = hint.text
    for quoted in QUOTED.findall(hint.text):
        words = quoted.split()[1:]
        path = resolve(words)
        assert path, f"{hint.where}: {quoted!r} names no vdisk command"
        missing = set(OPTION.findall(quoted)) - options_of(path)
        assert not missing, f"{hint.where}: `vdisk {' '.join(path)}` has no {sorted(missing)}"
        rest = rest.replace(quoted, "")
    bare = set(OPTION.findall(rest))
    if not bare:
        return
    printers = _printers(hint)
    assert printers, f"{hint.where} ({hint.function}): which commands print {hint.text!r}?"
    wrong = {path: sorted(bare - options_of(path)) for path in printers if bare - options_of(path)}
    assert not wrong, (
        f"{hint.where}: {hint.text!r} is printed by commands that lack the option: {wrong}")
