"""Security (issue #8): file names read from images are never trusted as host paths.

- extent and parent paths outside the image's folder are refused (exit 3) unless
  --allow-outside (the CVE-2022-47951 class: a descriptor naming /etc/passwd as an extent);
- FAT names with '..', '/', '\\', 'C:' or control characters land sanitised inside DEST;
- a symbolic link at a target path is not followed on write;
- temporary files are created beside the target, with O_EXCL (seen through an audit hook);
- specs/findings.md names every Finding code of the code base.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need_tool, run

ROOT = Path(__file__).resolve().parent.parent
SECTOR = 512


def vdisk(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vdisk"
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, MTOOLS_SKIP_CHECK="1", **(env or {})), timeout=120)


def refused(r: subprocess.CompletedProcess) -> bool:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return (r.returncode == 3 and "Traceback" not in r.stderr
            and sum(ln.startswith("vdisk: error: ") for ln in lines) == 1
            and ("outside" in r.stderr))


# -- extent and parent paths ----------------------------------------------------------------------
@pytest.fixture
def flat_vm(tmp_path) -> Path:
    """vm/disk.vmdk: a monolithicFlat descriptor (qemu-img) naming vm/disk-flat.vmdk."""
    need_tool("qemu-img")
    vm = tmp_path / "vm"
    vm.mkdir()
    vc.qemu_write(vc.qemu_create(vm / "disk.vmdk", 1 << 20, "monolithicFlat"),
                  [vc.Write(0x77, 4096, 4096)])
    return vm / "disk.vmdk"


def point_extent(desc: Path, name: str) -> None:
    vc.replace_text(desc, '"disk-flat.vmdk"', f'"{name}"')


READERS = [["info"], ["map"], ["check"], ["compare", "{other}"]]


def _run_reader(cmd: list[str], image: Path, other: Path, *extra: str):
    args = [a.replace("{other}", str(other)) for a in cmd]
    if cmd[0] == "compare":
        return vdisk("compare", str(image), *args[1:], *extra)
    return vdisk(cmd[0], str(image), *args[1:], *extra)


@pytest.mark.parametrize("cmd", READERS, ids=lambda c: c[0])
def test_extent_in_parent_folder_refused_then_allowed(flat_vm, tmp_path, cmd):
    shutil.move(flat_vm.parent / "disk-flat.vmdk", tmp_path / "x-flat.vmdk")
    point_extent(flat_vm, "../x-flat.vmdk")
    other = tmp_path / "same.raw"
    shutil.copy(tmp_path / "x-flat.vmdk", other)
    r = _run_reader(cmd, flat_vm, other)
    assert refused(r), r.stderr
    r = _run_reader(cmd, flat_vm, other, "--allow-outside")
    assert r.returncode in (0, 1) and "outside" not in r.stderr, r.stderr
    if cmd[0] == "compare":
        assert r.returncode == 0            # the content is read from ../x-flat.vmdk


def test_absolute_extent_etc_passwd_refused(flat_vm):
    point_extent(flat_vm, "/etc/passwd")
    for cmd in (["info", str(flat_vm)], ["map", str(flat_vm)], ["check", str(flat_vm)],
                ["verify", str(flat_vm)], ["fs", "ls", str(flat_vm)], ["dump", "list", str(flat_vm)],
                ["flash", "info", str(flat_vm)]):
        r = vdisk(*cmd)
        assert refused(r), (cmd, r.stderr)
        assert "root:" not in r.stdout + r.stderr


def test_absolute_extent_elsewhere_allowed_with_flag(flat_vm, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(flat_vm.parent / "disk-flat.vmdk", elsewhere / "x-flat.vmdk")
    point_extent(flat_vm, str(elsewhere / "x-flat.vmdk"))
    assert refused(vdisk("info", str(flat_vm)))
    r = vdisk("info", str(flat_vm), "--json", "--allow-outside")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["virtual_size_bytes"] == 1 << 20


@pytest.mark.parametrize("name", ["C:\\vms\\x-flat.vmdk", "c:x-flat.vmdk", "..\\x-flat.vmdk",
                                  "sub/../../x-flat.vmdk"])
def test_windows_and_dotdot_paths_refused(flat_vm, name):
    point_extent(flat_vm, name)
    r = vdisk("info", str(flat_vm))
    assert refused(r), r.stderr
    # trusted, the path is only looked up (and is missing here): no longer "outside"
    r = vdisk("info", str(flat_vm), "--allow-outside")
    assert r.returncode == 3 and "outside" not in r.stderr and "Traceback" not in r.stderr


def test_symlinked_extent_resolving_outside(flat_vm, tmp_path):
    real = tmp_path / "real-flat.vmdk"
    shutil.move(flat_vm.parent / "disk-flat.vmdk", real)
    (flat_vm.parent / "disk-flat.vmdk").symlink_to(real)
    r = vdisk("info", str(flat_vm))
    assert refused(r), r.stderr
    r = vdisk("info", str(flat_vm), "--allow-outside")
    assert r.returncode == 0, r.stderr


def test_symlinked_extent_in_a_sibling_folder_sharing_the_prefix(flat_vm, tmp_path):
    """vm/disk-flat.vmdk -> vm2/real-flat.vmdk: "vm2" starts with "vm" but is not inside."""
    sibling = tmp_path / (flat_vm.parent.name + "2")
    sibling.mkdir()
    real = sibling / "real-flat.vmdk"
    shutil.move(flat_vm.parent / "disk-flat.vmdk", real)
    (flat_vm.parent / "disk-flat.vmdk").symlink_to(real)
    r = vdisk("info", str(flat_vm))
    assert refused(r), r.stderr


def test_symlinked_extent_inside_folder_is_fine(flat_vm):
    folder = flat_vm.parent
    (folder / "disk-flat.vmdk").rename(folder / "real-flat.vmdk")
    (folder / "disk-flat.vmdk").symlink_to("real-flat.vmdk")
    assert vdisk("info", str(flat_vm)).returncode == 0


@pytest.fixture
def child_outside(tmp_path) -> tuple[Path, Path]:
    """vm/child.vmdk whose parentFileNameHint is ../base/parent.vmdk (qemu-img -b)."""
    need_tool("qemu-img")
    base, vm = tmp_path / "base", tmp_path / "vm"
    base.mkdir()
    vm.mkdir()
    vc.qemu_write(vc.qemu_create(base / "parent.vmdk", 8 << 20), vc.BASE_WRITES)
    run("qemu-img", "create", "-q", "-f", "vmdk", "-b", "../base/parent.vmdk", "-F", "vmdk",
        str(vm / "child.vmdk"), str(8 << 20))
    return vm / "child.vmdk", base / "parent.vmdk"


def test_parent_hint_outside_refused_then_allowed(child_outside):
    child, parent = child_outside
    for cmd in (["info"], ["map"], ["verify"]):
        assert refused(vdisk(*cmd, str(child))), cmd
    r = vdisk("check", str(child), "--json")
    assert r.returncode in (1, 3) and "Traceback" not in r.stderr
    if r.returncode == 1:
        codes = {f["code"] for f in json.loads(r.stdout)["findings"]}
        assert "vmdk.parent-outside" in codes
    r = vdisk("info", str(child), "--json", "--allow-outside")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["chain"]) == 2
    r = vdisk("compare", str(child), str(parent), "--allow-outside")
    assert r.returncode == 0, r.stdout + r.stderr


def test_parent_hint_absolute_refused(child_outside):
    child, parent = child_outside
    vc.replace_embedded(child, b'parentFileNameHint="../base/parent.vmdk"',
                        f'parentFileNameHint="{parent}"'.encode())
    assert refused(vdisk("info", str(child)))
    assert vdisk("info", str(child), "--allow-outside").returncode == 0


# -- FAT names on extraction ------------------------------------------------------------------
HOSTILE_SHORT = {   # 11-byte 8.3 fields written over mcopy's placeholders
    "F1      TXT": b"..         ",
    "F2      TXT": b"A/B     TXT",
    "F3      TXT": b"A\\B     TXT",
    "F4      TXT": b"C:X     TXT",
    "F5      TXT": b"A\x01B\x1fC   TXT",
}
HOSTILE_LONG = {    # 13-character long names (one LFN slot) written over placeholders
    "lfnplace0.txt": "../../evil.tx",
    "lfnplace1.txt": "..\\..\\evil.tx",
    "lfnplace2.txt": "C:evil.txt",
    "lfnplace3.txt": "/etc/evil.txt",
    "lfnplace4.txt": "a\x01b\x7fc.txt",
    "lfnplace5.txt": "..",
}


def _lfn_chars(name: str) -> list[int]:
    units = [ord(c) for c in name] + [0]
    return (units + [0xFFFF] * 13)[:13]


def make_hostile_fat(path: Path) -> None:
    """A FAT16 volume (mkfs.fat + mcopy) whose directory entries are then edited to hold
    hostile short and long names."""
    need_tool("mkfs.fat")
    need_tool("mcopy")
    with open(path, "wb") as f:
        f.truncate(4 << 20)
    run("mkfs.fat", "-F", "16", "-s", "1", "-n", "HOSTILE", str(path))
    src = path.parent / "src"
    src.mkdir()
    for i, n in enumerate(list(HOSTILE_SHORT) + list(HOSTILE_LONG)):
        fname = n if n in HOSTILE_LONG else n[:8].strip() + "." + n[8:].strip()
        (src / fname).write_bytes(f"content {i}\n".encode())
        run("mcopy", "-i", str(path), str(src / fname), "::" + fname)
    (src / "sub").mkdir()
    run("mmd", "-i", str(path), "::sub")
    run("mcopy", "-i", str(path), str(src / "F1.TXT"), "::sub/F1.TXT")
    data = bytearray(path.read_bytes())
    bps, spc, reserved, nfats, root_entries, _t, _m, fat_sectors = \
        __import__("struct").unpack_from("<HBHBHHBH", data, 11)
    root = (reserved + nfats * fat_sectors) * bps
    edited = 0
    for i in range(root_entries):
        off = root + 32 * i
        e = bytes(data[off:off + 32])
        if e[0] == 0:
            break
        short = e[:11].decode("latin-1")
        if short in HOSTILE_SHORT:
            data[off:off + 11] = HOSTILE_SHORT[short]
            edited += 1
        if e[11] == 0x0F:
            chars = [int.from_bytes(e[o:o + 2], "little") for o in
                     list(range(1, 11, 2)) + list(range(14, 26, 2)) + list(range(28, 32, 2))]
            name = "".join(chr(c) for c in chars if c not in (0, 0xFFFF))
            if name in HOSTILE_LONG:
                new = _lfn_chars(HOSTILE_LONG[name])
                for k, o in enumerate(list(range(1, 11, 2)) + list(range(14, 26, 2))
                                      + list(range(28, 32, 2))):
                    data[off + o:off + o + 2] = new[k].to_bytes(2, "little")
                edited += 1
    assert edited == len(HOSTILE_SHORT) + len(HOSTILE_LONG), edited
    path.write_bytes(bytes(data))


def _host_names_ok(dest: Path) -> list[str]:
    bad = []
    for p in dest.rglob("*"):
        name = p.name
        if re.search(r"[\x00-\x1f\x7f\\:]", name) or name in (".", ".."):
            bad.append(name)
    return bad


def test_hostile_fat_names_extract_inside_dest(tmp_path):
    img = tmp_path / "img" / "fat.img"
    img.parent.mkdir()
    make_hostile_fat(img)
    work = tmp_path / "work"
    dest = work / "dest"
    work.mkdir()
    before = set(os.listdir(tmp_path)) | {"work"}
    r = vdisk("fs", "get", str(img), "/", str(dest), cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(os.listdir(work)) == ["dest"]
    assert set(os.listdir(tmp_path)) == before
    assert not list(Path("/etc").glob("evil*"))
    files = [p for p in dest.rglob("*") if p.is_file()]
    # every hostile entry but the short '..' one (a dot entry, which a listing skips) + sub/F1
    assert len(files) == len(HOSTILE_SHORT) - 1 + len(HOSTILE_LONG) + 1
    for p in files:                   # every file inside DEST, no symlink games
        assert os.path.realpath(p).startswith(str(dest.resolve()) + os.sep)
    assert _host_names_ok(dest) == []
    contents = sorted(p.read_bytes() for p in files)
    assert len(set(contents)) == len(files)           # nothing overwritten by a name clash


@pytest.mark.parametrize("name", ["A/B.TXT", "C:X.TXT", "../../evil.tx", "C:evil.txt"])
def test_hostile_fat_name_single_file_into_dest_folder(tmp_path, name):
    img = tmp_path / "fat.img"
    make_hostile_fat(img)
    listing = vdisk("fs", "ls", str(img), "/", "--json")
    assert listing.returncode == 0, listing.stderr
    names = [e["name"] for e in json.loads(listing.stdout)["entries"]]
    if name not in names:
        pytest.fail(f"{name!r} not listed as such: {names}")
    dest = tmp_path / "dest"
    dest.mkdir()
    r = vdisk("fs", "get", str(img), "/" + name if not name.startswith("/") else name, str(dest))
    # the volume path itself may not be addressable ('/' inside a name); never outside DEST
    assert r.returncode in (0, 3) and "Traceback" not in r.stderr, r.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.name not in ("fat.img",) and p.parent.name != "src":
            assert p.parent == dest, p
    assert _host_names_ok(dest) == []


# -- symbolic links at target paths --------------------------------------------------------------
@pytest.fixture
def victim(tmp_path) -> Path:
    p = tmp_path / "victim.txt"
    p.write_bytes(b"precious\n")
    return p


def _fat_image(tmp_path: Path) -> Path:
    need_tool("mkfs.fat")
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(2 << 20)
    run("mkfs.fat", "-F", "12", str(img))
    src = tmp_path / "README.TXT"
    src.write_bytes(b"from the volume\n" * 100)
    run("mcopy", "-i", str(img), str(src), "::README.TXT")
    src.unlink()
    return img


TARGET_WRITERS = {
    "create": lambda t, link: ["create", str(link), "--size", "1M"],
    "create-flat": lambda t, link: ["create", str(link), "--size", "1M", "-F", "monolithicFlat"],
    "convert": lambda t, link: ["convert", str(t / "v.img"), str(link)],
    "convert-raw": lambda t, link: ["convert", str(t / "v.img"), str(link), "--raw"],
    "fs-get": lambda t, link: ["fs", "get", str(t / "v.img"), "/README.TXT", str(link)],
}


@pytest.mark.parametrize("dangling", [False, True], ids=["to-file", "dangling"])
@pytest.mark.parametrize("writer", list(TARGET_WRITERS))
def test_symlink_at_target_not_followed(tmp_path, victim, writer, dangling):
    _fat_image(tmp_path)
    link = tmp_path / "out.vmdk"
    pointee = tmp_path / "never-created.txt" if dangling else victim
    link.symlink_to(pointee)
    r = vdisk(*TARGET_WRITERS[writer](tmp_path, link))
    assert "Traceback" not in r.stderr
    assert victim.read_bytes() == b"precious\n"
    if dangling:
        assert not pointee.exists(), f"{writer} wrote through a dangling link: {r.stderr}"
    # either refused (the link is left as it was) or the link itself was replaced
    if r.returncode == 0:
        assert not link.is_symlink() or os.readlink(link) == str(pointee)
    else:
        assert r.returncode == 3, r.stderr


# -- temporary files: beside the target, O_EXCL -------------------------------------------------------
AUDIT = r"""
import os, sys, json
log = open(os.environ["VDISK_AUDIT_LOG"], "a")
def hook(event, args):
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1], args[2]
        log.write(json.dumps([os.path.abspath(os.fsdecode(args[0])), mode, flags]) + "\n")
        log.flush()
    elif event == "os.mkdir":
        log.write(json.dumps([os.path.abspath(os.fsdecode(args[0])), "mkdir", 0]) + "\n")
        log.flush()
