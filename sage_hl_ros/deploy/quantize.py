"""Reduced-precision copies of the exported FP32 H path: FP16 by graph conversion, INT8 as QDQ.

INT8 is ONNX Runtime's static quantization in QDQ form (QuantizeLinear/DequantizeLinear pairs):
ONNX Runtime runs it on CPU and TensorRT consumes the same file as explicit INT8 (DESIGN §9), so
what is measured here is what a Jetson runs. Only the heavy arithmetic is quantized (convolutions
and matrix products, weights per output channel); normalisations, softmax, the STFT and the
elementwise glue stay in float, which is where per-tensor INT8 loses the most accuracy for the least
speed. Calibration uses observations with the temporal state the model itself produced for them.

FP16 uses ONNX Runtime's own converter (``onnxruntime.transformers.float16``, kept with ORT itself)
with float32 graph inputs and outputs, so callers feed the same arrays at every precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

INT8_OPS = ("Conv", "MatMul", "Gemm")


def to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path, calibration: Sequence[dict[str, np.ndarray]], work_dir: Path) -> list[str]:
    """``calibration``: graph feeds (every input by name), e.g. one batch of held-in observations each.
    Returns the names of the matrix products left in float (see :func:`int8_exclusions`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("INT8 calibration needs at least one batch of observations")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self):
            return next(self._it, None)

    pre = work_dir / "int8_preprocessed.onnx"
    # Symbolic shape inference cannot follow the exporter's shape arithmetic (Gather on shapes);
    # ONNX's own shape inference and the optimiser pass are what quantization needs.
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    excluded = int8_exclusions(pre)
    quantize_static(
        str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
        nodes_to_exclude=excluded,
        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # Symmetric activations: what TensorRT's explicit-quantization path expects.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return excluded


def int8_exclusions(path: Path) -> list[str]:
    """Matrix products that stay float: activation x activation ones (attention scores and their
    weighted sums: both sides per-tensor INT8 measured no faster and much less accurate) and the
    mel projection of the power spectrum before the log (its dynamic range spans decades, so INT8
    zeroes the quiet bands and the log turns that into large errors)."""
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    excluded = [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    for node in graph.node:
        if node.op_type != "Log":
            continue
        frontier = list(node.input)
        for _ in range(4):  # Log <- Add(eps) <- MatMul(mel, power): a few hops back
            frontier, upstream = [], [producer[x] for x in frontier if x in producer]
            for p in upstream:
                if p.op_type in INT8_OPS and p.name not in excluded:
                    excluded.append(p.name)
                frontier += list(p.input)
    return excluded
