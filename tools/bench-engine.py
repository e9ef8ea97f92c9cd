"""Kaa's engine against onnxruntime on the same models and inputs, in one run.

Prints, per model and batch size (1, 64, 256), the median call time of onnxruntime and of
Kaa at each instruction-set level this CPU has (KAA_ENGINE_LEVEL: baseline, avx2, avx512),
and the ratio onnxruntime / Kaa (above 1: Kaa is faster). Then int8: each MLP quantized by
Kaa (`kaa snapshot build --quantize int8`) against its float model in Kaa, and against
onnxruntime running the model its own `quantize_dynamic` writes; and the sizes of each model
file and of what the engine counts for it loaded. Run through tools/bench-engine.sh.
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
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


def levels():
    """The kernel levels this CPU has, lowest first (as the engine reads CPUID)."""
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    out = ["baseline"]
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
        if {"avx512f", "avx512vl"} <= flags:
            out.append("avx512")
    return out, sorted(f for f in flags if f.startswith("avx512") or f in ("avx2", "fma", "avx_vnni"))


def kaa_medians(path, bin_path, cols, have):
    """Kaa's median ns per (level, batch) for one model."""
    kaa = {}
    for level in have:
        env = dict(os.environ, KAA_ENGINE_LEVEL=level)
        res = subprocess.run([BENCH, path, f"input={bin_path}:{cols}"], check=True, capture_output=True, text=True, env=env)
        ran = None
        for line in res.stdout.split("\n"):
            if line.startswith("level="):
                ran = line.split("=", 1)[1]
            if line.startswith("batch="):
                parts = dict(p.split("=") for p in line.split())
                kaa[(level, int(parts["batch"]))] = int(parts["median_ns"])
        assert ran == level, f"kaa-bench ran at {ran}, not {level}"
    return kaa


def counted_bytes(path):
    """What the engine counts for the model loaded (Model.memoryBytes), and the resident
    growth per loaded copy."""
    res = subprocess.run([BENCH, "--memory", path, "300"], check=True, capture_output=True, text=True)
    parts = dict(p.split("=", 1) for p in res.stdout.split())
    return int(parts["counted_bytes"]), int(parts["resident_bytes_per_copy"])


def int8_section(mlps, have):
    """int8 against float32 in Kaa, and against onnxruntime's quantize_dynamic model."""
    print()
    print("int8: Kaa's --quantize int8 model against the float model in Kaa (same level), and against "
          "onnxruntime running the model its quantize_dynamic writes (ort-q) and Kaa's int8 model (ort on kaa-int8)")
    print(f"{'model':32} {'batch':>5} {'ort-q µs':>9} {'ort kaa-int8':>12} " + " ".join(
        f"{'kaa ' + l + ' f32':>14} {'int8':>9} {'f32/int8':>8} {'ort-q/int8':>10}" for l in have))
    sizes = []
    for name, path, data in mlps:
        base = os.path.splitext(os.path.basename(path))[0]
        q_kaa = os.path.join(OUT, f"{base}-kaa-int8.onnx")
        q_ort = os.path.join(OUT, f"{base}-ort-int8.onnx")
        subprocess.run([BENCH, "--quantize-int8", path, q_kaa], check=True, capture_output=True, text=True)
        quantize_dynamic(path, q_ort, weight_type=QuantType.QInt8)
        x = np.ascontiguousarray(np.resize(data, (256, data.shape[1])).astype(np.float32))
        bin_path = os.path.join(OUT, "input.bin")
        x.tofile(bin_path)
        f32 = kaa_medians(path, bin_path, x.shape[1], have)
        i8 = kaa_medians(q_kaa, bin_path, x.shape[1], have)
        for batch, calls in [(1, 20000), (64, 2000), (256, 1000)]:
            oq = ort_median(q_ort, x[:batch], calls)
            ok = ort_median(q_kaa, x[:batch], calls)
            row = f"{name:32} {batch:5d} {oq / 1000:9.2f} {ok / 1000:12.2f} "
            row += " ".join(f"{f32[(l, batch)] / 1000:14.2f} {i8[(l, batch)] / 1000:9.2f} {f32[(l, batch)] / i8[(l, batch)]:7.2f}x "
                            f"{oq / i8[(l, batch)]:9.2f}x" for l in have)
            print(row)
        for label, p in [("float32", path), ("kaa int8", q_kaa), ("ort int8", q_ort)]:
            counted, resident = counted_bytes(p) if label != "ort int8" else (None, None)
            sizes.append((name, label, os.path.getsize(p), counted, resident))
    print()
    print(f"{'model':32} {'form':>9} {'file bytes':>11} {'counted loaded':>15} {'resident/copy':>14}")
    for name, label, file_bytes, counted, resident in sizes:
        print(f"{name:32} {label:>9} {file_bytes:11d} {counted if counted is not None else '-':>15} {resident if resident is not None else '-':>14}")


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
        ("torch-style mlp 784-256-128-10", mlp, rng.standard_normal((256, 784))),
    ]
    have, flags = levels()
    print("CPU flags: " + " ".join(flags))
    print(f"{'model':32} {'batch':>5} {'ort µs':>9} " + " ".join(f"{'kaa ' + l + ' µs':>16} {'ort/kaa':>7}" for l in have))
    only = os.environ.get("KAA_BENCH_ONLY")
    for name, path, data in models:
        if only == "int8":
            break
        # 256 rows: the data set's rows, repeated when it has fewer.
        x = np.ascontiguousarray(np.resize(data, (256, data.shape[1])).astype(np.float32))
        bin_path = os.path.join(OUT, "input.bin")
        x.tofile(bin_path)
        kaa = kaa_medians(path, bin_path, x.shape[1], have)
        for batch, calls in [(1, 20000), (64, 2000), (256, 1000)]:
            o = ort_median(path, x[:batch], calls)
            row = f"{name:32} {batch:5d} {o / 1000:9.2f} "
            row += " ".join(f"{kaa[(l, batch)] / 1000:16.2f} {o / kaa[(l, batch)]:6.2f}x" for l in have)
            print(row)
    int8_section([m for m in models if "mlp" in m[0]], have)


if __name__ == "__main__":
    main()
