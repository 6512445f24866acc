"""package.xml lists what a colcon / rosdep install needs, checked against the package's imports.

Every ROS package imported anywhere in sage_hl_ros/ or launch/ must be an <exec_depend>; every
third-party Python import must map to a rosdep key that is an <exec_depend>, or (where rosdep has
no key that installs the right thing, e.g. torch on a Jetson) be named in package.xml's pip
comment. No <exec_depend> may be stale. A new import without a mapping fails here on purpose:
decide its rosdep key (``rosdep resolve <key>`` on a ROS machine) and add it to both places.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Third-party import -> rosdep key (apt-backed keys from rosdistro's base.yaml / python.yaml).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "PIL": "python3-pil",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "psutil": "python3-psutil",
    "zmq": "python3-zmq",
    "msgpack": "python3-msgpack",
}
# No rosdep key installs the right build (torch / onnxruntime on Jetson come from NVIDIA's wheels)
# or none exists: package.xml's comment must name the pip distribution.
PIP_ONLY = {
    "torch": "torch",
    "safetensors": "safetensors",
    "rosbags": "rosbags",
    "mujoco": "mujoco",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    # LeRobot datasets (bags/lerobot_*.py): Humble's apt has no pyarrow, and its python3-av (8.x) is
    # older than the API used (av >= 12).
    "pyarrow": "pyarrow",
    "av": "av",
}
# Imported only where present, with a fallback or a clear error (never needed to run the nodes).
OPTIONAL = {
    "transformers": "optional Hugging Face visual backbone",
    "lz4": "reading lz4-compressed bags",
    "compression": "Python >= 3.14's compression.zstd for zstd-compressed bags",
    "backports": "backports.zstd (zstd bags before Python 3.14), installed with rosbags",
    "tensorrt": "the TensorRT version in engine-cache keys",
}
# Needed at run time though never imported by name.
INDIRECT = {"lifecycle_msgs": "rclpy.lifecycle (recorder node) uses it"}


def _is_ros(module: str) -> bool:
    return module in {"rclpy", "launch", "launch_ros", "ament_index_python", "rosidl_runtime_py"} or \
        module.endswith(("_msgs", "_srvs", "_interfaces"))


def imported_modules() -> dict[str, str]:
    """Top-level module -> first file importing it, over the package and the launch files."""
    found: dict[str, str] = {}
    files = sorted((ROOT / "sage_hl_ros").rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _package_xml() -> tuple[set[str], str]:
    text = (ROOT / "package.xml").read_text()
    root = ET.fromstring(text)
    assert root.get("format") == "3"
    return {e.text.strip() for e in root.iter("exec_depend")}, text


def test_every_import_is_a_dependency():
    deps, text = _package_xml()
    comments = " ".join(re.findall(r"<!--(.*?)-->", text, flags=re.S))
    problems = []
    for module, where in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in ("sage_hl_ros", "__future__") or module in OPTIONAL:
            continue
        if _is_ros(module):
            if module not in deps:
                problems.append(f"{module} (imported in {where}): add <exec_depend>{module}</exec_depend>")
        elif module in ROSDEP_KEYS:
            if ROSDEP_KEYS[module] not in deps:
                problems.append(f"{module} (imported in {where}): add <exec_depend>{ROSDEP_KEYS[module]}</exec_depend>")
        elif module in PIP_ONLY:
            if not re.search(rf"\b{re.escape(PIP_ONLY[module])}\b", comments):
                problems.append(f"{module} (imported in {where}): name '{PIP_ONLY[module]}' in package.xml's "
                                "pip comment")
        else:
            problems.append(f"{module} (imported in {where}): unknown third-party import; map it to a rosdep key "
                            "in this test and package.xml")
    assert not problems, "package.xml is missing dependencies:\n  " + "\n  ".join(problems)


def test_no_stale_exec_depend():
    deps, _ = _package_xml()
    modules = set(imported_modules())
    wanted = {m for m in modules if _is_ros(m)} | {ROSDEP_KEYS[m] for m in modules if m in ROSDEP_KEYS}
    stale = sorted(deps - wanted - set(INDIRECT))
    assert not stale, f"<exec_depend> entries nothing imports (remove, or list in INDIRECT with why): {stale}"


def test_the_scan_sees_the_imports_it_must():
    found = imported_modules()
    for module in ("rclpy", "numpy", "torch", "onnxruntime", "launch_ros", "geometry_msgs", "rcl_interfaces"):
        assert module in found, f"{module} not found: the import scan is broken"
