"""Is every storage file of a bag readable? (pure: no rclpy) — the check every bag command runs first.

rosbags' reader reports a damaged bag as a bare ``ReaderError`` ("Chunk checksum mismatch",
"Expected metadata file ... does not exist") without saying which file, and only when it happens
to touch the damaged part: ``info`` read only the summary and printed a normal report for a bag
with a corrupt chunk. :func:`check_bag` reads every byte once instead (memory-mapped): MCAP files
chunk by chunk with their CRCs, size checks and a valid summary/footer; sqlite3 files with
``PRAGMA quick_check`` opened read-only. Nothing is ever written: a bag that fails is left exactly
as it was, for ``sage-hl-bag repair`` (or a person) to decide.

Every problem is a :class:`BagError` whose message starts with the storage file, e.g.
``bags/run1/run1_0.mcap: chunk at byte 81234, t=... s (chunk CRC mismatch): /joint_states 180``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import yaml

from .errors import BagError
from .layout import storage_files
from .mcap_scan import BadChunk, _iter_mcap_messages, _mcap_summary, _Scan

__all__ = ["BagCheck", "FileCheck", "check_bag", "read_failure", "require_intact"]


@dataclass
class FileCheck:
    path: Path
    storage: str  # mcap | sqlite3
    messages: int = 0
    chunks: int = 0
    chunks_without_crc: int = 0
    problem: str = ""
    bad_chunks: list[BadChunk] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problem and not self.bad_chunks

    def errors(self) -> list[BagError]:
        out = [BagError(self.path, c.detail()) for c in self.bad_chunks]
        if self.problem:
            out.append(BagError(self.path, self.problem))
        return out


@dataclass
class BagCheck:
    path: Path
    files: list[FileCheck]
    problem: str = ""  # about the bag as a whole (metadata.yaml), named by ``problem_file``
    problem_file: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problem and all(f.ok for f in self.files)

    def errors(self) -> list[BagError]:
        out = [BagError(self.problem_file or self.path, self.problem)] if self.problem else []
        for f in self.files:
            out += f.errors()
        return out

    def summary(self) -> str:
        """One line for ``info``: what was checked and how."""
        parts = []
        mcap = [f for f in self.files if f.storage == "mcap"]
        db3 = [f for f in self.files if f.storage == "sqlite3"]
        if mcap:
            chunks = sum(f.chunks for f in mcap)
            text = f"{chunks} MCAP chunk(s) in {len(mcap)} file(s): CRC and size ok"
            unchecked = sum(f.chunks_without_crc for f in mcap)
            if unchecked:
                text += f" ({unchecked} written without a CRC: size only)"
            parts.append(text + ", summary/footer ok")
        if db3:
            parts.append(f"{len(db3)} sqlite3 file(s): quick_check ok")
        return "; ".join(parts) + f"; {sum(f.messages for f in self.files)} messages read"


def _missing_metadata(bag: Path, files: list[Path]) -> str:
    names = ", ".join(f.name for f in files)
    return (f"no metadata.yaml beside the storage file(s) {names}: the recording did not close "
            f"(killed or crashed); run `sage-hl-bag repair {bag}`")


def check_bag(path: str | Path) -> BagCheck:
    """Read every storage file of a bag (a directory, or one .mcap / .db3 file) and say what is wrong.

    Raises :class:`BagError` only for a path that is no bag at all (missing, no storage files).
    """
    path = Path(path)
    if not path.exists():
        raise BagError(path, "does not exist")
    if path.is_file():
        if path.suffix not in (".mcap", ".db3"):
            raise BagError(path, "not a bag storage file (expected .mcap or .db3)")
        return BagCheck(path, [_check_file(path)])
    files = storage_files(path)
    meta_path = path / "metadata.yaml"
    if not meta_path.exists():
        if not files:
            raise BagError(path, "not a bag: no metadata.yaml and no .mcap/.db3 storage files")
        return BagCheck(path, [_check_file(f) for f in files], _missing_metadata(path, files), files[0])
    try:
        meta = (yaml.safe_load(meta_path.read_text()) or {}).get("rosbag2_bagfile_information") or {}
        listed = [path / str(p) for p in meta.get("relative_file_paths") or []]
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as exc:
        return BagCheck(path, [_check_file(f) for f in files], f"cannot be read: {exc}", meta_path)
    missing = [p for p in listed if not p.is_file()]
    checks = [_check_file(p) for p in listed if p.is_file()]
    if missing:
        return BagCheck(path, checks, "lists storage file(s) that do not exist: "
                        + ", ".join(p.name for p in missing), meta_path)
    if not listed:
        return BagCheck(path, checks, "lists no storage files" + (
            f" (the directory has {', '.join(f.name for f in files)}: run `sage-hl-bag repair {path}`)"
            if files else ""), meta_path)
    return BagCheck(path, checks)


def _check_file(path: Path) -> FileCheck:
    if path.suffix == ".mcap":
        return _check_mcap(path)
    return _check_sqlite(path)


def _check_mcap(path: Path) -> FileCheck:
    check = FileCheck(path, "mcap")
    scan = _Scan()
    try:
        for _ in _iter_mcap_messages(path, scan):
            pass
    except OSError as exc:
        check.problem = f"cannot be read: {exc.strerror or exc}"
        return check
    check.messages, check.chunks, check.chunks_without_crc = scan.messages, scan.chunks, scan.chunks_without_crc
    check.bad_chunks = scan.bad_chunks
    if scan.problem:
        check.problem = scan.problem + f" (run `sage-hl-bag repair {path.parent}`)"
    elif _mcap_summary(path) is None:
        check.problem = (f"no valid summary/footer after the data (run `sage-hl-bag repair {path.parent}`)")
    return check


def _check_sqlite(path: Path) -> FileCheck:
    check = FileCheck(path, "sqlite3")
    if path.with_name(path.name + "-wal").exists():
        check.problem = (f"has a leftover write-ahead journal ({path.name}-wal): the recording did not close; "
                         f"run `sage-hl-bag repair {path.parent}`")
        return check
    try:
        # Read-only and immutable: checking a bag never changes a byte of it.
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1", uri=True)
        try:
            result = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
            if result != ["ok"]:
                check.problem = "sqlite3 quick_check failed: " + "; ".join(map(str, result[:5]))
                return check
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"topics", "messages"} <= tables:
                check.problem = f"not a rosbag2 sqlite3 file (tables: {', '.join(sorted(tables)) or 'none'})"
                return check
            (check.messages,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        check.problem = f"not a readable sqlite3 database ({exc})"
    return check


def require_intact(path: str | Path) -> BagCheck:
    """:func:`check_bag`, raising the first problem as a :class:`BagError` naming its file."""
    check = check_bag(path)
    errors = check.errors()
    if errors:
        first = errors[0]
        if len(errors) > 1:
            raise BagError(first.bag, f"{first.problem} (and {len(errors) - 1} more problem(s): "
                                      + "; ".join(str(e) for e in errors[1:4]) + ")")
        raise first
    return check


def read_failure(bag: str | Path, exc: BaseException) -> BagError:
    """The error to report when reading ``bag`` raised ``exc``: the damaged storage file and its
    problem when a check finds one, else the bag, its storage files and the reader's message."""
    if isinstance(exc, BagError) and Path(exc.bag).suffix in (".mcap", ".db3", ".yaml"):
        return exc
    try:
        errors = check_bag(bag).errors()
    except BagError as err:
        return err
    if errors:
        return errors[0]
    path = Path(bag)
    names = ", ".join(f.name for f in storage_files(path)) if path.is_dir() else path.name
    return BagError(bag, f"cannot be read (storage files: {names}): {type(exc).__name__}: {exc}")
