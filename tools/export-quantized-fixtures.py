"""Writes Tests/KaaEngineTests/Fixtures/mlp-int8/: a small PyTorch-style MLP (Gemm transB=1 +
Relu, seeded random weights), the same model quantized by onnxruntime's own
`quantize_dynamic` (per tensor and per channel), inputs, and onnxruntime's outputs for each, so
the engine's int8 operators are checked against onnxruntime on models its tools wrote.

Run with the samples' virtual environment: .venv/bin/python tools/export-quantized-fixtures.py
"""
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "KaaEngineTests", "Fixtures", "mlp-int8")
SIZES = [64, 48, 32, 10]


def mlp(path):
    rng = np.random.default_rng(7)
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((b, a)) * 0.2).astype(np.float32), f"fc{i}.weight"))
        inits.append(numpy_helper.from_array((rng.standard_normal(b) * 0.1).astype(np.float32), f"fc{i}.bias"))
        out = f"gemm{i}" if i < len(SIZES) - 2 else "output"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], alpha=1.0, beta=1.0, transB=1))
        if i < len(SIZES) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            prev = f"relu{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZES[0]])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", SIZES[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def tensor(a):
    return {"dtype": "float32", "shape": list(a.shape), "data": [float(x) for x in a.reshape(-1)]}


def main():
    os.makedirs(OUT, exist_ok=True)
    mlp(os.path.join(OUT, "float.onnx"))
    with tempfile.TemporaryDirectory() as tmp:
        # quantize_dynamic writes its own file; keep only the result.
        quantize_dynamic(os.path.join(OUT, "float.onnx"), os.path.join(tmp, "t.onnx"), weight_type=QuantType.QInt8)
        os.replace(os.path.join(tmp, "t.onnx"), os.path.join(OUT, "dynamic.onnx"))
        quantize_dynamic(os.path.join(OUT, "float.onnx"), os.path.join(tmp, "t.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(os.path.join(tmp, "t.onnx"), os.path.join(OUT, "dynamic-per-channel.onnx"))
        quantize_dynamic(os.path.join(OUT, "float.onnx"), os.path.join(tmp, "t.onnx"), weight_type=QuantType.QUInt8)
        os.replace(os.path.join(tmp, "t.onnx"), os.path.join(OUT, "dynamic-uint8.onnx"))
    # A model that takes uint8 (an image's bytes, a quantized feature) and int8 inputs.
    g = helper.make_graph(
        [helper.make_node("Cast", ["pixels"], ["p"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["offsets"], ["o"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["p", "o"], ["sum"])],
        "bytes",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 3]),
         helper.make_tensor_value_info("offsets", TensorProto.INT8, ["batch", 3])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(os.path.join(OUT, "bytes-in.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((33, SIZES[0])) * 1.5).astype(np.float32)
    with open(os.path.join(OUT, "inputs.json"), "w") as f:
        json.dump({"input": tensor(x)}, f)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    outputs = {}
    for name in ["float", "dynamic", "dynamic-per-channel", "dynamic-uint8"]:
        sess = ort.InferenceSession(os.path.join(OUT, f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
        outputs[name] = tensor(sess.run(None, {"input": x})[0])
    with open(os.path.join(OUT, "outputs.json"), "w") as f:
        json.dump(outputs, f)
    print(f"wrote {OUT} (onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
