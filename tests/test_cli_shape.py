"""One shape for every command, found by walking the app (so commands added later are
covered too): usage errors are one line + hint with exit 2, choices are enums whose values
the error and -h list, and group help at 80 columns has one aligned summary per command."""
from __future__ import annotations

import re
import subprocess
import sys
from enum import Enum

import pytest
from conftest import vdisk
from typer.main import get_command

from vdisk_tool.cli import choices
from vdisk_tool.cli.app import app, polish
from vdisk_tool.image.create import ADAPTERS, SUBFORMATS
from vdisk_tool.ipva.attachments import HYPERV_NICS, PROXMOX_NICS, VMWARE_NICS
from vdisk_tool.ipva.golden import TARGETS
from vdisk_tool.ipva.ova_deploy import DEPLOY_TARGETS


def _tree():
    root = get_command(app)
    polish(root)
    out, stack = [], [((), root)]
    while stack:
        path, cmd = stack.pop()
        out.append((path, cmd))
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append(((*path, name), sub))
    return sorted(out, key=lambda t: t[0])


TREE = _tree()
LEAVES = [p for p, c in TREE if not hasattr(c, "commands")]
GROUPS = [p for p, c in TREE if hasattr(c, "commands")]


def _usage_error_shape(r) -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert 1 <= len(lines) <= 2, r.stderr
    assert lines[0].startswith("vdisk: error: ")
    assert len(lines) == 1 or lines[1].startswith("hint: ")
    assert "\u256d" not in r.stderr and "Traceback" not in r.output   # no rich box
    assert r.stdout == ""


@pytest.mark.parametrize("path", LEAVES, ids=" ".join)
def test_unknown_option_is_one_line_and_exit_2(runner, path) -> None:
    _usage_error_shape(vdisk(runner, *path, "--no-such-option"))


@pytest.mark.parametrize("path", [p for p in LEAVES
                                  if any(a.required for a in dict(TREE)[p].params)], ids=" ".join)
def test_missing_argument_is_one_line_and_exit_2(runner, path) -> None:
    r = vdisk(runner, *path)
    _usage_error_shape(r)
    assert "missing" in r.stderr


def test_suggestion_goes_to_the_hint(runner) -> None:
    r = vdisk(runner, "create", "x.vmdk", "--sze", "1M")
    _usage_error_shape(r)
    assert r.stderr.splitlines() == ["vdisk: error: no such option: --sze",
                                     "hint: did you mean --size?"]


@pytest.mark.parametrize("cmd, args, values", [
    (["create"], ["x.vmdk", "-s", "1M", "-F", "bogus"], (*SUBFORMATS, "raw")),
    (["create"], ["x.vmdk", "-s", "1M", "--adapter", "scsi"], ADAPTERS),
    (["convert"], ["a", "b", "--subformat", "bogus"], (*SUBFORMATS, "raw")),
    (["boot", "create"], ["b.vmdk", "--firmware", "f", "--subformat", "bogus"], (*SUBFORMATS, "raw")),
    (["bundle", "create"], ["d", "--firmware", "f", "--target", "kvm"], tuple(TARGETS)),
    (["bundle", "deploy"], ["p.ova", "d", "--target", "ova"], tuple(DEPLOY_TARGETS)),
    (["fs", "format"], ["x.img", "--fat", "13"], ("12", "16", "32")),
])
def test_a_bad_choice_lists_the_valid_values(tmp_path, runner, cmd, args, values) -> None:
    r = vdisk(runner, *cmd, *args)
    _usage_error_shape(r)
    for v in values:
        assert f"'{v}'" in r.stderr
    helptext = " ".join(vdisk(runner, *cmd, "-h").stdout.split())
    assert "One of: " + ", ".join(values) + "." in helptext


def test_every_command_on_an_existing_image_takes_format() -> None:
    """`-f raw|vmdk` overrides the guess wherever an existing image is opened (README)."""
    missing = [" ".join(path) for path, cmd in TREE if not hasattr(cmd, "commands")
               and any(p.param_type_name == "argument" and p.name in ("image", "disk", "cf_disk")
                       for p in cmd.params)
               and not any("--format" in p.opts for p in cmd.params)]
    assert missing == []


def test_choice_enums_mirror_the_library() -> None:
    assert [c.value for c in choices.Subformat] == [*SUBFORMATS, "raw"]
    assert [c.value for c in choices.Adapter] == list(ADAPTERS)
    assert [c.value for c in choices.Target] == list(TARGETS)
    assert [c.value for c in choices.DeployTarget] == list(DEPLOY_TARGETS)
    assert {c.value for c in choices.NicModel} == {*VMWARE_NICS, *PROXMOX_NICS, *HYPERV_NICS}


