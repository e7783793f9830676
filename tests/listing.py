"""A folder's listing, to show that a refused command left the file system as it found it."""

from __future__ import annotations

import os
from pathlib import Path


def listing(*roots: Path) -> dict[str, tuple | None]:
    """Every entry under `roots` (None for a root that does not exist): folders, and files with
    their size and mtime_ns, so a file written, rewritten, touched or removed, or a folder made
    or removed, shows (a folder's own mtime, which a file made and taken back moves, does not)."""
    found: dict[str, tuple | None] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            found[str(root)] = None
            continue
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files, ""]:
                path = Path(folder, name)
                stat = path.stat()
                found[str(path)] = ("file", stat.st_size, stat.st_mtime_ns) if path.is_file() else ("folder",)
    return found
