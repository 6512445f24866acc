"""ONNX export and the torch-free ONNX Runtime backend (issue 12).

Every compressor strategy round-trips (ORT vs torch max |dz| <= 1e-4 at FP32, with the temporal
state carried by each side), FP16 and INT8 exports run and report their held-out action-error ratio,
and corrupted or mismatched exports are refused with errors that name the file. Exports are the
slow part (~13 s each on 2 cores): the hybrid model's three precisions come from one export.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_config

from sage_hl_ros.core.checkpoint import load_checkpoint, save_checkpoint
from sage_hl_ros.core.checkpoint_files import load_tensors_numpy, read_normalizer
from sage_hl_ros.core.synthetic import SyntheticReachTask
from sage_hl_ros.core.system import build_model
from sage_hl_ros.deploy.export import ExportConfig, export_model, observation_arrays
from sage_hl_ros.deploy.manifest import (
    EXPORTS_DIR,
    H_PATH_FILE,
    L_STEP_FILE,
    MANIFEST_FILE,
    ExportError,
    find_export,
)
from sage_hl_ros.deploy.onnx_backend import CPU, TENSORRT, OnnxHPath, provider_config
from sage_hl_ros.training.fit import fit

ROOT = Path(__file__).resolve().parent.parent
# Tiny but complete: every stage of the H path, one H layer, a short history.
ARCH = {"h_layers": 1, "h_ff_dim": 128, "history_len": 3, "l_hidden_dim": 64, "l_layers": 1}


def _checkpoint(directory: Path, compressor: str, train_steps: int = 0) -> Path:
    cfg = small_config(compressor=compressor, **ARCH)
    model = build_model(cfg)
    task = SyntheticReachTask(cfg.observation, seed=0)
    data = task.sequences(64, 2)
    model.fit_normalizer(data.obs.joint_position, data.obs.joint_velocity, data.obs.tactile, data.action.flatten(0, 1))
    if train_steps:  # so that the L step depends on z and an action-error ratio means something
        fit(model, lambda s: task.sequences(16, 2), train_steps, lr=2e-3)
    return save_checkpoint(model.eval(), directory)


def _own_comparison(model_dir: Path, precision: str = "fp32", batch: int = 3, steps: int = 3,
                    providers=(CPU,)) -> float:
    """Independent of the exporter's check: fresh observations, state carried on each side."""
    model = load_checkpoint(model_dir)
    backend = OnnxHPath.for_checkpoint(model_dir, precision, providers=providers)
    data = SyntheticReachTask(model.cfg.observation, seed=123).sequences(batch, steps)
    idx = torch.arange(batch) * steps
    st, so = model.initial_state(batch), backend.initial_state(batch)
    worst = 0.0
    for t in range(steps):
        obs = data.obs.index(idx + t)
        z_t, _, st = model.encode(obs, st)
        z_o, so = backend.run(observation_arrays(obs), so)
        assert z_o.shape == (batch, model.cfg.model.latent_dim) and z_o.dtype == np.float32
        worst = max(worst, float(np.abs(z_o - z_t.numpy()).max()), float(np.abs(so.history - st.history.numpy()).max()))
        assert np.array_equal(so.valid, st.valid.numpy())
    return worst


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """A briefly trained hybrid (default) model exported at all three precisions in one call."""
    model_dir = _checkpoint(tmp_path_factory.mktemp("hybrid") / "model", "hybrid", train_steps=40)
    lines: list[str] = []
    results = export_model(model_dir, ExportConfig(precisions=["fp32", "fp16", "int8"], max_action_error_ratio=3.0,
                                                   held_out_sequences=8, held_out_steps=3, calibration_sequences=8),
                           log=lines.append)
    return model_dir, results, lines


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("compressor", ["bottleneck", "attention", "hierarchical"])
def test_fp32_round_trip(compressor, tmp_path):
    model_dir = _checkpoint(tmp_path / "model", compressor)
    cfg = dict(held_out_sequences=4, held_out_steps=3)
    if compressor == "bottleneck":  # the refusal path costs one more export: do it once
        with pytest.raises(ExportError, match=r"fp32 export refused \(max \|dz\|"):
            export_model(model_dir, ExportConfig(max_abs_dz=1e-12, **cfg), log=lambda _: None)
        root = next((model_dir / EXPORTS_DIR).iterdir())
        assert list(root.iterdir()) == [], "a refused export must leave nothing (no fp32/, no temp folders)"
    manifest = export_model(model_dir, ExportConfig(**cfg), log=lambda _: None)["fp32"]
    assert manifest["check"]["passed"] and manifest["check"]["max_abs_dz"] <= 1e-4
    assert manifest["held_out"]["source"] == "synthetic"
    assert _own_comparison(model_dir) <= 1e-4