# Options that take free text (a path, a size, a MAC, a name...), by parameter name. Any
# other text option is a choice in disguise: make it an enum (cli/choices.py) so that -h
# and the error list its values, or add it here if its value really is free.
FREE_TEXT_OPTIONS = {"all_dir", "backup", "cf_size", "firmware", "hw_version", "label_", "mac",
                     "name", "output", "size", "text", "version", "vmx",
                     "options",                       # qemu-img style key=value pairs
                     "storage", "bridge", "switch"}   # names on the target platform


def test_every_choice_valued_option_is_an_enum() -> None:
    """Walk every command: an option is a flag, a number, an enum, or free text listed
    above; every enum option lists its values in -h."""
    loose, unlisted = [], []
    for path, cmd in TREE:
        for p in cmd.params:
            if p.param_type_name != "option" or p.is_flag:
                continue
            annotation = p.type_descriptor.annotation
            where = f"{' '.join(path)} {p.opts[0]}"
            if annotation is str and p.name not in FREE_TEXT_OPTIONS:
                loose.append(where)
            values = [c.value for c in annotation] if isinstance(annotation, type) and \
                issubclass(annotation, Enum) else None
            if values and f"One of: {', '.join(values)}." not in (p.help or ""):
                unlisted.append(where)
    assert loose == [] and unlisted == []


@pytest.mark.parametrize("args", [
    ["create", "x.vmdk", "--size", "10Q"],
    ["boot", "create", "b.vmdk", "--firmware", "f", "--size", "10Q"],
    ["cf", "grow", "c.vmdk", "--size", "1X"],
    ["bundle", "create", "d", "--firmware", "f", "--cf-size", "big"],
    ["bundle", "set-mac", "d", "--mac", "00:0c:29:01:02"],
    ["bundle", "create", "d", "--firmware", "f", "--mac", "nonsense"],
    ["bundle", "clone", "a", "b", "--mac", "00:50:56:40:00:00"],
])
def test_bad_values_are_usage_errors(runner, args) -> None:
    _usage_error_shape(vdisk(runner, *args))


def test_the_console_script_prints_one_line(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "vdisk_tool", "create", str(tmp_path / "x.vmdk"),
                        "--size", "10Q"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "vdisk: error: invalid value for '--size': not a size: " \
                                       "'10Q' (use e.g. 100M, 8G)"


# -- help ---------------------------------------------------------------------------------

def _help(runner, path) -> str:
    r = runner.invoke(app, [*path, "-h"], terminal_width=80, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "vdisk")
def test_group_listing_has_aligned_one_line_summaries(runner, path) -> None:
    text = _help(runner, path)
    listing = text.split("\nCommands:\n", 1)[1].splitlines()
    column = None
    names = set(dict(TREE)[path].commands)
    for line in listing:
        assert len(line) <= 80, line
        m = re.match(r"  (\S+)( +)(\S.*)$", line)
        if m and m.group(1) in names:
            start = m.start(3)
            assert column in (None, start), line          # every summary in one column
            column = start
            names.discard(m.group(1))
        else:
            raise AssertionError(f"a summary wraps at 80 columns: {line!r}")
    assert not names, f"not listed: {names}"


@pytest.mark.parametrize("path", LEAVES + GROUPS, ids=lambda p: " ".join(p) or "vdisk")
def test_help_names_values_and_leaves_keep_their_example(runner, path) -> None:
    text = _help(runner, path)
    assert not re.search(r"<(str|bool|int|list\[\w+\])>|\{\w+\}", text), text
    assert "\u256d" not in text
    if path in LEAVES:
        assert "Example: vdisk " in text


def test_summaries_are_one_sentence_without_breaks() -> None:
    for path, cmd in TREE:
        if path:
            assert cmd.short_help and "\n" not in cmd.short_help, path


@pytest.mark.parametrize("path", LEAVES + GROUPS, ids=lambda p: " ".join(p) or "vdisk")
def test_each_example_stands_whole_on_its_own_line(runner, path) -> None:
    """An example is one line that starts with "Example: vdisk": never run into the text
    before it, never wrapped onto the next line (the next line is blank or another one)."""
    lines = _help(runner, path).splitlines()
    for i, line in enumerate(lines):
        if "Example:" not in line:
            continue
        assert line.strip().startswith("Example: vdisk "), line
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        assert nxt == "" or nxt.startswith("Example: vdisk "), (line, nxt)
