"""Atomic folders: a folder is written beside its target and swapped in only once complete, so a killed process
leaves the old version or nothing, never a half-written one. The bottom of the package: it imports nothing of it."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Iterator


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(target: str | os.PathLike) -> None:
    """Tidy up after a process killed inside :func:`atomic_dir` for ``target``.

    Leftover ``.<name>.tmp-<pid>-*`` folders of dead processes (half-written, never used) are deleted; if ``target``
    itself is missing because the kill fell between moving the old version aside and moving the new one in, the old
    version (``.<name>.old-<pid>``, complete) is put back. Folders of processes still running are left alone.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    stale = []
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _owner_alive(int(match.group(2))):
            stale.append((match.group(1), entry))
    olds = sorted((e for kind, e in stale if kind == "old"), key=lambda e: e.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds.pop(), target)
    for _, entry in stale:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)


def _make_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/prefix<random>`` made as ``mkdir`` makes one: its mode follows the user's umask (unlike
    ``tempfile.mkdtemp``, whose folders are always 0700)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new temporary folder {prefix}* in {parent}")


def _follow_umask(file: Path, dir_mode: int) -> None:
    """Give ``file`` the mode a plain ``open`` would (0666, or 0777 for an executable, less the umask): writers that
    go through temporary files (e.g. safetensors files saved by Hugging Face) leave them 0600."""
    mode = stat.S_IMODE(file.stat().st_mode)
    wanted = dir_mode if mode & 0o111 else dir_mode & 0o666
    if mode != wanted:
        os.chmod(file, wanted)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` that replaces ``target`` only once the block succeeds.

    The folder and what it holds get the modes ``mkdir`` and ``open`` give under the user's umask (e.g. 0755 and
    0644 under umask 022), whatever the writers inside used.

    A crash or an exception inside the block leaves ``target`` as it was (old contents or absent); what a killed
    process left behind is tidied up by the next ``atomic_dir`` (or :func:`recover_dir`) for the same target.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = _make_dir(target.parent, f".{target.name}.tmp-{os.getpid()}-")
    try:
        yield tmp
        dir_mode = stat.S_IMODE(tmp.stat().st_mode)  # what mkdir gives under the user's umask (and default ACLs)
        for file in tmp.rglob("*"):
            if file.is_symlink():
                continue
            if file.is_dir():
                os.chmod(file, dir_mode)
            elif file.is_file():
                _follow_umask(file, dir_mode)
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