def test_hybrid_round_trip_and_manifest(hybrid):
    model_dir, results, lines = hybrid
    m = results["fp32"]
    assert m["check"]["max_abs_dz"] <= 1e-4 and m["check"]["passed"]
    assert _own_comparison(model_dir, batch=1) <= 1e-4  # dynamic batch: exported at 2, run at 1 and 3
    assert _own_comparison(model_dir, batch=3) <= 1e-4
    d = find_export(model_dir, "fp32")
    on_disk = json.loads((d / MANIFEST_FILE).read_text())
    assert on_disk == m
    assert [i["name"] for i in m["inputs"]][-2:] == ["history", "history_valid"]
    assert [o["name"] for o in m["outputs"]] == ["z", "new_history", "new_history_valid"]
    assert m["inputs"][0]["shape"] == ["batch", 3, 32, 32] and m["opset"] >= 17
    assert {"torch", "onnx", "onnxruntime", "onnxscript", "sage_hl_ros"} <= set(m["versions"])
    assert any(line.startswith("fp32: max |dz|") for line in lines)
    # The L step in the export is exactly the checkpoint's L-module and normaliser.
    from safetensors.numpy import load_file

    l_step = load_file(str(d / L_STEP_FILE))
    for name, arr in load_tensors_numpy(model_dir, prefix="l_module.").items():
        np.testing.assert_array_equal(l_step[name], arr)
    stats = read_normalizer(model_dir)
    for stat in ("joint_position", "joint_velocity", "action"):
        for f in ("mean", "std", "min", "max"):
            np.testing.assert_array_equal(l_step[f"normalizer.{stat}_{f}"], stats[stat][f])


def test_int8_and_fp16_report_their_action_error_ratio(hybrid, record_property):
    model_dir, results, _ = hybrid
    import onnx

    for precision in ("fp16", "int8"):
        c = results[precision]["check"]
        ratio, vs_fp32 = c["action_error_ratio"], c["action_error_ratio_vs_fp32_onnx"]
        print(f"{precision}: held-out action error {c['action_error_onnx_rad']:.5f} rad vs torch "
              f"{c['action_error_torch_rad']:.5f}: ratio {ratio:.4f} (vs fp32 ORT {vs_fp32:.4f}), "
              f"max |dz| {c['max_abs_dz']:.3g}")
        record_property(f"{precision}_action_error_ratio", ratio)
        assert np.isfinite(ratio) and c["passed"]
        assert np.isfinite(_own_comparison(model_dir, precision))  # runs and carries its state
    graph = onnx.load(str(find_export(model_dir, "int8") / H_PATH_FILE)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "INT8 must be a QDQ model (TensorRT explicit INT8)"
    assert results["int8"]["calibration"]["source"] == "synthetic"
    graph16 = onnx.load(str(find_export(model_dir, "fp16") / H_PATH_FILE)).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph16.initializer)
    assert graph16.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same feeds at every precision


# ---------------------------------------------------------------------------- refusals
@pytest.fixture
def export_copy(hybrid, tmp_path):
    """A copy of the hybrid checkpoint and its fp32 export, free to break."""
    model_dir, _, _ = hybrid
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst, ignore=shutil.ignore_patterns("fp16", "int8"))
    return dst, find_export(dst, "fp32")


