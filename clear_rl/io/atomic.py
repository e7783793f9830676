"""Atomic file output: write to a temporary name beside the target, rename when complete.

A crash or a bad row halfway through never leaves a truncated file under the final name, and
never destroys the previous complete version. A process killed outright (SIGKILL, a lost node)
leaves its hidden temporary behind: `remove_stale_temporaries` clears those of a target.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_SUFFIX = ".tmp"


def _prefix(target: Path) -> str:
    return f".{target.name}."


def _backup(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto `path` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=_SUFFIX, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=_prefix(target), suffix=_SUFFIX, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create private (0600/0700) entries; give the output the usual umask modes.
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
    try:
        yield tmp
        if is_dir and target.exists():
            # os.replace cannot overwrite a non-empty folder: swap through a backup name.
            backup = _backup(target)
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Clear what an `atomic_path` of `path` killed midway left: its temporaries (removed, and
    returned), and a folder swap's backup (put back when the target itself is missing, so the
    previous complete version is not lost; removed otherwise). Call it only where no other
    process is writing `path`."""
    target = Path(path)
    pattern = glob.escape(str(target.parent / _prefix(target))) + "*" + _SUFFIX
    removed = [Path(name) for name in glob.glob(pattern)]
    for tmp in removed:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    backup = _backup(target)
    if backup.exists() and not target.exists():
        os.replace(backup, target)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)
    return removed


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a binary file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