sys.addaudithook(hook)
sys.argv[0] = "vdisk"
from vdisk_tool.cli.app import main
main()
"""

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def audited(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[tuple[str, str, int]]]:
    log = tmp_path / "audit.jsonl"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-c", AUDIT, *args], capture_output=True, text=True,
                       env=dict(os.environ, VDISK_AUDIT_LOG=str(log), TMPDIR=str(tmpdir),
                                MTOOLS_SKIP_CHECK="1"), timeout=120, cwd=tmp_path)
    opens = [tuple(json.loads(ln)) for ln in log.read_text().splitlines()] if log.exists() else []
    assert not list(tmpdir.iterdir()), "a file was left in TMPDIR"
    return r, opens


def _writes(opens, exclude: Path) -> list[tuple[str, str, int]]:
    out = []
    for path, mode, flags in opens:
        if path == str(exclude):
            continue
        if mode == "mkdir":
            continue
        if (mode and any(c in mode for c in "wax+")) or (flags & WRITE_FLAGS):
            out.append((path, mode, flags))
    return out


@pytest.mark.parametrize("args", [
    ["create", "{d}/new.vmdk", "--size", "4M"],
    ["create", "{d}/new.vmdk", "--size", "4M", "-F", "twoGbMaxExtentSparse"],
    ["create", "{d}/new.vmdk", "--size", "4M", "-F", "streamOptimized"],
    ["convert", "{src}", "{d}/conv.vmdk"],
    ["fs", "put", "{src}", "{payload}", "/PAYLOAD.BIN"],
    ["fs", "mkdir", "{src}", "/NEWDIR"],
], ids=["create", "create-split", "create-stream", "convert", "fs-put", "fs-mkdir"])
def test_temporaries_beside_the_target_with_o_excl(tmp_path, args):
    img = _fat_image(tmp_path)
    d = tmp_path / "out"
    d.mkdir()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3000))
    argv = [a.format(d=d, src=img, payload=payload) for a in args]
    r, opens = audited(tmp_path, *argv)
    assert r.returncode == 0, r.stderr
    target_dir = d if args[0] in ("create", "convert") else img.parent
    writes = _writes(opens, tmp_path / "audit.jsonl")
    assert writes, "no write seen by the audit hook"
    for path, _mode, _flags in writes:
        folder = os.path.dirname(path)
        # beside the target, or in a work folder beside it (made by mkdir, which is exclusive)
        beside = folder == str(target_dir) or (
            os.path.dirname(folder) == str(target_dir)
            and ".vdisk-tmp-" in os.path.basename(folder))
        assert beside, f"wrote {path} outside {target_dir}"
    if args[0] == "fs":
        # an in-place edit: the image itself, and its undo journal created O_CREAT|O_EXCL
        journals = [(p, f) for p, _m, f in writes if p.endswith(".vdisk-journal-edit")]
        assert journals and all(f & os.O_CREAT and f & os.O_EXCL for _p, f in journals[:1])
        assert {p for p, _m, _f in writes} == {str(img), journals[0][0]}, writes
        assert not [n for n in os.listdir(target_dir) if ".vdisk-" in n]
        return
    temps = [(p, f) for p, _m, f in writes if ".vdisk-tmp-" in os.path.basename(p)]
    work_dirs = {p for p, m, _f in opens if m == "mkdir" and ".vdisk-tmp-" in os.path.basename(p)}
    in_work = [p for p, _m, _f in writes if os.path.dirname(p) in work_dirs]
    assert temps or in_work, f"no temporary file beside the target: {writes}"
    first: dict[str, int] = {}
    for p, f in temps:
        first.setdefault(p, f)
    # each temporary beside the target is created (its first open) with O_CREAT|O_EXCL; the
    # files of a work folder live in a folder this run made with mkdir (which is exclusive)
    for p, f in first.items():
        assert f & os.O_CREAT and f & os.O_EXCL, (p, oct(f))
    for p, _m, _f in writes:
        if os.path.dirname(p) != str(target_dir):
            assert os.path.dirname(p) in work_dirs, p
    assert not [n for n in os.listdir(target_dir) if ".vdisk-tmp-" in n]


# -- the findings catalogue stays complete ----------------------------------------------------------
FAMILIES = "vmdk|qcow2|vhdx|fat|fw|boot|mbr|dump|flash|vmx|bundle|ova"
CODE_RE = re.compile(rf"""(?<!startswith\()["']((?:{FAMILIES})"""
                     r"""\.[a-z0-9]+(?:-[a-z0-9]+)*)["']""")
NOT_CODES = {"ipva.bin"}


def source_codes() -> set[str]:
    codes = set()
    for py in (ROOT / "src" / "vdisk_tool").rglob("*.py"):
        codes |= set(CODE_RE.findall(py.read_text()))
    return codes - NOT_CODES


def test_findings_catalogue_is_complete():
    text = (ROOT / "specs" / "findings.md").read_text()
    listed = set(re.findall(rf"`((?:{FAMILIES})\.[a-z0-9-]+)`", text))
    codes = source_codes()
    assert len(codes) > 50
    assert codes - listed == set(), "codes missing from specs/findings.md"
    assert listed - codes == set(), "specs/findings.md lists codes the source no longer has"
