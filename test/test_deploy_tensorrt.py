"""TensorRT deployment pieces (issue 12): provider options given as strings (how a ROS string-array
parameter carries them), and the native engine builder (``sage-hl export --tensorrt``).

Where ``tensorrt`` does not import the builder must refuse with the reason (exit status 3), before
exporting anything; that is tested wherever it is absent. The real build runs only where tensorrt
imports and a GPU is usable, and skips with the reason printed (``-rs``) everywhere else.
"""

from __future__ import annotations

from pathlib import Path

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


# ---------------------------------------------------------------------------- native engine builder
def _tensorrt_reason() -> str | None:
    from sage_hl_ros.deploy.tensorrt_engine import tensorrt_unavailable

    return tensorrt_unavailable()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from ros_harness import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("trt") / "model", ["joint1", "joint2", "joint3"])


def test_cli_without_tensorrt_exits_with_the_reason(small_checkpoint, capsys):
    """Where tensorrt does not import, --tensorrt is refused before anything is exported, naming
    tensorrt and what to install; never an engine that is not one."""
    if _tensorrt_reason() is None:
        pytest.skip("tensorrt imports on this machine: the refusal path is not reachable")
    from sage_hl_ros.deploy.tensorrt_engine import TensorRTUnavailable, build_engine
    from sage_hl_ros.tools import export_cli

    def run(*argv):
        import argparse

        parser = argparse.ArgumentParser()
        export_cli.add_arguments(parser)
        return export_cli.run(parser.parse_args([str(small_checkpoint), *argv]))

    for argv in (["--tensorrt"], ["--precision", "fp16", "--tensorrt"], ["--tensorrt", "--engine-only"]):
        assert run(*argv) == 3, argv
        err = capsys.readouterr().err
        assert "--tensorrt: the tensorrt Python package does not import here" in err, err
        assert "python3-libnvinfer" in err and "CUDA GPU" in err
    assert not (small_checkpoint / "exports").exists()  # refused before the export, nothing written
    with pytest.raises(TensorRTUnavailable, match="tensorrt Python package does not import"):
        build_engine(small_checkpoint, "fp16")
    # Arguments that cannot mean anything are refused whatever the machine has.
    assert run("--engine-only") == 2 and "add --tensorrt" in capsys.readouterr().err
    assert run("--precision", "int8", "--tensorrt") == 2 and "INT8 runs on the TensorRT execution provider" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="builds fp32 or fp16 engines"):
        build_engine(small_checkpoint, "int8")


def test_the_cli_reports_no_tensorrt_as_exit_3_in_a_real_process(small_checkpoint):
    import subprocess
    import sys

    if _tensorrt_reason() is None:
        pytest.skip("tensorrt imports on this machine: the refusal path is not reachable")
    out = subprocess.run([sys.executable, "-m", "sage_hl_ros.cli", "export", str(small_checkpoint), "--tensorrt"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, (out.returncode, out.stderr[-2000:])
    assert "tensorrt" in out.stderr and "does not import" in out.stderr


def test_native_engine_build(small_checkpoint, tmp_path):
    """Where tensorrt imports and a GPU is usable: fp16 export -> engine; the bindings JSON lists the
    manifest's inputs/outputs in order with the engine's own shapes and dtypes. Not run on the
    development machine (no tensorrt, no GPU)."""
    pytest.importorskip("tensorrt", reason="tensorrt (NVIDIA TensorRT Python bindings) is not installed")
    import json
    import shutil

    from sage_hl_ros.deploy.export import ExportConfig, export_model
    from sage_hl_ros.deploy.manifest import INPUTS, OUTPUTS
    from sage_hl_ros.deploy.tensorrt_engine import TensorRTUnavailable, build_engine

    model = shutil.copytree(small_checkpoint, tmp_path / "model")
    export_model(model, ExportConfig(precisions=["fp16"], held_out_sequences=2, held_out_steps=2,
                                     max_action_error_ratio=3.0, threads=1), log=lambda s: None)
    try:
        info = build_engine(model, "fp16", max_batch=2)
    except TensorRTUnavailable as exc:
        pytest.skip(f"tensorrt imports but no engine can be built here: {exc}")
    engine = Path(info["engine_file"])
    assert engine.is_file() and engine.stat().st_size == info["engine_bytes"] > 0
    saved = json.loads(Path(info["bindings_file"]).read_text())
    assert saved["input_binding_names"] == saved["input_tensor_names"] == list(INPUTS)
    assert saved["output_binding_names"] == saved["output_tensor_names"] == list(OUTPUTS)
    by_name = {t["name"]: t for t in saved["inputs"] + saved["outputs"]}
    assert by_name["image"]["shape"][0] == -1 and by_name["image"]["shape"][1:] == [3, 32, 32]
    assert by_name["mask"]["dtype"] == "bool" and by_name["z"]["dtype"] == "float32"
    ros = saved["isaac_ros_tensor_rt"]
    assert ros["engine_file_path"] == str(engine) and ros["force_engine_update"] is False and ros["enable_fp16"]
