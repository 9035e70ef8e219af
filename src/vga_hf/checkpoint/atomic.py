"""Atomic folder writes: build the new folder next to the target, then swap it in with renames."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

#: Files that mark a folder as a checkpoint vga_hf may replace as a whole.
CHECKPOINT_MARKERS = ("config.json", "vga_gates.json")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; when the block succeeds, it replaces `target`
    (previous content removed), when it fails, it is deleted and `target` is left untouched.

    Refuses to replace an existing non-empty folder that is not a checkpoint (no config.json or
    vga_gates.json), so that a wrong path never deletes unrelated files."""
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is a file; give a folder path to save into.")
    if target.is_dir() and any(target.iterdir()) and not any((target / m).exists() for m in CHECKPOINT_MARKERS):
        raise ValueError(f"{target} is a non-empty folder that holds no checkpoint (no config.json); saving "
                         "replaces the whole folder, so choose a new or empty folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp made it private
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):  # one atomic step (Linux renameat2): target is new, `new` holds the old
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