def test_corrupted_or_missing_files_are_named(export_copy):
    model_dir, d = export_copy
    onnx_file = d / H_PATH_FILE
    good = onnx_file.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match=rf"{onnx_file}: corrupted or replaced: sha256 \w+ does not match"):
        OnnxHPath.for_checkpoint(model_dir)
    onnx_file.write_bytes(good)
    (d / L_STEP_FILE).unlink()
    with pytest.raises(ExportError, match=rf"{d / L_STEP_FILE}: missing"):
        OnnxHPath(d)
    (d / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(ExportError, match=rf"{d / MANIFEST_FILE}: unreadable or not JSON"):
        OnnxHPath(d)
    shutil.rmtree(d)
    with pytest.raises(ExportError, match=r"no fp32 export for model .*run `sage-hl export"):
        OnnxHPath.for_checkpoint(model_dir)


def test_export_of_other_weights_is_refused(export_copy, tmp_path):
    model_dir, d = export_copy
    model = load_checkpoint(model_dir)
    with torch.no_grad():
        model.l_module.net[0].bias.add_(0.01)  # retrained: new weights, new hash
    save_checkpoint(model, model_dir)
    with pytest.raises(ExportError, match=r"no fp32 export for model .*exports of other weights present"):
        find_export(model_dir, "fp32")
    from sage_hl_ros.deploy.manifest import checkpoint_hash

    with pytest.raises(ExportError, match=rf"{d / MANIFEST_FILE}: export is of model .*export the current"):
        OnnxHPath(d, expected_hash=checkpoint_hash(model_dir))
    moved = tmp_path / "elsewhere" / ("0" * 64) / "fp32"
    shutil.copytree(d, moved)
    with pytest.raises(ExportError, match=r"lies in folder '0+'"):
        OnnxHPath(moved)


def test_wrong_input_shapes_are_named(export_copy):
    model_dir, d = export_copy
    backend = OnnxHPath.for_checkpoint(model_dir)
    model = load_checkpoint(model_dir)
    arrays = observation_arrays(model.schema.empty(2))
    state = backend.initial_state(2)
    z, state = backend.run(arrays, state)
    assert z.shape == (2, 256)
    bad = {**arrays, "image": np.zeros((2, 3, 64, 64), np.float32)}
    with pytest.raises(ExportError, match=rf"{d / H_PATH_FILE}: input 'image' has shape \(2, 3, 64, 64\), "
                                          r"expected \('B', 3, 32, 32\)"):
        backend.run(bad, state)
    with pytest.raises(ExportError, match=r"input 'history' has shape \(1, 3, 256\).*with B=2"):
        backend.run(arrays, backend.initial_state(1))
    with pytest.raises(ExportError, match=r"input 'audio' not given"):
        backend.run({k: v for k, v in arrays.items() if k != "audio"}, state)
    # A manifest that disagrees with its graph (edited, or from another export) is refused at load.
    m = json.loads((d / MANIFEST_FILE).read_text())
    m["inputs"][0]["shape"] = ["batch", 3, 64, 64]
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(ExportError, match=rf"{d / H_PATH_FILE}: input 'image' has shape .*{d / MANIFEST_FILE} says"):
        OnnxHPath(d)


def test_cli_names_a_bad_checkpoint(tmp_path):
    from sage_hl_ros.cli import main

    (tmp_path / "m").mkdir()
    assert main(["export", str(tmp_path / "m")]) == 2


# ---------------------------------------------------------------------------- runtime
def test_backend_never_imports_torch(hybrid):
    model_dir, _, _ = hybrid
    code = f"""
import sys
import numpy as np
from sage_hl_ros.deploy.onnx_backend import OnnxHPath
b = OnnxHPath.for_checkpoint({str(model_dir)!r}, "int8", intra_op_threads=1)
arrays = {{s.name: np.zeros([1 if d == "batch" else d for d in s.shape], s.dtype) for s in b.manifest.inputs[:7]}}
z, state = b.run(arrays, b.initial_state())
assert z.shape == (1, 256) and np.isfinite(z).all() and state.valid[0, -1]
print("torch" in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:3])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False"), f"torch was imported by the ONNX backend: {out.stdout}"


def test_tensorrt_options_and_provider_fallback(hybrid):
    model_dir, _, _ = hybrid
    d = find_export(model_dir, "int8")
    from sage_hl_ros.deploy.manifest import read_manifest

    manifest = read_manifest(d)
    config, skipped = provider_config([TENSORRT, "CUDAExecutionProvider", CPU], [TENSORRT, CPU], d, manifest)
    assert [name for name, _ in config] == [TENSORRT, CPU] and "CUDAExecutionProvider" in skipped
    trt = config[0][1]
    assert trt["trt_int8_enable"] is True and trt["trt_fp16_enable"] is False and trt["trt_engine_cache_enable"]
    cache = Path(trt["trt_engine_cache_path"])
    assert cache.parent == d / "trt_cache" and cache.name.startswith(manifest.model_hash[:16] + "_")
    assert "_trt" in cache.name  # keyed by hash + GPU name + TensorRT version
    assert trt["trt_profile_max_shapes"].startswith("image:16x3x32x32,")
    with pytest.raises(ExportError, match="none of the requested providers is available"):
        provider_config([TENSORRT], [CPU], d, manifest)


def test_tensorrt_execution_provider_runs_where_available(hybrid):
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        pytest.skip(f"TensorrtExecutionProvider not in this onnxruntime build ({ort.get_available_providers()})")
    model_dir, _, _ = hybrid
    # TensorRT may use TF32 / fused kernels: a looser bound than CPU FP32.
    assert _own_comparison(model_dir, "fp32", providers=(TENSORRT, CPU)) <= 1e-2
