"""Where a bag's data lies: a rosbag2 directory, ``metadata.yaml`` plus storage files
``<name>_0.mcap``, ``<name>_1.mcap``, ... (or ``.db3`` for sqlite3), where ``<name>`` is the
directory name, exactly the layout ``ros2 bag record --max-bag-size/--max-bag-duration`` produces.
Splitting therefore stays inside one bag: ``ros2 bag play <dir>``, rosbags' ``Reader`` and
``sage_hl_ros.bags.dataset`` read all files of the bag in order, and connection ids are the
same in every file.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["STORAGE_SUFFIX", "storage_files"]

STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}


def storage_files(bag_dir: str | Path) -> list[Path]:
    """Storage files of a bag directory in split order (``<name>_<n>``), .mcap or .db3."""
    bag_dir = Path(bag_dir)
    files = [p for p in bag_dir.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")]

    def key(p: Path):
        m = re.search(r"_(\d+)$", p.stem)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(files, key=key)
