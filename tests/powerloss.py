"""Power-loss harness: what a folder may hold after the power fails at any point of a command.

SIGKILL (tests/crashharness.py) leaves the page cache intact, so it cannot see a missing
fsync. This harness records a real run instead and builds, from the log, the states a
disk may be left in after a power cut, the way the ALICE and CrashMonkey studies do; then
it runs recovery on each and judges the result.

Recording: the command runs as `python -m vdisk_tool ARGS` inside a copy of the pristine
folder, with tests/powerloss_site (a sitecustomize) first on its PYTHONPATH; it logs every
open (created? truncated? inode), write, truncate, fsync/fdatasync (file or folder),
rename, unlink, mkdir and rmdir inside the folder, in order, with the bytes written.

The crash model (a journalling file system such as ext4 in its default mode, simplified
and a little harsher than it is):

- Data. The writes and truncates of one file issued before its last completed fsync (or
  fdatasync) are on disk. Those issued after it and before the crash may each be lost or
  kept, in any subset, independently of the other files; the last kept one may be torn:
  only its part up to a 512-byte boundary of the file reached the disk.
- Names. Creating a file, rename, unlink, mkdir and rmdir ("directory operations") reach
  the disk in the order they were issued (the file-system journal commits them in order),
  so what survives is a prefix of them. An fsync of a folder makes every directory
  operation issued before it, that touched the folder, durable, and with it (in-order) all
  earlier ones; the operations after the last such point may survive in any prefix.
  An fsync of a file does not make its name durable (POSIX does not promise it).
- Data and names are independent: a rename may reach the disk while the renamed file's
  unsynced data does not (the bug "no fsync before rename").

model="ntfs" stands for Windows, where vdisk cannot fsync a folder (the platform module's
fallback, VDISK_PLATFORM_FALLBACK=1): NTFS logs every name change in one log, which an
fsync of any file (FlushFileBuffers) commits up to that point, and a rename made with
MOVEFILE_WRITE_THROUGH is on disk when it returns. So there, an fsync of a file or a
rename makes every directory operation issued before it (the rename included) durable.

A crash point c means the first c recorded operations were issued. Crash points are taken
before and after every barrier and directory operation, plus the end of the run; each is
combined with several random choices of kept writes, torn write and surviving prefix
(deterministic seed). Identical states are materialised and judged once.

Judging: a state whose files are byte-for-byte the folder before or after the run and that
holds nothing else needs no recovery. Any other is materialised into a scratch folder,
recovered by running a vdisk command on it (in process; `check IMAGE --repair` unless the
scenario says otherwise), and its image files compared with the references: byte-equal
to before or after, or else `qemu-img compare` equal to one of them with `qemu-img check`
clean. The references themselves are judged once by the scenario's `judge` (fsck.fat -n,
mtools, `vdisk check`).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SITE = Path(__file__).with_name("powerloss_site")
SECTOR = 512
LEFTOVER_MARKS = (".vdisk-tmp-", ".vdisk-journal")
DIR_OPS = ("create", "rename", "unlink", "mkdir", "rmdir")


# -- recording --------------------------------------------------------------------------------
def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an instrumented child: the sitecustomize first on PYTHONPATH."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    env.update(extra or {})
    env.pop("VDISK_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), env.get("PYTHONPATH")]))
    return env


def run_recorded(args: list[str], folder: Path, log: Path,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m vdisk_tool ARGS` in `folder`, logging its mutations there to `log`."""
    extra = dict(env or {}, VDISK_POWERLOSS_ROOT=str(folder), VDISK_POWERLOSS_LOG=str(log))
    return subprocess.run([sys.executable, "-m", "vdisk_tool", *args], cwd=folder,
                          env=child_env(extra), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def read_log(log: Path) -> list[dict]:
    """The records of a log, in order; a write's bytes are under "data"."""
    out = []
    with open(log, "rb") as f:
        while line := f.readline():
            rec = json.loads(line)
            rec["data"] = f.read(rec.pop("n"))
            out.append(rec)
    return out


@dataclass
class Op:
    """One resolved operation: data ops name an inode, directory ops name paths."""

    index: int
    kind: str                      # write, truncate, fsync, dirsync, or one of DIR_OPS
    inode: int = -1
    offset: int = 0
    data: bytes = b""
    length: int = 0
    path: str = ""
    dst: str = ""

    def folders(self) -> set[str]:
        return {os.path.dirname(p) or "." for p in (self.path, self.dst) if p}


@dataclass
class Recording:
    """A recorded run: the folder before (files and folders), the resolved ops, the result."""

    before: Path
    after: Path
    files: dict[str, int]          # initial path -> inode id
    dirs: set[str]
    contents: dict[int, bytes]     # inode id -> initial bytes
    ops: list[Op]
    result: subprocess.CompletedProcess

    @property
    def names(self) -> list[str]:
        """The image files to judge: every file before or after, leftovers excluded."""
        got = set(walk(self.before)[0]) | set(walk(self.after)[0])
        return sorted(n for n in got if not is_leftover(n))


def is_leftover(name: str) -> bool:
    return any(m in name for m in LEFTOVER_MARKS)


def walk(folder: Path) -> tuple[dict[str, Path], set[str]]:
    files, dirs = {}, set()
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir() and not p.is_symlink():
            dirs.add(rel)
        elif p.is_file():
            files[rel] = p
    return files, dirs


def resolve(records: list[dict], files: dict[str, int]) -> list[Op]:
    """Turn the child's records (inode numbers, paths at the time) into Ops on our inode ids."""
    ns = dict(files)                      # the namespace as the running process saw it
    ino_map: dict[int, int] = {}
    next_id = max(files.values(), default=-1) + 1
    ops: list[Op] = []

    def add(kind: str, **kw) -> None:
        ops.append(Op(len(ops), kind, **kw))

    for r in records:
        op = r["op"]
        if op == "open":
            if r["dir"]:
                ino_map[r["ino"]] = -1
                continue
            path = r["path"]
            if r["created"] or path not in ns:
                ns[path] = next_id
                next_id += 1
                add("create", path=path, inode=ns[path])
            ino_map[r["ino"]] = ns[path]
            if r["trunc"]:
                add("truncate", inode=ns[path], length=0)
        elif op == "write":
            add("write", inode=ino_map[r["ino"]], offset=r["off"], data=r["data"])
        elif op == "truncate":
            inode = ino_map[r["ino"]] if "ino" in r else ns[r["path"]]
            add("truncate", inode=inode, length=r["length"])
        elif op == "fsync":
            if r["dir"]:
                add("dirsync", path=r["path"])
            else:
                add("fsync", inode=ino_map[r["ino"]])
        elif op == "rename":
            src, dst = r["src"], r["dst"]
            if src is None or dst is None:
                raise AssertionError(f"a rename crosses the recorded folder: {r}")
            for name in [n for n in ns if n == src or n.startswith(src + "/")]:
                ns[dst + name[len(src):]] = ns.pop(name)
            add("rename", path=src, dst=dst)
        elif op == "unlink":
            ns.pop(r["path"], None)
            add("unlink", path=r["path"])
        elif op in ("mkdir", "rmdir"):
            add(op, path=r["path"])
    return ops


def record(make: Callable[[Path], None], args: list[str], work: Path,
           env: dict[str, str] | None = None) -> Recording:
    """Build the pristine folder with `make`, run the command once recorded, resolve the log."""
    before, after = work / "before", work / "after"
    before.mkdir(parents=True)
    make(before)
    shutil.copytree(before, after, symlinks=True)
    log = work / "ops.log"
    result = run_recorded(args, after, log, env)
    files, dirs = walk(before)
    ids = {name: i for i, name in enumerate(files)}
    contents = {ids[name]: p.read_bytes() for name, p in files.items()}
    ops = resolve(read_log(log), ids) if log.exists() else []
    return Recording(before, after, ids, dirs, contents, ops, result)


# -- crash states -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CrashState:
    """What reached the disk: a crash point, the kept unsynced data ops, a torn write, and how
    many directory operations survived."""

    crash: int
    kept: frozenset[int]
    torn: tuple[int, int] | None       # (op index, bytes of it that reached the disk)
    dir_prefix: int

    def describe(self, rec: Recording) -> str:
        pending = len(pending_data(rec.ops, self.crash))
        dir_ops = [o for o in rec.ops[:self.crash] if o.kind in DIR_OPS]
        last = rec.ops[self.crash - 1] if self.crash else None
        return (f"crash after op {self.crash}/{len(rec.ops)} ({last.kind if last else 'start'}), "
                f"{len(self.kept)}/{pending} unsynced data ops kept, torn={self.torn}, "
                f"{self.dir_prefix}/{len(dir_ops)} directory ops on disk")


def pending_data(ops: list[Op], crash: int) -> list[Op]:
    """Data ops issued before `crash` that no completed fsync of their file covers."""
    last_sync: dict[int, int] = {}
    for o in ops[:crash]:
        if o.kind == "fsync":
            last_sync[o.inode] = o.index
    return [o for o in ops[:crash] if o.kind in ("write", "truncate")
            and o.index > last_sync.get(o.inode, -1)]


def durable_dir_prefix(ops: list[Op], crash: int, model: str = "ext4") -> tuple[int, int]:
    """(directory ops that must have survived, directory ops issued) at `crash`."""
    dir_ops = [o for o in ops[:crash] if o.kind in DIR_OPS]
    must = 0
    if model == "ntfs":
        barriers = [o.index for o in ops[:crash] if o.kind in ("fsync", "dirsync", "rename")]
        for n, o in enumerate(dir_ops):
            if any(b >= o.index for b in barriers):
                must = n + 1
        return must, len(dir_ops)
    synced = [o for o in ops[:crash] if o.kind == "dirsync"]
    for n, o in enumerate(dir_ops):
        if any(s.index > o.index and s.path in o.folders() for s in synced):
            must = n + 1
    return must, len(dir_ops)


def crash_points(ops: list[Op]) -> list[int]:
    """Before and after every barrier and directory operation, and the end of the run."""
    points = {len(ops)}
    for o in ops:
        if o.kind in ("fsync", "dirsync", *DIR_OPS):
            points.update((o.index, o.index + 1))
    return sorted(points)


def crash_states(rec: Recording, count: int = 200, seed: int = 0,
                 model: str = "ext4") -> list[CrashState]:
    """`count` crash states (distinct ones; fewer only when fewer exist), deterministic."""
    rng = random.Random(seed)
    points = crash_points(rec.ops)
    out: dict[CrashState, None] = {}
    attempts = 0
    while len(out) < count and attempts < count * 20:
        if attempts == 0:
            crash = len(rec.ops)
        elif attempts < count:                               # spread over the whole run
            crash = points[attempts * len(points) // count]
        else:
            crash = rng.choice(points)
        style = rng.randrange(4)
        attempts += 1
        pending = pending_data(rec.ops, crash)
        if style == 0:
            kept = pending                                   # everything reached the disk
        elif style == 1:
            kept = []                                        # nothing unsynced did
        elif style == 2:
            kept = [o for o in pending if rng.random() < 0.5]
        else:
            drop = rng.choice(pending) if pending else None
            kept = [o for o in pending if o is not drop]
        torn = None
        writes = [o for o in kept if o.kind == "write" and len(o.data) > SECTOR]
        if writes and rng.random() < 0.5:
            w = writes[-1]
            cuts = range((w.offset // SECTOR + 1) * SECTOR, w.offset + len(w.data), SECTOR)
            if len(cuts):
                torn = (w.index, rng.choice(cuts) - w.offset)
        must, issued = durable_dir_prefix(rec.ops, crash, model)
        prefix = rng.choice([must, issued, rng.randint(must, issued)])
        out[CrashState(crash, frozenset(o.index for o in kept), torn, prefix)] = None
    return list(out)


def materialise(rec: Recording, state: CrashState) -> tuple[dict[str, bytearray], set[str]]:
    """The files (path -> bytes) and folders on disk in `state`."""
    names = dict(rec.files)
    dirs = set(rec.dirs)
    dir_ops = [o for o in rec.ops[:state.crash] if o.kind in DIR_OPS][:state.dir_prefix]
    for o in dir_ops:
        if o.kind == "create":
            names[o.path] = o.inode
        elif o.kind == "unlink":
            names.pop(o.path, None)
        elif o.kind == "mkdir":
            dirs.add(o.path)
        elif o.kind == "rmdir":
            dirs.discard(o.path)
        elif o.kind == "rename":
            for n in [n for n in names if n == o.path or n.startswith(o.path + "/")]:
                names[o.dst + n[len(o.path):]] = names.pop(n)
            for d in [d for d in dirs if d == o.path or d.startswith(o.path + "/")]:
                dirs.discard(d)
                dirs.add(o.dst + d[len(o.path):])
    pending = {o.index for o in pending_data(rec.ops, state.crash)}
    data: dict[int, bytearray] = {}
    wanted = set(names.values())
    for inode in wanted:
        data[inode] = bytearray(rec.contents.get(inode, b""))
    for o in rec.ops[:state.crash]:
        if o.inode not in wanted or o.kind not in ("write", "truncate"):
            continue
        if o.index in pending and o.index not in state.kept:
            continue
        buf = data[o.inode]
        if o.kind == "truncate":
            del buf[o.length:]
            buf.extend(bytes(max(0, o.length - len(buf))))
            continue
        chunk = o.data
        if state.torn and state.torn[0] == o.index:
            chunk = chunk[:state.torn[1]]
        end = o.offset + len(chunk)
        if end > len(buf):
            buf.extend(bytes(end - len(buf)))
        buf[o.offset:end] = chunk
    files = {n: data[i] for n, i in names.items()
             if (os.path.dirname(n) or ".") == "." or os.path.dirname(n) in dirs}
    return files, dirs


def write_state(files: dict[str, bytearray], dirs: set[str], folder: Path) -> None:
    """Write a state into an empty folder, keeping zero runs as holes (images stay cheap)."""
    folder.mkdir(parents=True)
    for d in sorted(dirs):
        (folder / d).mkdir(parents=True, exist_ok=True)
    step = 64 << 10
    for name, buf in files.items():
        with open(folder / name, "wb") as f:
            for pos in range(0, len(buf), step):
                part = buf[pos:pos + step]
                if part.count(0) != len(part):
                    f.seek(pos)
                    f.write(part)
            f.truncate(len(buf))


# -- judging ----------------------------------------------------------------------------------
def digest(files: dict[str, bytes | bytearray], names: list[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0")
        h.update(hashlib.sha256(files[n]).digest() if n in files else b"-")
    return h.hexdigest()


def folder_digest(folder: Path, names: list[str]) -> str:
    return digest({n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}, names)


@contextmanager
def chdir(folder: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


_COMMAND: list = []


@contextmanager
def _no_fsync() -> Iterator[None]:
    """Recovery runs to completion here (a crash during recovery is not what is judged), so
    its fsyncs need not wait for the disk."""
    real = os.fsync, os.fdatasync
    os.fsync = os.fdatasync = lambda fd: None  # type: ignore[assignment]
    try:
        yield
    finally:
        os.fsync, os.fdatasync = real


def vdisk_in_process(args: list[str], folder: Path) -> int:
    """Run a vdisk command in `folder` in this process and return its exit code (fast: no
    interpreter start-up, and the click command is built once)."""
    import io
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    if not _COMMAND:
        import typer.main

        from vdisk_tool.cli.app import app
        _COMMAND.append(typer.main.get_command(app))
    with chdir(folder), warnings.catch_warnings(), redirect_stdout(io.StringIO()), \
            redirect_stderr(io.StringIO()), _no_fsync():
        warnings.simplefilter("ignore")
        try:
            rv = _COMMAND[0].main(args, prog_name="vdisk", standalone_mode=False)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except Exception as exc:  # noqa: BLE001 - a click usage error carries its code
            return getattr(exc, "exit_code", -1)
        return rv if isinstance(rv, int) else 0


def qemu_equal(image: str, state: Path, ref: Path) -> bool:
    """Same guest content (qemu-img compare) and a clean qemu-img check."""
    a, b = str(state / image), str(ref / image)
    return (subprocess.run(["qemu-img", "compare", "-q", a, b], capture_output=True).returncode == 0
            and subprocess.run(["qemu-img", "check", "-q", a], capture_output=True).returncode == 0)


@dataclass
class PowerLossResult:
    states: int = 0
    distinct: int = 0
    recovered: int = 0
    old: int = 0
    new: int = 0
    by_qemu: int = 0
    ops: int = 0
    corrupt: list[str] = field(default_factory=list)
    recording: Recording | None = None
    exhausted: bool = False        # the run allows fewer distinct states than were asked for

    def summary(self) -> str:
        return (f"{self.states} states ({self.distinct} distinct, {self.recovered} recovered) "
                f"from {self.ops} ops: {self.old} old, {self.new} new, {len(self.corrupt)} mixed")


def power_loss_test(make: Callable[[Path], None], args: list[str], image: str, work: Path, *,
                    states: int = 200, seed: int = 0, env: dict[str, str] | None = None,
                    recover: list[str] | None = None,
                    judge: Callable[[Path], str | None] | None = None,
                    model: str = "ext4") -> PowerLossResult:
    """Record `args` run on the folder `make` builds, then judge `states` power-loss states.

    `image` names the main image file (for qemu-img); `recover` is the command run on a
    state that needs recovery (default `check IMAGE --repair`); `judge(folder)` returns a
    problem (or None) for a reference folder, e.g. fsck.fat or mtools on its content.
    `model` is the file system's crash model ("ext4", or "ntfs": see the module's doc)."""
    rec = record(make, args, work, env)
    assert rec.result.returncode == 0, f"the recorded run failed: {rec.result.stderr}"
    for ref in (rec.before, rec.after):
        problem = judge(ref) if judge else None
        assert problem is None, f"reference {ref.name}: {problem}"
    names = rec.names
    ref_old, ref_new = folder_digest(rec.before, names), folder_digest(rec.after, names)
    recover = recover or ["check", image, "--repair"]
    res = PowerLossResult(ops=len(rec.ops), recording=rec)
    verdicts: dict[str, str | None] = {}
    chosen = crash_states(rec, states, seed, model)
    res.exhausted = len(chosen) < states
    for n, state in enumerate(chosen):
        res.states += 1
        files, dirs = materialise(rec, state)
        key = digest(files, sorted(files))
        if key not in verdicts:
            verdicts[key] = _judge_state(rec, state, files, dirs, names, image, recover,
                                         (ref_old, ref_new), work / f"s{n}", res)
            res.distinct += 1
        verdict = verdicts[key]
        if verdict == "old":
            res.old += 1
        elif verdict == "new":
            res.new += 1
        else:
            res.corrupt.append(f"{state.describe(rec)}: {verdict}")
    return res


def _judge_state(rec: Recording, state: CrashState, files: dict[str, bytearray], dirs: set[str],
                 names: list[str], image: str, recover: list[str], refs: tuple[str, str],
                 folder: Path, res: PowerLossResult) -> str:
    extra = set(files) - set(names)
    now = digest(files, names)
    if not extra and now in refs:
        return "old" if now == refs[0] else "new"
    write_state(files, dirs, folder)
    try:
        res.recovered += 1
        code = vdisk_in_process(recover, folder)
        now = folder_digest(folder, names)
        if now in refs:
            return "old" if now == refs[0] else "new"
        for verdict, ref in (("old", rec.before), ("new", rec.after)):
            if (folder / image).exists() and qemu_equal(image, folder, ref):
                res.by_qemu += 1
                return verdict
        return f"neither old nor new after recovery (exit {code})"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the rename rule --------------------------------------------------------------------------
def rename_violations(rec: Recording) -> list[str]:
    """Every rename must find the renamed file's data fsynced and be followed by an fsync
    of the destination folder (unless the file is renamed on again: then that rename is
    the one judged, as for a file built in a temporary folder and moved out of it)."""
    bad = []
    ns = dict(rec.files)
    for o in rec.ops:
        if o.kind == "create":
            ns[o.path] = o.inode
        elif o.kind == "unlink":
            ns.pop(o.path, None)
        elif o.kind == "rename":
            inodes = [i for n, i in ns.items() if n == o.path or n.startswith(o.path + "/")]
            unsynced = [p for p in pending_data(rec.ops, o.index) if p.inode in inodes]
            if unsynced:
                bad.append(f"rename {o.path} -> {o.dst}: {len(unsynced)} write(s) not fsynced before it")
            folder = os.path.dirname(o.dst) or "."
            later = rec.ops[o.index + 1:]
            moved_on = any(s.kind == "rename" and (o.dst == s.path or o.dst.startswith(s.path + "/"))
                           for s in later)
            if not moved_on and not any(s.kind == "dirsync" and s.path == folder for s in later):
                bad.append(f"rename {o.path} -> {o.dst}: no fsync of {folder} after it")
            for n in [n for n in ns if n == o.path or n.startswith(o.path + "/")]:
                ns[o.dst + n[len(o.path):]] = ns.pop(n)
    return bad


def rewritten_after_fsync(rec: Recording, name: str) -> set[int]:
    """Sectors of the initial file `name` written, then written again after an fsync of any
    file (e.g. an undo journal fsynced between two batches of an edit)."""
    inode = rec.files[name]
    before_sync: set[int] = set()
    dirty: set[int] = set()
    again: set[int] = set()
    for o in rec.ops:
        if o.kind == "write" and o.inode == inode:
            sectors = set(range(o.offset // SECTOR, (o.offset + len(o.data) + SECTOR - 1) // SECTOR))
            again |= sectors & before_sync
            dirty |= sectors
        elif o.kind == "fsync":
            before_sync |= dirty
            dirty = set()
    return again
