"""Secret and ConfigMap volumes laid out exactly as the kubelet writes them.

The kubelet's atomic writer puts the files in a timestamped directory, points the
`..data` symlink at it, and links each key name to `..data/<key>`. An update writes a
new directory, renames a fresh symlink over `..data`, then deletes the old directory —
so a reader that resolves a key during the swap can, for an instant, find nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path


class ProjectedVolume:
    """A directory with the kubelet's `..data` layout whose contents can be swapped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._generation = 0

    def path(self, key: str) -> Path:
        return self.root / key

    def write(self, files: Mapping[str, bytes | str]) -> None:
        """Publishes a new version of every key, the way the kubelet does."""
        self._generation += 1
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        new_dir = self.root / f"..{stamp}.{os.getpid()}.{self._generation}"
        new_dir.mkdir(mode=0o755)
        for key, value in files.items():
            data = value.encode() if isinstance(value, str) else value
            (new_dir / key).write_bytes(data)
        data_link = self.root / "..data"
        old_target = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.root / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(new_dir.name)
        tmp_link.rename(data_link)
        for key in files:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for stale in self.root.iterdir():
            if stale.is_symlink() and not stale.name.startswith("..") and stale.name not in files:
                stale.unlink()
        if old_target is not None:
            shutil.rmtree(self.root / old_target, ignore_errors=True)
