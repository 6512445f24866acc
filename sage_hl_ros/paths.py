"""Where the package's config/ and launch/ files are: the ament share directory when installed
with colcon, else the source checkout (pip editable install, tests)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = "sage_hl_ros"


def share_dir() -> Path:
    source = Path(__file__).resolve().parent.parent
    if (source / "config").is_dir() and (source / "package.xml").is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, KeyError, ValueError):
        return source


def config_file(name: str) -> Path:
    return share_dir() / "config" / name
