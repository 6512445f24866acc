"""Damaged bags fail loudly, and repair tells the truth about what it dropped.

The bags are written in the recorder's format (``BagWriter``: chunked MCAP with CRCs, or rosbag2
sqlite3) from a synthetic reaching bag, then damaged the ways a robot's disk damages them: bytes
zeroed inside an MCAP chunk (CRC mismatch), a file cut in half (power loss), a .db3 cut in half
(sqlite3 "malformed"), metadata.yaml missing (a killed recorder). Every bag command (info,
convert, replay, the sleep trainer) must exit non-zero with the *storage file* and the problem
in its message, and leave every byte of the bag as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ros_harness import ros_env, script

from sage_hl_ros.bags.bag_writer import BagWriter
from sage_hl_ros.bags.episodes import decode_cdr_string, encode_cdr_string
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.bags.verify import check_bag
from sage_hl_ros.core.config import ObservationConfig
from sage_hl_ros.tools import bag_cli, sleep_cli

JOINTS = [f"joint{i}" for i in range(1, 8)]
OBS = ObservationConfig(joint_names=JOINTS, image_height_px=16, image_width_px=16, depth_height_px=16,
                        depth_width_px=16)
T0 = 1_700_000_000_000_000_000


def _recorder_format_copy(src: Path, dst: Path, storage: str) -> Path:
    """``src`` rewritten by the recorder's BagWriter (small chunks: damage hits one of many)."""
    from rosbags.rosbag2 import Reader

    with Reader(src) as reader, BagWriter(dst, storage=storage, chunk_bytes=8000) as writer:
        ids = {c.id: writer.add_connection(c.topic, c.msgtype) for c in reader.connections}
        for conn, t, data in reader.messages():
            writer.write(ids[conn.id], t, bytes(data))
    return dst


def _digest(bag: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bag.iterdir())}


