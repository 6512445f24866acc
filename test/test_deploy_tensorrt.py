"""TensorRT deployment pieces that need no GPU to check (issue 12): provider options given as
strings (how a ROS string-array parameter carries them).

Code that needs the ``tensorrt`` package or a GPU runs only where it imports; those tests skip
with the reason printed where it does not.
"""

from __future__ import annotations

import pytest

from sage_hl_ros.deploy.h_loader import BackendSpec
from sage_hl_ros.deploy.manifest import ExportError
from sage_hl_ros.deploy.onnx_backend import CPU, TENSORRT, parse_provider


def test_provider_entries_carry_options():
    assert parse_provider(CPU) == (CPU, {})
    assert parse_provider(f" {TENSORRT} ; trt_max_workspace_size=1073741824;trt_builder_optimization_level=3") == (
        TENSORRT, {"trt_max_workspace_size": "1073741824", "trt_builder_optimization_level": "3"})
    # Shape profiles contain ',', ':' and 'x': only ';' and the first '=' separate.
    assert parse_provider(f"{TENSORRT};trt_profile_min_shapes=image:1x3x32x32,depth:1x1x32x32")[1] == {
        "trt_profile_min_shapes": "image:1x3x32x32,depth:1x1x32x32"}
    for bad in (f"{TENSORRT};fp16", f"{TENSORRT};=1", ";trt_fp16_enable=1", f"{TENSORRT};;"):
        with pytest.raises(ExportError, match="provider entry"):
            parse_provider(bad)
    with pytest.raises(ExportError, match="options are 'name;key=value;key=value'"):
        BackendSpec(backend="onnxruntime", providers=(f"{TENSORRT};trt_fp16_enable", CPU))  # refused at configure


def test_string_options_reach_the_provider_and_win(tmp_path):
    from sage_hl_ros.deploy.manifest import Manifest
    from sage_hl_ros.deploy.onnx_backend import provider_config

    manifest = Manifest(tmp_path / "manifest.json", {
        "model_hash": "ab" * 32, "precision": "fp16",
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]})
    config, skipped = provider_config([f"{TENSORRT};trt_max_workspace_size=1073741824;trt_fp16_enable=False",
                                       "CUDAExecutionProvider;device_id=0", CPU], [TENSORRT, CPU], tmp_path, manifest)
    assert [n for n, _ in config] == [TENSORRT, CPU] and list(skipped) == ["CUDAExecutionProvider"]
    trt = config[0][1]
    assert trt["trt_max_workspace_size"] == "1073741824" and trt["trt_fp16_enable"] == "False"  # caller wins
    assert trt["trt_engine_cache_enable"] is True and trt["trt_profile_max_shapes"] == "image:16x3x32x32"
