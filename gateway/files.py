"""Folders the gateway creates for its secrets and its store: owner-only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700


def make_private_dirs(folder: Path) -> None:
    """Create `folder` and every missing parent owner-only (0700); existing ones are left as
    they are. Path.mkdir(parents=True, mode=...) gives the mode to the last folder only, and
    through the umask: under umask 000 ./var came out world-writable."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: theirs to set
        os.chmod(path, PRIVATE_DIR_MODE)
