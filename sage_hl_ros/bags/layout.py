"""Where a bag's data lies: a rosbag2 directory, ``metadata.yaml`` plus storage files
``<name>_0.mcap``, ``<name>_1.mcap``, ... (or ``.db3`` for sqlite3), where ``<name>`` is the
directory name, exactly the layout ``ros2 bag record --max-bag-size/--max-bag-duration`` produces.
Splitting therefore stays inside one bag: ``ros2 bag play <dir>``, rosbags' ``Reader`` and
``sage_hl_ros.bags.bag_dataset`` read all files of the bag in order, and connection ids are the
same in every file. And which bags a list of paths names (:func:`expand_bag_paths`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import BagError

__all__ = ["STORAGE_SUFFIX", "expand_bag_paths", "storage_files"]

STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}


def storage_files(bag_dir: str | Path) -> list[Path]:
    """Storage files of a bag directory in split order (``<name>_<n>``), .mcap or .db3."""
    bag_dir = Path(bag_dir)
    files = [p for p in bag_dir.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")]

    def key(p: Path):
        m = re.search(r"_(\d+)$", p.stem)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(files, key=key)


def expand_bag_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Bags from paths: a bag directory (has metadata.yaml), a single .mcap/.db3 file, or a folder
    whose sub-directories are bags (sorted by name). Order is kept; duplicates are dropped."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "metadata.yaml").is_file() or (p.is_file() and p.suffix in (".mcap", ".db3")):
            found = [p]
        elif p.is_dir():
            files = storage_files(p)
            if files:  # storage files without metadata.yaml: a recording that did not close
                raise BagError(files[0], f"no metadata.yaml in {p}: the recording did not close; "
                                         f"run `sage-hl-bag repair {p}`")
            found = sorted(d for d in p.iterdir() if (d / "metadata.yaml").is_file())
            if not found:
                raise BagError(p, "no rosbag2 bag here (a bag is a directory with metadata.yaml; "
                                  "a recording killed before closing needs `sage-hl-bag repair DIR` first)")
        elif not p.exists():
            raise BagError(p, "no such file or directory")
        else:
            raise BagError(p, "not a rosbag2 bag (expected a directory with metadata.yaml, or .mcap/.db3)")
        for f in found:
            if f not in out:
                out.append(f)
    if not out:
        raise BagError("<none>", "no bags given")
    return out
