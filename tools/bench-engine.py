"""Kaa's engine against onnxruntime on the same models and inputs, in one run.

Prints, per model and batch size, the median call time of each and the ratio
onnxruntime / Kaa (above 1: Kaa is faster). Run through tools/bench-engine.sh.
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_diabetes, load_digits, load_iris, load_wine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench-out")
BENCH = sys.argv[1]


def torch_style_mlp(path):
    """The MLP 784-256-128-10 as torch.onnx.export writes nn.Linear + ReLU (Gemm transB=1),
    with seeded random weights (torch itself is not installed for this)."""
    rng = np.random.default_rng(0)
    sizes = [784, 256, 128, 10]
    nodes, inits, prev = [], [], "input"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((b, a)) * 0.05).astype(np.float32), f"fc{i}.weight"))
        inits.append(numpy_helper.from_array((rng.standard_normal(b) * 0.05).astype(np.float32), f"fc{i}.bias"))
        out = f"gemm{i}" if i < 2 else "output"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], alpha=1.0, beta=1.0, transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            prev = f"relu{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def ort_median(path, x, calls):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(500):
        sess.run(None, {name: x})
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times)


def main():
    os.makedirs(OUT, exist_ok=True)
    mlp = os.path.join(OUT, "mlp-784.onnx")
    torch_style_mlp(mlp)
    rng = np.random.default_rng(1)
    models = [
        ("iris-logreg", os.path.join(ROOT, "snapshots/iris-logreg/model.onnx"), load_iris().data),
        ("digits-mlp", os.path.join(ROOT, "snapshots/digits-mlp/model.onnx"), load_digits().data),
        ("wine-forest (50 trees)", os.path.join(ROOT, "snapshots/wine-forest/model.onnx"), load_wine().data),
        ("diabetes-gbr (100 trees)", os.path.join(ROOT, "snapshots/diabetes-gbr/model.onnx"), load_diabetes().data),
        ("torch-style mlp 784-256-128-10", mlp, rng.standard_normal((64, 784))),
    ]
    print(f"{'model':34} {'batch':>5} {'kaa µs':>9} {'ort µs':>9} {'ort/kaa':>8}")
    for name, path, data in models:
        x = np.ascontiguousarray(data[:64].astype(np.float32))
        bin_path = os.path.join(OUT, "input.bin")
        x.tofile(bin_path)
        res = subprocess.run([BENCH, path, f"input={bin_path}:{x.shape[1]}"], check=True, capture_output=True, text=True)
        kaa = {}
        for line in res.stdout.split("\n"):
            if line.startswith("batch="):
                parts = dict(p.split("=") for p in line.split())
                kaa[int(parts["batch"])] = int(parts["median_ns"])
        for batch, calls in [(1, 20000), (64, 2000)]:
            o = ort_median(path, x[:batch], calls)
            print(f"{name:34} {batch:5d} {kaa[batch] / 1000:9.2f} {o / 1000:9.2f} {o / kaa[batch]:8.2f}x")


if __name__ == "__main__":
    main()