def _zero_middle_of_a_chunk(f: Path) -> None:
    """Zero 64 bytes of the records inside the middle chunk (found by the mcap package): its CRC
    no longer matches, every record around it stays framed as it was."""
    from mcap.reader import make_reader

    with open(f, "rb") as fh:
        chunks = sorted(make_reader(fh).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    chunk = chunks[len(chunks) // 2]
    assert len(chunks) >= 5 and chunk.compression == "" and chunk.uncompressed_size > 200
    records = chunk.chunk_start_offset + 9 + 8 + 8 + 8 + 4 + 4 + 8  # record header, chunk header (no compression)
    data = bytearray(f.read_bytes())
    data[records + 40:records + 104] = bytes(64)
    f.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, tuple[Path, Path, str]]:
    """kind -> (bag directory, the damaged storage file, a word the error must contain)."""
    root = tmp_path_factory.mktemp("damaged")
    spec = dict(episodes=3, steps_per_episode=8)
    good = {}
    for storage in ("mcap", "sqlite3"):
        src = write_synthetic_bag(root / f"synthetic_{storage}", OBS, SyntheticBagSpec(storage=storage, **spec))
        good[storage] = _recorder_format_copy(src, root / f"good_{storage}", storage)
    assert all(check_bag(b).ok for b in good.values())
    out = {}

    def copy(kind: str, storage: str) -> tuple[Path, Path]:
        bag = shutil.copytree(good[storage], root / kind)
        (f,) = bag.glob("*.mcap" if storage == "mcap" else "*.db3")
        return bag, f

    bag, f = copy("crc", "mcap")
    _zero_middle_of_a_chunk(f)
    out["crc"] = (bag, f, "CRC mismatch")
    bag, f = copy("truncated", "mcap")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out["truncated"] = (bag, f, "truncated")
    bag, f = copy("sqlite_malformed", "sqlite3")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out["sqlite_malformed"] = (bag, f, "malformed")
    bag, f = copy("no_metadata", "mcap")
    (bag / "metadata.yaml").unlink()
    out["no_metadata"] = (bag, f, "sage-hl-bag repair")
    return out


@pytest.mark.ros  # replay runs the sage_replay node
@pytest.mark.parametrize("kind", ["crc", "truncated", "sqlite_malformed", "no_metadata"])
def test_damaged_bag_fails_every_command_naming_the_storage_file(damaged, kind, capsys, tmp_path):
    bag, storage_file, word = damaged[kind]
    before = _digest(bag)

    def named(text: str) -> bool:
        return str(storage_file) in text and word in text

    assert bag_cli.main(["info", str(bag)]) == 1
    err = capsys.readouterr().err
    assert named(err), err
    assert bag_cli.main(["convert", str(bag), "--out", str(tmp_path / "samples")]) == 1
    err = capsys.readouterr().err
    assert named(err), err
    assert not list((tmp_path / "samples").glob("*")), "a failed conversion wrote samples"
    code = sleep_cli.main(["--bags", str(bag), "--out", str(tmp_path / "model"), "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and named(err), err
    env = dict(os.environ, **ros_env())
    replay = subprocess.run([script("sage-hl-bag"), "replay", str(bag), "--no-clock"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert replay.returncode == 2 and named(replay.stderr), replay.stdout + replay.stderr
    assert _digest(bag) == before  # no command wrote to the bag


def test_info_says_what_it_verified_and_when_it_did_not(damaged, capsys):
    good = damaged["crc"][0].parent / "good_mcap"
    assert bag_cli.main(["info", str(good)]) == 0
    out = capsys.readouterr().out
    assert "Verified:     " in out and "CRC and size ok" in out
    # Summary only: the damaged chunk is not read, and the output says the CRCs were not checked.
    assert bag_cli.main(["info", str(damaged["crc"][0]), "--no-verify"]) == 0
    assert "NO (summary only: chunk CRCs not checked" in capsys.readouterr().out


def test_repair_drops_the_bad_chunk_and_reports_exactly_what_it_held(tmp_path, capsys):
    from mcap.reader import make_reader

    bag = tmp_path / "bag"
    sent = {"/joint_states": [], "/sage/episode": []}
    with BagWriter(bag, chunk_bytes=4000) as w:
        js = w.add_connection("/joint_states", "std_msgs/msg/String")
        ep = w.add_connection("/sage/episode", "std_msgs/msg/String")
        for i in range(2000):
            t = T0 + i * 1_000_000
            if i in (0, 1999):
                w.write(ep, t, encode_cdr_string("start:x" if i == 0 else "end:success"))
                sent["/sage/episode"].append(t)
            w.write(js, t, encode_cdr_string(f"m{i:05d}"))
            sent["/joint_states"].append(t)
    (f,) = bag.glob("*.mcap")
    _zero_middle_of_a_chunk(f)
    original = f.read_bytes()
    assert bag_cli.main(["repair", str(bag), "--keep-original"]) == 0
    out = capsys.readouterr().out
    assert (bag / "bag_0.mcap.damaged").read_bytes() == original  # the damaged file is kept as it was
    # The independent reader with CRC validation reads the whole repaired file.
    with open(f, "rb") as fh:
        kept = [(ch.topic, m.log_time, decode_cdr_string(m.data))
                for _s, ch, m in make_reader(fh, validate_crcs=True).iter_messages(log_time_order=True)]
    kept_js = [t for topic, t, _ in kept if topic == "/joint_states"]
    lost = sorted(set(sent["/joint_states"]) - set(kept_js))
    # One chunk lost: a contiguous run of messages, every other message is there in order.
    assert 0 < len(lost) < 200 and kept_js == [t for t in sent["/joint_states"] if t not in set(lost)]
    assert lost == sent["/joint_states"][sent["/joint_states"].index(lost[0]):][: len(lost)]
    # The report names the file, the topic, the count and the time range of exactly those messages.
    assert "dropped 1 chunk(s) that fail their CRC" in out, out
    line = next(x for x in out.splitlines() if "chunk at byte" in x)
    assert "bag_0.mcap" in line and "chunk CRC mismatch" in line and f"/joint_states {len(lost)}" in line, line
    assert f"t={lost[0] / 1e9:.6f}..{lost[-1] / 1e9:.6f} s" in line, (line, lost[0], lost[-1])
    assert check_bag(bag).ok
    assert bag_cli.main(["info", str(bag)]) == 0
    capsys.readouterr()
