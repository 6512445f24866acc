"""Deployment artefacts: exported H path (ONNX, FP32 / FP16 / INT8 QDQ) and the runtime that runs it.

``manifest`` and ``onnx_backend`` never import torch (a robot's context node runs on them alone);
``export`` and ``quantize`` are the offline side and need torch / onnx; ``tensorrt_engine`` needs
only ``tensorrt`` (imported when a build is asked for) and a GPU.

Layout, beside a checkpoint (DESIGN §5: exports are keyed by the model hash)::

    MODEL_DIR/exports/<model_sha256>/<precision>/
        h_path.onnx          prepare -> encoders -> context -> H -> compressor -> z, temporal state in/out
        l_step.safetensors   the L-module and normaliser as numpy (what NumpyLPolicy needs)
        manifest.json        inputs/outputs, hash, precision, versions, the post-export check
        trt_cache/           TensorRT engines (created at run time, keyed by hash + GPU + TensorRT)
        tensorrt/<key>/      native engine + bindings JSON for isaac_ros_tensor_rt (``sage-hl export
                             --tensorrt``, tensorrt_engine.py; fp32 / fp16 exports)
"""
